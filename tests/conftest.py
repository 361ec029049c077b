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


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """`reproduce` of a tiny MA-AGIQA (MANIQA expert only) on 200 synthetic images, 2 seeds x 1 epoch on the official
    and the prompt-disjoint split, as the paper model `ma_agiqa`: (synth root, output folder, its results table).
    Trained once for the reproduction test and the report tests."""
    from agiqa.data.synth import generate_synthetic
    from agiqa.training.config import TrainConfig
    from agiqa.training.reproduce import reproduce

    work = tmp_path_factory.mktemp("reproduced")
    root = work / "synth"
    generate_synthetic(root, n=200, seed=5, image_size=32)
    config = TrainConfig.from_dict({
        "model": {"name": "test_ma_agiqa", "kwargs": {"semantic_experts": []}},
        "data": {"dataset": "agiqa3k", "root": str(root), "image_size": 32, "batch_size": 8, "eval_batch_size": 16,
                 "image_cache": str(work / "cache")},
        "optim": {"lr": 1e-3},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "precision": "32-true", "seed": 0},
        "output_dir": str(work / "run"),
    })
    config.to_yaml(work / "agiqa3k.yaml")
    table = reproduce(work / "agiqa3k.yaml", str(root), seeds=2, out_dir=work / "repro", progress=False,
                      paper_model="ma_agiqa")
    return root, work / "repro", table


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary home (caches the tests wrote)."""
    import shutil

    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
