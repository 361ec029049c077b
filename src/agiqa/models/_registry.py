"""Model registry: architecture entrypoints and their pretrained configurations (timm's layout)."""
from __future__ import annotations

import difflib
import fnmatch
import logging
import re
import sys
from typing import Callable

from agiqa.errors import AgiqaError
from agiqa.models._pretrained import PretrainedCfg

_logger = logging.getLogger(__name__)

_model_entrypoints: dict[str, Callable] = {}
_model_to_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, PretrainedCfg] = {}  # "arch.tag" -> cfg
_default_tag: dict[str, str] = {}


class UnknownModelError(AgiqaError, RuntimeError):
    """No registered model (or weights tag) of that name; the message names close matches or the known names.
    `name` is what was asked for, `close` the close matches."""

    def __init__(self, message: str, name: str = "", close: list[str] | None = None):
        self.name, self.close = name, list(close or [])
        super().__init__(message)


def register_model(fn: Callable) -> Callable:
    """Register a model entrypoint under its function name; reads `default_cfgs` of its module."""
    name = fn.__name__
    if name in _model_entrypoints:
        _logger.warning("Overwriting model %s in registry with %s.%s", name, fn.__module__, name)
    _model_entrypoints[name] = fn
    _model_to_module[name] = fn.__module__
    default_cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    for full_name, cfg in default_cfgs.items():
        arch, _, tag = full_name.partition(".")
        if arch != name:
            continue
        _pretrained_cfgs[full_name] = cfg
        _default_tag.setdefault(arch, tag)
    return fn


def split_model_name_tag(model_name: str) -> tuple[str, str]:
    """`"maniqa.koniq10k"` -> `("maniqa", "koniq10k")`; hyphens are accepted for underscores (`ma-agiqa`)."""
    arch, _, tag = model_name.partition(".")
    return arch.replace("-", "_"), tag


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text.lower())]


def list_models(filter: str = "", pretrained: bool = False, exclude_filters: str | list[str] = "") -> list[str]:
    """Registered model names matching a wildcard `filter`; with `pretrained=True`, every `arch.tag` with weights."""
    names = list(_pretrained_cfgs) if pretrained else list(_model_entrypoints)
    if filter:
        names = [n for n in names if fnmatch.fnmatch(n, filter)]
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else exclude_filters
    for pattern in (e for e in excludes if e):
        names = [n for n in names if not fnmatch.fnmatch(n, pattern)]
    return sorted(names, key=_natural_key)


def list_pretrained(filter: str = "") -> list[str]:
    return list_models(filter, pretrained=True)


def is_model(model_name: str) -> bool:
    return split_model_name_tag(model_name)[0] in _model_entrypoints


def model_entrypoint(model_name: str) -> Callable:
    arch = split_model_name_tag(model_name)[0]
    if arch not in _model_entrypoints:
        close = difflib.get_close_matches(arch, list(_model_entrypoints), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Known models: {', '.join(list_models())}."
        raise UnknownModelError(f"Unknown model ({model_name}).{hint}", model_name, close)
    return _model_entrypoints[arch]


# The config family each architecture builds (what `config_architecture` reads back from a saved config.json):
# `test_*` are tiny sizes of a family, `moe_agiqa_v1` is MoE-AGIQA without its prior branch.
FAMILIES = ("maniqa", "ma_agiqa", "moe_agiqa", "moe_agiqa_prior")


def architecture_family(model_name: str) -> str | None:
    """The family of a registered architecture (`test_moe_agiqa` -> `moe_agiqa`, `moe_agiqa_v1` -> `moe_agiqa`),
    or None for one outside `FAMILIES` (e.g. `vlm_levels`)."""
    arch = split_model_name_tag(model_name)[0]
    family = re.sub(r"_v\d+$", "", arch.removeprefix("test_"))
    return family if family in FAMILIES else None


def get_pretrained_cfg(model_name: str) -> PretrainedCfg | None:
    """The pretrained cfg for `arch.tag` (or the architecture's default tag); None when it has none."""
    arch, tag = split_model_name_tag(model_name)
    tag = tag or _default_tag.get(arch, "")
    if not tag:
        return None
    full = f"{arch}.{tag}"
    if full not in _pretrained_cfgs:
        known = [n for n in _pretrained_cfgs if n.startswith(arch + ".")]
        raise UnknownModelError(f"Unknown pretrained tag ({full}). Known tags for {arch}: "
                                f"{', '.join(known) or 'none'}.", model_name, known)
    return _pretrained_cfgs[full]


def get_model_info(model_name: str) -> dict:
    """Metadata for a model name: architecture, tag, score range, lower_better, weight sources."""
    arch, tag = split_model_name_tag(model_name)
    model_entrypoint(arch)
    cfg = get_pretrained_cfg(model_name)
    info = {"architecture": arch, "module": _model_to_module[arch], "tag": cfg.tag if cfg else None}
    if cfg is not None:
        info.update(cfg.to_dict())
    return info
