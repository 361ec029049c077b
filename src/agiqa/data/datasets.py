"""Benchmark label readers: every dataset becomes one validated DataFrame with the same columns.

Columns: `name` (image entry as written in the label file), `path` (absolute image path), `prompt` ("" when the
dataset has none), `mos` (raw MOS of the chosen target, float), `generator` ("" when unknown).
`frame.attrs` = {"dataset", "target", "root"}.
"""
from __future__ import annotations

import difflib
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from agiqa.errors import DatasetValidationError

logger = logging.getLogger(__name__)

COLUMNS = ("name", "path", "prompt", "mos", "generator")
GENERIC = "csv"
GENERIC_OPTIONS = ("csv", "image_col", "score_col", "prompt_col", "generator_col")
OFFICIAL_OPTIONS = ("image_dir",)
MAX_LISTED = 20  # problems listed per kind; the rest are counted


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry of one benchmark (loaded from datasets.yaml)."""

    name: str
    title: str
    label_file: str
    name_col: str
    targets: dict[str, str]
    default_target: str
    score_range: tuple[float, float]
    rows: int
    image_dir: str = ""
    prompt_col: str | None = None
    generator_pattern: str | None = None
    prompts_file: dict | None = None
    generators_file: dict | None = None
    attributes: tuple[str, ...] = ()
    url: str = ""

    def target_column(self, target: str | None) -> str:
        """MOS column of `target` (default target when None)."""
        target = target or self.default_target
        if target not in self.targets:
            raise DatasetValidationError(
                f"{self.name} has no target {target!r}; choose one of: {', '.join(self.targets)}"
            )
        return self.targets[target]


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, DatasetInfo]:
    text = resources.files("agiqa.data").joinpath("datasets.yaml").read_text(encoding="utf-8")
    entries = yaml.safe_load(text)
    return {
        name: DatasetInfo(name=name, **{**entry, "score_range": tuple(entry["score_range"])})
        for name, entry in entries.items()
    }


def list_datasets() -> list[str]:
    """Names of the registered benchmarks (the generic "csv" reader is not listed)."""
    return sorted(_registry())


def get_dataset_info(name: str) -> DatasetInfo:
    """Registry entry of `name`; unknown names raise with the closest known ones."""
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, [*registry, GENERIC], n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DatasetValidationError(
            f"unknown dataset {name!r}; known: {', '.join([*sorted(registry), GENERIC])}.{hint}"
        )
    return registry[name]


@dataclass
class _Spec:
    """What to read from one label table, resolved from the registry or the generic-CSV options."""

    dataset: str
    target: str
    root: Path
    label_path: Path
    image_dir: Path
    name_col: str
    score_col: str
    prompt_col: str | None = None
    generator_col: str | None = None
    generator_pattern: str | None = None
    prompts_file: dict | None = None
    generators_file: dict | None = None
    attributes: tuple[str, ...] = ()  # prompt-attribute columns kept in the frame when the label file has them
    option_names: dict[str, str] = field(default_factory=dict)  # column role -> how the user named it


def load_dataset(
    name: str,
    root: str | os.PathLike | None,
    target: str | None = None,
    check_files: bool = True,
    **opts,
) -> pd.DataFrame:
    """Read and validate a dataset's labels into a DataFrame with columns `COLUMNS` (and the benchmark's prompt
    attribute columns where it has them, e.g. AGIQA-3K's style, adj1, adj2).

    name: a registered benchmark (`list_datasets()`) or "csv" for a generic label file, which takes
    `csv=PATH, image_col="image", score_col="mos", prompt_col=None, generator_col=None` (root defaults to the
    CSV's folder). Official datasets accept `image_dir=` to override the image folder under `root`.
    Every problem (missing columns, bad MOS, empty or duplicate names, side tables that do not fit, image files
    missing on disk when `check_files`) is collected and raised as one `DatasetValidationError`.
    """
    spec = _resolve_spec(name, root, target, opts)
    table = _read_csv(_existing_label_file(spec))
    problems = _column_problems(table, spec)
    side: dict[str, pd.Series] = {}
    if not problems:
        problems += _row_problems(table, spec)
        side = _side_columns(table, spec, problems)
        if check_files:
            problems += _missing_file_problems(table[spec.name_col], spec.image_dir)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise DatasetValidationError(f"{spec.label_path}: {len(problems)} problem(s):\n{listing}")
    frame = _build_frame(table, spec, side)
    frame.attrs.update(dataset=spec.dataset, target=spec.target, root=str(spec.root))
    return frame


def load_dataset_targets(name: str, root: str | os.PathLike | None, targets: list[str] | None = None,
                         **opts) -> pd.DataFrame:
    """`load_dataset` for a run's targets: None gives the dataset's default target, one name that target (for the
    generic CSV, a target names its score column); two or more add one `mos_<target>` column each (`mos` stays the
    first target's) and `frame.attrs["targets"]`. Image files are checked once, with the first target."""
    frames = [load_dataset(name, root, check_files=index == 0, **_target_options(name, target, opts))
              for index, target in enumerate(targets or [None])]
    if len(frames) == 1:
        return frames[0]
    frame = frames[0].copy()
    for target, target_frame in zip(targets, frames):
        frame[f"mos_{target}"] = target_frame["mos"].to_numpy()
    frame.attrs["targets"] = list(targets)
    return frame


def _target_options(name: str, target: str | None, opts: dict) -> dict:
    if target is None:
        return dict(opts)
    return {**opts, "score_col": target} if name == GENERIC else {**opts, "target": target}


def check_label_file(name: str, root: str | os.PathLike | None, target: str | None = None, **opts) -> Path:
    """The dataset's label file, or a `DatasetValidationError` naming it when it is not there: a cheap check that
    commands run before building models, so a wrong root is reported first."""
    return _existing_label_file(_resolve_spec(name, root, target, opts))


def _existing_label_file(spec: _Spec) -> Path:
    if not spec.label_path.is_file():
        raise DatasetValidationError(f"label file not found: {spec.label_path} (is {spec.root} the {spec.dataset} "
                                     "root?)")
    return spec.label_path


def _resolve_spec(name: str, root, target: str | None, opts: dict) -> _Spec:
    if name == GENERIC:
        return _generic_spec(root, target, opts)
    info = get_dataset_info(name)
    _reject_unknown_options(name, opts, OFFICIAL_OPTIONS)
    if root is None:
        raise DatasetValidationError(f"{name}: a dataset root is required (the folder holding {info.label_file})")
    root = Path(root).expanduser().resolve()
    target = target or info.default_target
    image_dir = opts.get("image_dir")
    return _Spec(
        dataset=name,
        target=target,
        root=root,
        label_path=root / info.label_file,
        image_dir=root / (info.image_dir if image_dir is None else image_dir),
        name_col=info.name_col,
        score_col=info.target_column(target),
        prompt_col=info.prompt_col,
        generator_pattern=info.generator_pattern,
        prompts_file=info.prompts_file,
        generators_file=info.generators_file,
        attributes=tuple(info.attributes),
        option_names={"mos": f"MOS of target {target!r}"},
    )


def _generic_spec(root, target: str | None, opts: dict) -> _Spec:
    _reject_unknown_options(GENERIC, opts, GENERIC_OPTIONS)
    if not opts.get("csv"):
        raise DatasetValidationError('the generic "csv" dataset needs csv=PATH (CLI: --csv PATH)')
    if target is not None:
        raise DatasetValidationError('the generic "csv" dataset takes its MOS column from score_col, not target')
    label_path = Path(opts["csv"]).expanduser().resolve()
    root = label_path.parent if root is None else Path(root).expanduser().resolve()
    score_col = opts.get("score_col") or "mos"
    return _Spec(
        dataset=GENERIC,
        target=score_col,
        root=root,
        label_path=label_path,
        image_dir=root,
        name_col=opts.get("image_col") or "image",
        score_col=score_col,
        prompt_col=opts.get("prompt_col"),
        generator_col=opts.get("generator_col"),
        option_names={
            "name": "image_col / --image-col",
            "mos": "score_col / --score-col",
            "prompt": "prompt_col / --prompt-col",
            "generator": "generator_col / --generator-col",
        },
    )


def _reject_unknown_options(name: str, opts: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise DatasetValidationError(
            f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}"
        )


def _read_csv(path: Path) -> pd.DataFrame:
    """Label CSV as strings (so bad numbers can be reported as written); CRLF and a UTF-8 BOM are fine."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetValidationError(f"{path}: cannot be read as CSV ({err})") from err


def _row(i: int) -> str:
    """1-based data row and CSV line (the header is line 1) of table position `i`."""
    return f"row {i + 1} (line {i + 2})"


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return lines
    return lines[:MAX_LISTED] + [f"... and {len(lines) - MAX_LISTED} more like these"]


def _column_problems(table: pd.DataFrame, spec: _Spec) -> list[str]:
    roles = {"name": spec.name_col, "mos": spec.score_col, "prompt": spec.prompt_col, "generator": spec.generator_col}
    present = ", ".join(map(repr, table.columns))
    return [
        f"missing column {column!r}"
        + (f" ({spec.option_names[role]})" if role in spec.option_names else "")
        + f"; columns present: {present}"
        for role, column in roles.items()
        if column is not None and column not in table.columns
    ]


def _row_problems(table: pd.DataFrame, spec: _Spec) -> list[str]:
    names = table[spec.name_col]
    empty = names.str.strip() == ""
    problems = _capped([f"{_row(i)}: empty {spec.name_col!r}" for i in names.index[empty]])
    first_row = {}
    duplicates = []
    for i, name in names[~empty].items():
        if name in first_row:
            duplicates.append(f"{_row(i)}: duplicate {spec.name_col!r} {name!r} (first at {_row(first_row[name])})")
        else:
            first_row[name] = i
    problems += _capped(duplicates)
    return problems + _capped(_mos_problems(table[spec.score_col], spec.score_col))


def _mos_problems(raw: pd.Series, column: str) -> list[str]:
    values = pd.to_numeric(raw.str.strip(), errors="coerce")
    problems = []
    for i in raw.index[~values.map(math.isfinite)]:
        text = raw[i].strip()
        reason = "is empty (NaN)" if not text else f"= {text!r} is not a finite number"
        problems.append(f"{_row(i)}: {column!r} {reason}")
    return problems


def _missing_file_problems(names: pd.Series, image_dir: Path) -> list[str]:
    if not image_dir.is_dir():
        return [f"image folder {image_dir} does not exist"]
    missing = [
        f"{name!r} (row {i + 1})"
        for i, name in names.items()
        if name.strip() and not os.path.isfile(os.path.join(image_dir, name))
    ]
    if not missing:
        return []
    shown = ", ".join(missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
    return [f"{len(missing)} of {len(names)} image file(s) missing under {image_dir}: {shown}"]


def _side_columns(table: pd.DataFrame, spec: _Spec, problems: list[str]) -> dict[str, pd.Series]:
    """Prompts / generators that live in optional side tables; problems are appended to `problems`."""
    side = {}
    if spec.prompts_file:
        path = spec.root / spec.prompts_file["file"]
        prompts = _prompts_by_name(table[spec.name_col], path, spec.prompts_file, problems)
        if prompts is not None:
            side["prompt"] = prompts
    if spec.generators_file:
        path = spec.root / spec.generators_file["file"]
        generators = _values_by_row(len(table), path, spec.generators_file, problems)
        if generators is not None:
            side["generator"] = generators
    return side


def _read_side_table(path: Path, problems: list[str], header: int | None = 0) -> pd.DataFrame | None:
    if not path.is_file():
        logger.info("%s not found; its column is left empty", path)
        return None
    try:
        return pd.read_excel(path, dtype=str, header=header).fillna("")
    except (ValueError, OSError, KeyError) as err:
        problems.append(f"{path}: cannot be read ({err})")
        return None


def _prompts_by_name(names: pd.Series, path: Path, cfg: dict, problems: list[str]) -> pd.Series | None:
    side = _read_side_table(path, problems)
    if side is None:
        return None
    missing = [column for column in (cfg["name_col"], cfg["prompt_col"]) if column not in side.columns]
    if missing:
        problems.append(f"{path}: missing column(s) {', '.join(map(repr, missing))}; present: {list(side.columns)}")
        return None
    lookup = side.drop_duplicates(cfg["name_col"]).set_index(cfg["name_col"])[cfg["prompt_col"]]
    prompts = names.map(lookup)
    if prompts.isna().any():
        logger.info("%d image(s) have no prompt in %s", int(prompts.isna().sum()), path.name)
    return prompts.fillna("")


def _values_by_row(n_rows: int, path: Path, cfg: dict, problems: list[str]) -> pd.Series | None:
    side = _read_side_table(path, problems, header=None)
    if side is None:
        return None
    if len(side) != n_rows:
        problems.append(f"{path}: has {len(side)} rows but the label file has {n_rows}; rows must align")
        return None
    return side[cfg["column"]].reset_index(drop=True)


def _build_frame(table: pd.DataFrame, spec: _Spec, side: dict[str, pd.Series]) -> pd.DataFrame:
    names = table[spec.name_col].reset_index(drop=True)
    image_dir = str(spec.image_dir)
    frame = pd.DataFrame(
        {
            "name": names,
            "path": [os.path.join(image_dir, name) for name in names],
            "prompt": table[spec.prompt_col].reset_index(drop=True) if spec.prompt_col else "",
            "mos": pd.to_numeric(table[spec.score_col].str.strip()).astype(float).reset_index(drop=True),
            "generator": _generators(names, table, spec),
        }
    )
    for column, values in side.items():
        frame[column] = values.to_numpy()
    for column in spec.attributes:
        if column in table.columns and column not in frame.columns:
            frame[column] = table[column].reset_index(drop=True)
    return frame


def _generators(names: pd.Series, table: pd.DataFrame, spec: _Spec) -> pd.Series | str:
    if spec.generator_col:
        return table[spec.generator_col].reset_index(drop=True)
    if spec.generator_pattern:
        return names.map(os.path.basename).str.extract(spec.generator_pattern, expand=False).fillna("")
    return ""
