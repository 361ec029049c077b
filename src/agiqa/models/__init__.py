"""Model architectures (plain `nn.Module`s) and the registry that builds them by name."""
from agiqa.models._builder import WeightsNotFoundError, load_pretrained, load_state_dict_file
from agiqa.models._config import without_weight_sources
from agiqa.models._factory import create_model, model_scores, needs_semantic, saved_architecture
from agiqa.models._pretrained import PretrainedCfg
from agiqa.models._registry import (
    get_model_info,
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    register_model,
)

__all__ = [
    "PretrainedCfg",
    "WeightsNotFoundError",
    "create_model",
    "get_model_info",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "load_state_dict_file",
    "model_scores",
    "needs_semantic",
    "register_model",
    "saved_architecture",
    "without_weight_sources",
]

# Importing the family modules registers their entrypoints.
from agiqa.models import maniqa  # noqa: E402,F401
from agiqa.models import ma_agiqa  # noqa: E402,F401
from agiqa.models import moe_agiqa  # noqa: E402,F401
from agiqa.models import vlm_levels  # noqa: E402,F401
