"""What the user named, checked before anything is loaded or written: the model (a model folder, a training run's
folder, a registered name, a zero-shot `vlm:` spec), the input paths and the device. Each mistake is one
`AgiqaError` naming the path or name and the fix (close names where there are some), so `agiqa score` and
`agiqa serve` fail in one line, before the model loads and before any output exists."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from agiqa.errors import AgiqaError

WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")


@dataclass(frozen=True)
class ModelSource:
    """The model to load (`model`: a folder, a registered name or a `vlm:` spec) and a note for the user where it
    is not what was typed (a run folder stands for its `model/`)."""

    model: str
    note: str | None = None


def resolve_model(model: str | os.PathLike, check_names: bool = True) -> ModelSource:
    """Check `model` the way `Scorer` will read it, without loading anything (`check_names=False`: a name that is
    no path is passed on unchecked, for the `Scorer` to check when it is built).

    - `vlm:...` / `vlm-alignment:...`: passed on (the VLM is checked when it loads);
    - a folder with `config.json`: a model folder;
    - a folder without one but with `model/config.json`: a training run, its `model/` is used (with a note);
    - a registered name (`maniqa`, `maniqa.koniq10k`): passed on, an unknown weights tag is refused here;
    - anything else: refused, naming the path (close names in its folder) or the close registered names.
    """
    from agiqa.models.vlm_levels import is_vlm_spec

    text = os.fspath(model)
    if is_vlm_spec(text):
        return ModelSource(text)
    path = Path(text)
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource(text)
        if (path / "model" / "config.json").is_file():
            inner = os.path.join(text, "model")
            return ModelSource(inner, f"{text} is a training run folder; scoring its model folder {inner}")
        raise AgiqaError(f"{text} has no config.json: it is not a model folder (a training run's model/ or "
                         "save_pretrained output) nor a training run folder with one in model/")
    if path.is_file():
        hint = ("a Lightning training checkpoint: score the run's model/ folder instead" if path.suffix == ".ckpt"
                else f"for an official checkpoint, name the architecture and pass the file as weights, e.g. "
                f"`maniqa --weights {text}`")
        raise AgiqaError(f"{text} is a file; MODEL is a model folder (config.json + model.safetensors) or a registered "
                         f"name ({hint})")
    if _looks_like_path(text):
        raise AgiqaError(f"model folder {text} does not exist{close_paths(text)}")
    if check_names:
        _check_registered(text)
    return ModelSource(text)


def _looks_like_path(text: str) -> bool:
    return (os.sep in text or "/" in text or text.startswith(("~", "."))
            or text.lower().endswith(WEIGHT_SUFFIXES))


def _check_registered(name: str) -> None:
    from agiqa.models._registry import get_pretrained_cfg, is_model, list_models, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not is_model(name):
        known = list_models() + list_models(pretrained=True)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else f" (registered: {', '.join(list_models())})"
        raise AgiqaError(f"unknown model {name!r}: no such folder here and not a registered name{hint}")
    if tag:
        try:
            get_pretrained_cfg(name)
        except RuntimeError:
            tags = list_models(f"{arch}.*", pretrained=True)
            raise AgiqaError(f"unknown weights {name!r}; {arch} has: {', '.join(tags) or 'none registered'}") from None


def close_paths(path: str) -> str:
    """`" (did you mean runs/tiny/model?)"` from the entries of the deepest existing folder above `path`; "" if none."""
    parts = Path(path)
    parent = parts.parent
    missing = [parts.name]
    while not parent.is_dir() and parent != parent.parent:
        missing.insert(0, parent.name)
        parent = parent.parent
    if not parent.is_dir():
        return ""
    try:
        names = [entry.name for entry in os.scandir(parent)]
    except OSError:
        return ""
    close = difflib.get_close_matches(missing[0], names, n=3, cutoff=0.6)
    if not close:
        return ""
    base = [] if str(parent) == "." else [str(parent)]
    shown = [os.path.join(*base, name, *missing[1:]) for name in close]
    return f" (did you mean {' or '.join(shown)}?)"


def check_inputs(paths: list[str]) -> None:
    """Every input named on the command line exists (a typo is one error, not a row that failed)."""
    for path in paths:
        if not os.path.exists(path):
            raise AgiqaError(f"input {path} does not exist{close_paths(path)}")


def check_device(device: str) -> None:
    """`--device`: auto, cpu, cuda or cuda:N, and CUDA only where there is a GPU."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise AgiqaError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise AgiqaError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or auto)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise AgiqaError(f"--device {device}: there are {torch.cuda.device_count()} GPU(s) (cuda:0..)")
    elif parsed.type != "cpu":
        raise AgiqaError(f"--device {device}: agiqa scores on auto, cpu, cuda or cuda:N")


def check_positive(**values: float | None) -> None:
    """Each given option (name -> value, None = not given) is at least 1 (`--batch-size 0` would never finish)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise AgiqaError(f"--{name.replace('_', '-')} must be at least 1, got {value:g}")
