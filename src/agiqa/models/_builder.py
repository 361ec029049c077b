"""Resolve and load weights: in-memory state dict, then a local file, then the Hugging Face Hub, then a URL."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from agiqa._files import sha256_file, torch_load_weights_only
from agiqa.errors import AgiqaError
from agiqa.models._config import check_config_fields, without_weight_sources
from agiqa.models._pretrained import PretrainedCfg

_logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "AGIQA_WEIGHTS_DIR"


class WeightsNotFoundError(AgiqaError, RuntimeError):
    """Raised when no source of a requested pretrained weight can be reached (the CLI prints its message)."""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read weights from `.safetensors` or a PyTorch pickle (always `weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch_load_weights_only(path)
    except AgiqaError:
        raise
    except Exception as err:
        raise RuntimeError(f"Could not read {path} as a weights-only PyTorch checkpoint: {err}") from err
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _local_candidate(cfg: PretrainedCfg) -> Path | None:
    if cfg.file:
        return Path(cfg.file).expanduser()
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir and cfg.hf_hub_filename:
        candidate = Path(weights_dir) / cfg.hf_hub_filename
        if candidate.is_file():
            return candidate
    return None


def resolve_pretrained_file(cfg: PretrainedCfg, cache_dir: str | None = None) -> Path:
    """A local path holding the weights of `cfg`; a local file means no network call at all."""
    local = _local_candidate(cfg)
    if local is not None:
        if not local.is_file():
            raise WeightsNotFoundError(
                f"Weights file not found: {local} (tag '{cfg.tag}'). Point `pretrained_cfg_overlay=dict(file=...)` "
                "(CLI: --weights PATH) at the downloaded file, or use `pretrained=False` for random init."
            )
        return local
    errors = []
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors", cache_dir=cache_dir))
        except Exception as err:  # offline, gated or missing: report and try the next source
            errors.append(f"hub {cfg.hf_hub_id}/{cfg.hf_hub_filename}: {type(err).__name__}: {err}")
    if cfg.url:
        try:
            target_dir = Path(cache_dir or torch.hub.get_dir()) / "agiqa"
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / Path(cfg.url).name
            if not target.is_file():
                torch.hub.download_url_to_file(cfg.url, str(target))
            return target
        except Exception as err:
            errors.append(f"url {cfg.url}: {type(err).__name__}: {err}")
    detail = "; ".join(errors) or "the cfg names no source"
    name = cfg.hf_hub_filename or "<weights file>"
    raise WeightsNotFoundError(
        f"Could not get weights for tag '{cfg.tag}' ({detail}). Download them and pass "
        f"`pretrained='/path/to/{name}'` (CLI: --weights PATH) or put the file in ${WEIGHTS_DIR_ENV}; "
        "use `pretrained=False` for random init."
    )


def verified_pretrained_file(cfg: PretrainedCfg, cache_dir: str | None = None) -> Path:
    """`resolve_pretrained_file`, then the cfg's sha256 (when it has one) checked against the file."""
    path = resolve_pretrained_file(cfg, cache_dir)
    if cfg.sha256:
        actual = sha256_file(path)
        if actual != cfg.sha256:
            raise RuntimeError(f"sha256 mismatch for {path}: expected {cfg.sha256}, got {actual}")
    return path


def load_pretrained(
    model: nn.Module,
    source: PretrainedCfg | str | os.PathLike | dict,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    cache_dir: str | None = None,
) -> nn.Module:
    """Load weights into `model` strictly; `filter_fn` converts official checkpoints to our key names."""
    if isinstance(source, dict):
        state_dict, origin = source, "in-memory state dict"
    else:
        path = verified_pretrained_file(source, cache_dir) if isinstance(source, PretrainedCfg) else Path(source)
        state_dict, origin = load_state_dict_file(path), str(path)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    load_state_dict_strict(model, state_dict, origin)
    _logger.info("Loaded %s weights from %s", type(model).__name__, origin)
    return model


def load_state_dict_strict(model: nn.Module, state_dict: dict, origin: str = "state dict") -> None:
    """`load_state_dict(strict=True)` with one readable error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
        for key in own
        if key in state_dict and tuple(state_dict[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"Weights from {origin} do not fit {type(model).__name__}:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mis_shaped)):
            if items:
                shown = ", ".join(items[:20]) + (f", ... (+{len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        raise RuntimeError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def is_hub_repo_id(text: str) -> bool:
    """`owner/name` that is not a local path."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not Path(text).exists() and not text.startswith((".", "~"))


def build_model_with_cfg(
    model_cls: type,
    config_cls: type,
    pretrained: bool | str | os.PathLike | PretrainedCfg | None,
    pretrained_cfg: PretrainedCfg | None = None,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    cache_dir: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build `model_cls(config_cls(**kwargs))` and load weights from wherever `pretrained` points.

    `pretrained` may be False/None (random init), True (the registry cfg), a PretrainedCfg, a weights file
    (`.safetensors`, or an official `.pt/.pth` converted by `filter_fn`), a directory written by `save_pretrained`,
    or a Hub repo id holding one.
    """
    if isinstance(pretrained, (str, os.PathLike)) and (Path(pretrained).is_dir() or is_hub_repo_id(str(pretrained))):
        return model_cls.from_pretrained(str(pretrained), cache_dir=cache_dir, **kwargs)
    model_kwargs = dict(pretrained_cfg.model_kwargs) if pretrained_cfg else {}
    model_kwargs.update(kwargs)
    # A misspelt config key is named with its close matches before anything is found, downloaded or built.
    if dataclasses.is_dataclass(config_cls):
        check_config_fields(config_cls, model_kwargs)
    if pretrained:
        # A checkpoint follows, so no part of the model fetches its own weights (ImageNet backbones, priors ...).
        model_kwargs = without_weight_sources(model_kwargs)
    if pretrained is True:
        if pretrained_cfg is None:
            raise RuntimeError(f"{model_cls.__name__} has no pretrained weights registered; use `pretrained=False`.")
        pretrained = pretrained_cfg
    use_filter = None
    if pretrained:
        use_filter = filter_fn if (not isinstance(pretrained, PretrainedCfg) or pretrained.official) else None
        if not isinstance(pretrained, PretrainedCfg) and str(pretrained).endswith(".safetensors"):
            use_filter = None
    source = pretrained
    if isinstance(pretrained, PretrainedCfg):
        # Find (or download) the weights before building: a missing file fails fast, without a wasted model build.
        source = verified_pretrained_file(pretrained, cache_dir)
    elif isinstance(pretrained, (str, os.PathLike)) and not Path(pretrained).is_file():
        raise WeightsNotFoundError(f"Weights file not found: {pretrained}. Use `pretrained=False` for random init.")
    model = model_cls(config_cls(**model_kwargs))
    if pretrained:
        load_pretrained(model, source, filter_fn=use_filter, cache_dir=cache_dir)
    return model
