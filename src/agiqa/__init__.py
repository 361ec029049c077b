"""agiqa: quality assessment of AI-generated images."""
from __future__ import annotations

__version__ = "0.1.0"

from agiqa.models import create_model, get_model_info, list_models, list_pretrained  # noqa: E402

__all__ = ["__version__", "create_model", "get_model_info", "list_models", "list_pretrained"]
