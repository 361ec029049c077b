"""Load a script of benchmarks/ as a module, for the tests that run it on tiny inputs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str, monkeypatch=None):
    if monkeypatch is not None:  # scripts that import their siblings, as `python benchmarks/<script>.py` allows
        monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
