"""Datasets, splits, image loading and synthetic data for AGIQA benchmarks.

Exports resolve lazily so that `agiqa --help` (which imports `agiqa.data.cli`) does not import pandas.
"""
from __future__ import annotations

from agiqa._lazy import lazy_getattr

_EXPORTS = {
    "COLUMNS": "agiqa.data.datasets",
    "DatasetInfo": "agiqa.data.datasets",
    "get_dataset_info": "agiqa.data.datasets",
    "list_datasets": "agiqa.data.datasets",
    "load_dataset": "agiqa.data.datasets",
    "load_dataset_targets": "agiqa.data.datasets",
    "load_image": "agiqa.data.images",
    "Split": "agiqa.data.splits",
    "make_split": "agiqa.data.splits",
    "dataset_split": "agiqa.data.splits",
    "official_split": "agiqa.data.splits",
    "prompt_leakage": "agiqa.data.splits",
    "generate_synthetic": "agiqa.data.synth",
    "synthetic_quality": "agiqa.data.synth",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
