"""Config objects of every model family: dataclasses that round-trip through ``config.json``."""
from __future__ import annotations

import dataclasses
from typing import Any

# Config fields that fetch or read weights while a model is built (ImageNet backbones, prior / semantic networks).
# They are switched off whenever complete weights follow (a checkpoint, a `save_pretrained` folder).
WEIGHT_SOURCE_FIELDS = ("backbone_pretrained", "prior_checkpoint", "semantic_checkpoint")


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
        """Build from a dict (e.g. ``config.json``); unknown keys are refused with their names."""
        merged = {**(values or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise TypeError(f"Unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**merged)
