"""`create_model`: build any registered model by name, optionally with weights."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from torch import nn

from agiqa.errors import AgiqaError
from agiqa.models._builder import load_pretrained
from agiqa.models._registry import architecture_family, get_pretrained_cfg, model_entrypoint

_logger = logging.getLogger(__name__)


def create_model(
    model_name: str,
    pretrained: bool | str | os.PathLike = False,
    pretrained_cfg_overlay: dict | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    cache_dir: str | None = None,
    **kwargs,
) -> nn.Module:
    """Create a model by registry name (`"maniqa"`, `"ma-agiqa"`, `"maniqa.koniq10k"` ...).

    Args:
        model_name: architecture name, optionally with a weights tag after a dot.
        pretrained: False for random init, True for the tag's registered weights, or a path / Hub id of weights
            (a `.safetensors` file, an official `.pt/.pth` checkpoint, or a `save_pretrained` directory). A local
            `save_pretrained` directory (a run's `model/`) is built from its own config.json, not from the
            architecture's default sizes: `create_model("test_moe_agiqa", pretrained="runs/x/model")` loads the
            model of that run whatever patch size or width it was trained with (`kwargs` still override); a
            folder of another family (a MANIQA folder asked for as MoE-AGIQA) is an `AgiqaError`.
        pretrained_cfg_overlay: fields overriding the registered cfg, e.g. `dict(file="/ckpt/maniqa.pth")`.
        checkpoint_path: our own weights loaded after the model is built (strict).
        **kwargs: model config overrides; None values are dropped.
    """
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    entrypoint = model_entrypoint(model_name)
    pretrained_cfg = get_pretrained_cfg(model_name)
    folder_arch = _saved_folder_architecture(model_name, pretrained)
    if folder_arch is not None:
        entrypoint = model_entrypoint(folder_arch)  # the family's plain entrypoint: no default sizes over the folder's
    if pretrained_cfg is not None and pretrained_cfg_overlay:
        pretrained_cfg = dataclasses.replace(pretrained_cfg, **pretrained_cfg_overlay)
    model = entrypoint(pretrained=pretrained, pretrained_cfg=pretrained_cfg, cache_dir=cache_dir, **kwargs)
    model.pretrained_cfg = pretrained_cfg
    if checkpoint_path:
        load_pretrained(model, checkpoint_path)
    source = pretrained if pretrained is not True else (pretrained_cfg.tag if pretrained_cfg else None)
    _logger.info("Created %s (weights: %s)", model_name, source or "random init")
    return model


def _saved_folder_architecture(model_name: str, pretrained) -> str | None:
    """For `pretrained` naming a local `save_pretrained` folder: the architecture of its config.json when it is of
    `model_name`'s family (None when there is nothing to redirect); an `AgiqaError` for another family."""
    if not isinstance(pretrained, (str, os.PathLike)) or not (Path(pretrained) / "config.json").is_file():
        return None
    family = architecture_family(model_name)
    if family is None:
        return None
    folder_arch = saved_architecture(pretrained)
    if folder_arch != family:
        raise AgiqaError(f"{pretrained} holds a {folder_arch} model (its config.json), not {model_name}; load it with "
                         f"create_model(saved_architecture({str(pretrained)!r}), pretrained={str(pretrained)!r}) "
                         f"(= create_model({folder_arch!r}, ...))")
    return folder_arch


def saved_architecture(model_dir: str | os.PathLike) -> str:
    """The registered architecture whose class rebuilds a `save_pretrained` folder, read from its config.json
    (MoE-AGIQA configs carry `num_experts`, MA-AGIQA configs `fusion`)."""
    return config_architecture(saved_config(model_dir))


def saved_config(model_dir: str | os.PathLike) -> dict:
    """The config.json of a `save_pretrained` folder as a dict; a `FileNotFoundError` / `AgiqaError` naming the
    folder."""
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; pass a directory written by save_pretrained")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AgiqaError(f"{config_file} is not valid JSON ({err}); the model folder is damaged: save or train "
                         "it again") from err
    if not isinstance(config, dict):
        raise AgiqaError(f"{config_file} holds a JSON {type(config).__name__}, not a model configuration")
    return config


def config_architecture(config: dict) -> str:
    """The registered architecture a config dict belongs to (see `saved_architecture`)."""
    if "freeze_ratio" in config:
        return "moe_agiqa_prior"
    if "num_experts" in config:
        return "moe_agiqa"
    return "ma_agiqa" if "fusion" in config else "maniqa"


def model_scores(model: nn.Module, batch: dict):
    """Scores (B,) of any registered model from a batch dict holding its `input_names` (missing inputs are None);
    (B, T) for a multi-target model (columns in `model_targets(model)` order)."""
    return model(*_model_inputs(model, batch))


def needs_semantic(model: nn.Module) -> bool:
    """True for models fed semantic features of a VLM (MA-AGIQA's semantic or level experts, a zero-shot VLM)."""
    config = model.config
    return bool(getattr(config, "semantic_experts", ()) or getattr(config, "level_prompts", ()))


def model_targets(model: nn.Module) -> list[str]:
    """Names of the model's outputs (`config.targets`); ["quality"] for models with one unnamed output."""
    return list(getattr(getattr(model, "config", None), "targets", ("quality",)))


def score_columns(scores, targets: list[str]) -> dict:
    """Scores as named columns: `score` alone for one target; for several, `score` = the first target's (so readers
    of single-target outputs keep working) and `score_<target>` for each."""
    if len(targets) == 1:
        return {"score": scores}
    return {"score": scores[:, 0], **{f"score_{target}": scores[:, index] for index, target in enumerate(targets)}}


def expert_names(model: nn.Module) -> list[str]:
    """The model's mixture-of-experts experts (gate order), or [] when it has none to explain."""
    return list(getattr(model, "expert_names", []))


def model_explanation(model: nn.Module, batch: dict) -> dict:
    """The model's `explain`: `score` (B,); `gate` and `expert_score` (B, E; E = `expert_names(model)`) where it has
    experts; `patch_map` (B, H, W) where it has MANIQA's per-patch scores."""
    return model.explain(*_model_inputs(model, batch))


def explanation_columns(model: nn.Module, batch: dict, experts: list[str], patch_maps: bool = False) -> dict:
    """`model_explanation` as flat columns, the names every output uses (`agiqa score`, `agiqa train`/`evaluate`,
    the service): `score` (see `score_columns` for multi-target models), `gate_<expert>` and `expert_<expert>` for
    each of `experts` (`expert_<expert>_<target>` for several targets), and with `patch_maps` `patch_map` where the
    model has one."""
    parts = model_explanation(model, batch)
    targets = model_targets(model)
    columns = score_columns(parts["score"], targets)
    for index, name in enumerate(experts):
        columns[f"gate_{name}"] = parts["gate"][:, index]
        columns.update(_expert_score_columns(parts["expert_score"][:, index], name, targets))
    if patch_maps and "patch_map" in parts:
        columns["patch_map"] = parts["patch_map"]
    return columns


def _expert_score_columns(scores, expert: str, targets: list[str]) -> dict:
    if len(targets) == 1:
        return {f"expert_{expert}": scores}
    return {f"expert_{expert}_{target}": scores[:, index] for index, target in enumerate(targets)}


def _model_inputs(model: nn.Module, batch: dict) -> list:
    return [batch.get(name) for name in getattr(model, "input_names", ("image",))]

