"""Train/val/test splits over the rows of a dataset frame (row positions in label-file order)."""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass

import pandas as pd

from agiqa.errors import DatasetValidationError

METHODS = ("official", "random", "kfold", "prompt_disjoint")
DEFAULT_RATIOS = (0.7, 0.1, 0.2)
OFFICIAL_SEED = 20
PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Row indices of each part plus how they were made; `fold` is None except for k-fold splits."""

    train: list[int]
    val: list[int]
    test: list[int]
    method: str
    seed: int
    n: int
    fold: int | None = None
    dataset: str | None = None

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)

    def validate(self, n: int | None = None) -> None:
        """Raise `DatasetValidationError` unless the parts are disjoint and cover exactly range(n)."""
        n = self.n if n is None else n
        problems = []
        if n != self.n:
            problems.append(f"split was made for {self.n} rows, the dataset has {n}")
        indices = self.train + self.val + self.test
        if len(set(indices)) != len(indices):
            problems.append(f"{len(indices) - len(set(indices))} row index(es) appear more than once")
        outside = sorted(i for i in set(indices) if not 0 <= i < n)
        if outside:
            problems.append(f"row indices outside 0..{n - 1}: {outside[:10]}")
        uncovered = n - len(set(indices) - set(outside))
        if uncovered > 0:
            problems.append(f"{uncovered} row(s) are in no part")
        if problems:
            raise DatasetValidationError(f"invalid {self.method} split: " + "; ".join(problems))

    def check_disjoint(self) -> None:
        """Raise if any row index sits in two parts (a test image must never be trained on)."""
        seen: dict[int, str] = {}
        for part in PARTS:
            for row in getattr(self, part):
                if row in seen:
                    raise DatasetValidationError(f"row {row} is in both the {seen[row]} and {part} parts of the split")
                seen[row] = part

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Split":
        """Read a split written by `to_json`; anything else is a `DatasetValidationError` naming the file."""
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except (ValueError, UnicodeDecodeError) as err:
            raise DatasetValidationError(f"{path}: not a split file (invalid JSON: {err})") from err
        problems = _document_problems(document)
        if problems:
            raise DatasetValidationError(f"{path}: not a split file: " + "; ".join(problems))
        split = cls(**document)
        try:
            split.validate()
        except DatasetValidationError as err:
            raise DatasetValidationError(f"{path}: {err}") from err
        return split


_FIELD_CHECKS = {
    "train": ("a list of row indices", lambda v: isinstance(v, list) and all(_is_int(i) for i in v)),
    "val": ("a list of row indices", lambda v: isinstance(v, list) and all(_is_int(i) for i in v)),
    "test": ("a list of row indices", lambda v: isinstance(v, list) and all(_is_int(i) for i in v)),
    "method": ("a string", lambda v: isinstance(v, str)),
    "seed": ("an integer or null", lambda v: v is None or _is_int(v)),
    "n": ("a row count", lambda v: _is_int(v) and v >= 0),
    "fold": ("an integer or null", lambda v: v is None or _is_int(v)),
    "dataset": ("a string or null", lambda v: v is None or isinstance(v, str)),
}
_REQUIRED = ("train", "val", "test", "method", "seed", "n")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _document_problems(document) -> list[str]:
    if not isinstance(document, dict):
        return [f"expected a JSON object, got {type(document).__name__}"]
    problems = [f"missing {key!r}" for key in _REQUIRED if key not in document]
    problems += [f"unknown key {key!r}" for key in document if key not in _FIELD_CHECKS]
    problems += [f"{key!r} must be {what}" for key, (what, ok) in _FIELD_CHECKS.items()
                 if key in document and not ok(document[key])]
    return problems


def _shuffled(n: int, seed: int) -> list[int]:
    # Random(seed).shuffle gives the same order as the official random.seed(seed); random.shuffle(idx).
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def _cut(idx: list[int], ratios: tuple[float, float, float]) -> tuple[list[int], list[int], list[int]]:
    _check_ratios(ratios)
    n = len(idx)
    # Rounded so that 0.7 + 0.1 cuts at int(0.8 * n), as the official code does, not at int(0.7999999... * n).
    a = int(round(ratios[0], 10) * n)
    b = int(round(ratios[0] + ratios[1], 10) * n)
    return idx[:a], idx[a:b], idx[b:]


def _check_ratios(ratios) -> None:
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios must be three non-negative fractions summing to 1, got {tuple(ratios)}")


def official_split(n: int, seed: int = OFFICIAL_SEED) -> Split:
    """MA-AGIQA's split: shuffle range(n) with seed 20, then 70 % / 10 % / 20 % (AGIQA-3K: 2087/298/597)."""
    train, val, test = _cut(_shuffled(n, seed), DEFAULT_RATIOS)
    return Split(train, val, test, method="official", seed=seed, n=n)


