"""Datasets, splits, image loading and synthetic data for AGIQA benchmarks.

Exports resolve lazily so that `agiqa --help` (which imports `agiqa.data.cli`) does not import pandas.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "COLUMNS": "agiqa.data.datasets",
    "DatasetInfo": "agiqa.data.datasets",
    "get_dataset_info": "agiqa.data.datasets",
    "list_datasets": "agiqa.data.datasets",
    "load_dataset": "agiqa.data.datasets",
    "load_image": "agiqa.data.images",
    "Split": "agiqa.data.splits",
    "make_split": "agiqa.data.splits",
    "official_split": "agiqa.data.splits",
    "prompt_leakage": "agiqa.data.splits",
    "generate_synthetic": "agiqa.data.synth",
    "synthetic_quality": "agiqa.data.synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
