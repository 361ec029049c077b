"""The experiment configs shipped inside the package (`agiqa/configs/**.yaml`), by name.

A config's name is its path under `agiqa/configs/` without `.yaml`: `ma_agiqa/agiqa3k`,
`ma_agiqa/ablations/agiqa3k_concat`, `maniqa/aigiqa20k`, `demo`. Any folder of YAML files added there is listed
without further registration. `resolve_config` turns what a user gives `-c` into a file: an existing path wins, then a
packaged name (with or without `.yaml`), else an `AgiqaError` naming close matches.
"""
from __future__ import annotations

import difflib
import os
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

from agiqa.errors import AgiqaError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; importlib.abc has it on 3.10
    from importlib.abc import Traversable

PACKAGE = "agiqa"
CONFIGS_FOLDER = "configs"
SUFFIXES = (".yaml", ".yml")


def configs_root() -> Traversable:
    """The packaged configs folder (a `Traversable`; a plain directory for a normal install or a checkout)."""
    return files(PACKAGE).joinpath(CONFIGS_FOLDER)


def _walk(folder: Traversable, prefix: str = ""):
    for entry in folder.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIXES):
            yield f"{prefix}{entry.name.rsplit('.', 1)[0]}", entry


def _packaged() -> dict[str, Traversable]:
    root = configs_root()
    return dict(sorted(_walk(root))) if root.is_dir() else {}


def list_configs(pattern: str | None = None) -> list[str]:
    """Names of the packaged configs, sorted; `pattern` keeps those containing it (or matching it as a glob)."""
    names = list(_packaged())
    if not pattern:
        return names
    import fnmatch

    needle = pattern.lower()
    if any(char in needle for char in "*?["):
        return [name for name in names if fnmatch.fnmatch(name.lower(), needle)]
    return [name for name in names if needle in name.lower()]


def normalize_name(name: str) -> str:
    """`ma_agiqa/agiqa3k.yaml`, `configs/ma_agiqa/agiqa3k` (the repository layout before configs were packaged),
    `ma_agiqa\\agiqa3k` -> `ma_agiqa/agiqa3k`."""
    name = name.strip().replace("\\", "/").strip("/")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.startswith(f"{CONFIGS_FOLDER}/"):
        name = name[len(CONFIGS_FOLDER) + 1:]
    return name


def _lookup(name: str, missing: str | None = None) -> Traversable:
    """A packaged config by name; else an `AgiqaError` that starts with `missing` and names close matches."""
    packaged = _packaged()
    key = normalize_name(name)
    if key in packaged:
        return packaged[key]
    missing = missing or f"no packaged experiment config {name!r}"
    raise AgiqaError(f"{missing}{_suggestions(key, list(packaged))}; `agiqa configs list` shows them all")


def _suggestions(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    stem = key.rsplit("/", 1)[-1].lower()
    if stem:
        close += [name for name in names if stem in name.lower() and name not in close]
    return f" (close matches: {', '.join(close[:8])})" if close else ""


def config_path(name: str, missing: str | None = None) -> Path:
    """The file of a packaged config (`ma_agiqa/agiqa3k`; `.yaml` optional)."""
    entry = _lookup(name, missing)
    if isinstance(entry, Path):
        return entry
    # A zipped install: a copy that outlives this call, under the config's own file name (its stem names the run).
    import tempfile

    with as_file(entry) as extracted:
        copy = Path(tempfile.mkdtemp(prefix="agiqa-config-")) / entry.name
        copy.write_bytes(Path(extracted).read_bytes())
    return copy


def config_text(name: str) -> str:
    """The YAML text of a packaged config."""
    return _lookup(name).read_text(encoding="utf-8")


def config_description(name: str) -> str:
    """The first comment line of a packaged config (what it is), or ''."""
    for line in config_text(name).splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        return stripped.lstrip("#").strip() if stripped.startswith("#") else ""
    return ""


def resolve_config(value: str | os.PathLike) -> Path:
    """What `-c` names: an existing file wins, else a packaged config name; an `AgiqaError` otherwise."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise AgiqaError(f"{value} is a directory, not an experiment config (a YAML file or a packaged name)")
    return config_path(str(value), f"no config file {str(value)!r} and no packaged experiment config of that name")


def experiment_config(model: str, dataset: str, configs_dir: str | os.PathLike | None = None) -> Path:
    """The config of `agiqa reproduce MODEL --dataset DATASET`: `<model>/<dataset>` (model with `-` -> `_`) among the
    packaged configs, or in `configs_dir` (a folder laid out the same way) when given."""
    name = f"{model.replace('-', '_')}/{normalize_name(dataset)}"
    if configs_dir is None:
        return config_path(name)
    folder = Path(configs_dir).expanduser()
    for suffix in SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    if not folder.is_dir():
        raise AgiqaError(f"--configs-dir {configs_dir} is not a directory")
    found = sorted(str(p.relative_to(folder).with_suffix("")).replace(os.sep, "/")
                   for p in folder.rglob("*") if p.suffix in SUFFIXES)
    raise AgiqaError(f"no experiment config {folder / name}.yaml{_suggestions(name, found)}")