def random_split(n: int, seed: int, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> Split:
    """The official procedure with any seed and ratios; repeat over a list of seeds for k random splits."""
    train, val, test = _cut(_shuffled(n, seed), ratios)
    return Split(train, val, test, method="random", seed=seed, n=n)


def kfold_split(n: int, k: int, fold: int, seed: int = OFFICIAL_SEED, val_ratio: float = 0.1) -> Split:
    """Fold `fold` of k: test = that fold of the shuffled rows; val = int(val_ratio * n) of the remaining rows."""
    if not 2 <= k <= n or not 0 <= fold < k:
        raise ValueError(f"need 2 <= k <= n and 0 <= fold < k, got k={k}, fold={fold}, n={n}")
    idx = _shuffled(n, seed)
    bounds = [n * i // k for i in range(k + 1)]
    test = idx[bounds[fold] : bounds[fold + 1]]
    rest = idx[: bounds[fold]] + idx[bounds[fold + 1] :]
    n_val = int(val_ratio * n)
    return Split(rest[n_val:], rest[:n_val], test, method="kfold", seed=seed, n=n, fold=fold)


def _prompt_groups(frame: pd.DataFrame) -> list[list[int]]:
    """Row positions grouped by prompt, in first-appearance order; rows with an empty prompt stand alone."""
    groups: dict[object, list[int]] = {}
    for i, prompt in enumerate(frame["prompt"]):
        groups.setdefault(prompt if prompt else ("", i), []).append(i)
    return list(groups.values())


def prompt_disjoint_split(
    frame: pd.DataFrame, seed: int = OFFICIAL_SEED, ratios: tuple[float, float, float] = DEFAULT_RATIOS
) -> Split:
    """Shuffle the prompts, then fill train, val and test with whole prompt groups up to the row ratios."""
    _check_ratios(ratios)
    groups = _prompt_groups(frame)
    random.Random(seed).shuffle(groups)
    n = len(frame)
    limits = (round(ratios[0], 10) * n, round(ratios[0] + ratios[1], 10) * n)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    taken = 0
    for group in groups:
        part = 0 if taken < limits[0] else 1 if taken < limits[1] else 2
        parts[part].extend(group)
        taken += len(group)
    return Split(*(sorted(p) for p in parts), method="prompt_disjoint", seed=seed, n=n)


def prompt_leakage(frame: pd.DataFrame, split: Split) -> int:
    """Number of distinct non-empty prompts that occur in more than one part of `split`."""
    prompts = frame["prompt"].to_numpy()
    part_sets = [{prompts[i] for i in part} - {""} for part in (split.train, split.val, split.test)]
    seen: set = set()
    shared: set = set()
    for prompts_in_part in part_sets:
        shared |= seen & prompts_in_part
        seen |= prompts_in_part
    return len(shared)


def seen_test_prompts(frame: pd.DataFrame, split: Split) -> tuple[int, int]:
    """(distinct test prompts that also occur in train or val, distinct test prompts); empty prompts not counted.
    A model that has seen a test prompt in training is tested on a prompt, not only on new images."""
    prompts = frame["prompt"].to_numpy()
    test = {prompts[i] for i in split.test} - {""}
    seen = {prompts[i] for i in (*split.train, *split.val)}
    return len(test & seen), len(test)


def make_split(
    frame: pd.DataFrame, method: str = "official", seed: int = OFFICIAL_SEED, k: int = 5, fold: int = 0
) -> Split:
    """Split the rows of a `load_dataset` frame; `dataset` is taken from `frame.attrs`."""
    n = len(frame)
    if method == "official":
        split = official_split(n, seed)
    elif method == "random":
        split = random_split(n, seed)
    elif method == "kfold":
        split = kfold_split(n, k, fold, seed)
    elif method == "prompt_disjoint":
        split = prompt_disjoint_split(frame, seed)
    else:
        raise ValueError(f"unknown split method {method!r}; choose one of {', '.join(METHODS)}")
    split.dataset = frame.attrs.get("dataset")
    return split


def dataset_split(frame: pd.DataFrame, split_file: str | os.PathLike | None = None, method: str = "official",
                  seed: int = OFFICIAL_SEED, k: int = 5, fold: int = 0, every_row_in_test: bool = False) -> Split:
    """The split a run uses for `frame`, its parts checked disjoint: every row in `test` (cross-dataset testing),
    else `split_file`'s (checked against the frame), else `make_split`'s."""
    if every_row_in_test:
        split = Split(train=[], val=[], test=list(range(len(frame))), method="all", seed=None,
                      dataset=frame.attrs.get("dataset"), n=len(frame))
    elif split_file:
        split = Split.from_json(split_file)
        split.validate(len(frame))
    else:
        split = make_split(frame, method=method, seed=seed, k=k, fold=fold)
    split.check_disjoint()
    return split
