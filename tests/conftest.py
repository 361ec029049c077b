import os
import tempfile
from pathlib import Path

import pytest

# Tests write only under temporary folders and never wait on the network: caches that default to the user's home
# (decoded images, torch hub, Hugging Face) point into one temporary folder for the session, and the hub is offline
# (a test that needs a download fails at once with a clear error). Set before any test imports those libraries;
# subprocesses started by tests inherit it.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="agiqa-tests-"))
os.environ["AGIQA_CACHE_DIR"] = str(_SESSION_HOME / "agiqa")
os.environ["TORCH_HOME"] = str(_SESSION_HOME / "torch")
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(_SESSION_HOME / "hypothesis")

SHARED_DATA = Path(__file__).resolve().parents[1] / "../shared/data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real label files of the public datasets (the `shared/data` folder next to the repository root)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real label files not found at {SHARED_DATA.resolve()} (shared/data next to the repo root)")
    return SHARED_DATA.resolve()


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that sets torch's thread count (the benchmarks' `--threads 1`) does not leave it set for the tests
    after it: a from-scratch training run takes another path with one thread than with the machine's default."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary home (caches the tests wrote)."""
    import shutil

    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
