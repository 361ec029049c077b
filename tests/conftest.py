from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real label files of the public datasets (the `shared/data` folder next to the repository root)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real label files not found at {SHARED_DATA.resolve()} (shared/data next to the repo root)")
    return SHARED_DATA.resolve()
