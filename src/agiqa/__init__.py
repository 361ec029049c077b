"""agiqa: quality assessment of AI-generated images.

    import agiqa
    model = agiqa.create_model("ma_agiqa", pretrained="/ckpt/AGIQA_3k.pt")
    frame = agiqa.load_dataset("agiqa3k", "/data/AGIQA-3K")

Exports resolve lazily so that `agiqa --help` does not import torch.
"""
from agiqa._lazy import lazy_dir as _lazy_dir
from agiqa._lazy import lazy_getattr as _lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "create_model": "agiqa.models",
    "get_model_info": "agiqa.models",
    "list_models": "agiqa.models",
    "list_pretrained": "agiqa.models",
    "load_dataset": "agiqa.data",
    "list_datasets": "agiqa.data",
    "compute_metrics": "agiqa.metrics",
    "create_scorer": "agiqa.scoring.scorer",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__ = _lazy_getattr(__name__, _EXPORTS)
__dir__ = _lazy_dir(__name__, _EXPORTS)  # dir(agiqa) and tab completion show the exports before their first use
