"""Config objects of every model family: dataclasses that round-trip through ``config.json``."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from agiqa.errors import AgiqaError

# Config fields that fetch or read weights while a model is built (ImageNet backbones, prior / semantic networks).
# They are switched off whenever complete weights follow (a checkpoint, a `save_pretrained` folder).
WEIGHT_SOURCE_FIELDS = ("backbone_pretrained", "prior_checkpoint", "semantic_checkpoint")


class UnknownConfigFieldError(AgiqaError, TypeError):
    """A model config got keys it does not have; `unknown` names them, `close` the likely meant fields
    {unknown: [fields]}, `allowed` every field. A TypeError, as the dataclass constructor raises."""

    def __init__(self, config_name: str, unknown: list[str], allowed: list[str]):
        self.config_name, self.unknown, self.allowed = config_name, list(unknown), list(allowed)
        self.close = {key: difflib.get_close_matches(key, allowed, n=3, cutoff=0.6) for key in self.unknown}
        super().__init__(f"Unknown {config_name} fields: {self.describe()}")

    def describe(self, prefix: str = "") -> str:
        """`prefix`+each unknown key with its close matches (`patch_sise (did you mean patch_size?)`), or, when none
        is close, the allowed fields."""
        parts = []
        for key in self.unknown:
            close = self.close[key]
            parts.append(f"{prefix}{key}" + (f" (did you mean {' or '.join(prefix + c for c in close)}?)"
                                             if close else ""))
        text = ", ".join(parts)
        if not all(self.close.values()):
            text += f"; allowed: {', '.join(self.allowed)}"
        return text


def check_config_fields(config_cls: type, values) -> None:
    """Raise `UnknownConfigFieldError` when `values` (keys) name fields the config dataclass lacks."""
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UnknownConfigFieldError(config_cls.__name__, unknown, allowed)


def as_tuple(value: Any) -> Any:
    """Lists (from JSON / YAML) as tuples, recursively, so configs compare equal and stay hashable."""
    return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def without_weight_sources(values: dict) -> dict:
    """A copy of config values with every weight source off: complete weights are loaded afterwards."""
    out = {key: value for key, value in values.items() if key not in WEIGHT_SOURCE_FIELDS}
    out["backbone_pretrained"] = False
    return out


def check_hooked_vit(img_size: int, patch_size: int, hooked_blocks, vit_depth: int) -> None:
    """The checks every hooked-ViT config shares: whole patches, hooked blocks that exist."""
    if img_size % patch_size:
        raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
    if not hooked_blocks or max(hooked_blocks) >= vit_depth or min(hooked_blocks) < 0:
        raise ValueError(f"hooked_blocks {hooked_blocks} must index ViT blocks 0..{vit_depth - 1}")


def check_targets(targets) -> None:
    """A model's `targets` (the names of its outputs): at least one, each a distinct non-empty string."""
    if not targets or not all(isinstance(name, str) and name for name in targets):
        raise ValueError(f"targets must be one or more non-empty names, got {targets!r}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"targets has duplicates: {targets!r}")


def per_target(outputs, num_targets: int):
    """Head outputs (..., T) as the model returns them: (...) for one target (the released shape), else as is."""
    return outputs.squeeze(-1) if num_targets == 1 else outputs


class ModelConfig:
    """Mixin for a model's config dataclass: tuple normalisation, ``to_dict`` and a strict ``from_dict``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, as_tuple(getattr(self, f.name)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None = None, **overrides):
        """Build from a dict (e.g. ``config.json``); unknown keys are refused with their names and close matches
        (`UnknownConfigFieldError`, a TypeError)."""
        merged = {**(values or {}), **overrides}
        check_config_fields(cls, merged)
        return cls(**merged)
