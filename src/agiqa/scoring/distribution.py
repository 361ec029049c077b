"""What a score means: where it falls among the training labels (MOS) of the model, when the model records them.

A trained model folder may hold `mos_distribution.json` (written by training beside `config.json`)::

    {"mos_quantiles": [q0, q1, ..., q100],   # 101 numbers: the 0 %, 1 %, ..., 100 % quantiles of the training MOS,
                                             # non-decreasing, on the model's output scale
     "mos_range": [min, max],                # the lowest and highest training MOS
     "dataset": "agiqa3k",                   # optional: named in "better than 83 % of the agiqa3k training images"
     "n_images": 2386,                       # optional: how many training labels the quantiles summarise
     "target": "quality",                    # optional, informative (a multi-target model's first target = `score`)
     "lower_better": false}                  # optional: overrides the registered architecture's direction

Every key is optional. A registered name reads the same `mos_quantiles` / `mos_range` attributes from its
`PretrainedCfg` (and `train_dataset`), where they exist. With quantiles, every score gets a `percentile`: the share
(0..100) of the training images that this score is better than, read off the quantiles by linear interpolation (for a
lower-is-better model, the share it is lower than). With `mos_range`, that range is the reported `score_range`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_logger = logging.getLogger(__name__)

DISTRIBUTION_FILE = "mos_distribution.json"
N_QUANTILES = 101
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ScoreDistribution:
    """The training labels of a model, summarised: quantiles (None: no percentile), range, dataset name."""

    quantiles: np.ndarray | None = None
    mos_range: tuple[float, float] | None = None
    dataset: str | None = None
    n_images: int | None = None
    lower_better: bool | None = None

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "ScoreDistribution":
        """Checked values (see the module docstring); a `ValueError` naming `source` and the key otherwise."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}")
        quantiles = values.get("mos_quantiles")
        if quantiles is not None:
            quantiles = _numbers(quantiles, f"{source}: mos_quantiles")
            if len(quantiles) != N_QUANTILES:
                raise ValueError(f"{source}: mos_quantiles must hold {N_QUANTILES} values (0 %, 1 %, ..., 100 %), "
                                 f"got {len(quantiles)}")
            if np.any(np.diff(quantiles) < 0):
                raise ValueError(f"{source}: mos_quantiles must not decrease")
        mos_range = values.get("mos_range")
        if mos_range is not None:
            mos_range = _numbers(mos_range, f"{source}: mos_range")
            if len(mos_range) != 2 or mos_range[0] > mos_range[1]:
                raise ValueError(f"{source}: mos_range must be [min, max] with min <= max, got {list(mos_range)}")
            if quantiles is not None and (quantiles[0] < mos_range[0] - _TOLERANCE
                                          or quantiles[-1] > mos_range[1] + _TOLERANCE):
                raise ValueError(f"{source}: mos_quantiles run from {quantiles[0]:g} to {quantiles[-1]:g}, outside "
                                 f"mos_range {list(mos_range)}")
            mos_range = (float(mos_range[0]), float(mos_range[1]))
        lower_better = values.get("lower_better")
        if lower_better is not None and not isinstance(lower_better, bool):
            raise ValueError(f"{source}: lower_better must be true or false, got {lower_better!r}")
        dataset = values.get("dataset")
        n_images = values.get("n_images")
        return cls(quantiles, mos_range, None if dataset is None else str(dataset),
                   None if n_images is None else int(n_images), lower_better)

    @property
    def has_percentile(self) -> bool:
        return self.quantiles is not None

    def percentile(self, scores, lower_better: bool = False) -> np.ndarray:
        """For each score: the share (0..100, one decimal) of the training images it is better than; NaN stays NaN."""
        value = percentile_of(scores, self.quantiles)
        value = 100.0 - value if lower_better else value
        return np.round(value, 1)

    def describe(self) -> str:
        """`the agiqa3k training images (2,386)` -- what a percentile compares with."""
        count = f" ({self.n_images:,})" if self.n_images else ""
        return f"the {self.dataset + ' ' if self.dataset else ''}training images{count}"


def percentile_of(scores, quantiles: np.ndarray) -> np.ndarray:
    """Where `scores` fall among the quantiles (q[i] = the i/(n-1) quantile): linear between neighbouring quantiles,
    the middle of a run of equal quantiles that a score hits exactly, 0 below q[0] and 100 above q[-1]."""
    q = np.asarray(quantiles, dtype=float)
    s = np.atleast_1d(np.asarray(scores, dtype=float))
    levels = np.linspace(0.0, 100.0, len(q))
    out = np.full(s.shape, np.nan)
    finite = ~np.isnan(s)
    lo = np.searchsorted(q, s, side="left")
    hi = np.searchsorted(q, s, side="right")
    exact = finite & (lo < hi)
    out[exact] = (levels[lo[exact]] + levels[hi[exact] - 1]) / 2
    out[finite & (lo == hi) & (lo == 0)] = 0.0
    out[finite & (lo == hi) & (lo == len(q))] = 100.0
    inside = finite & (lo == hi) & (lo > 0) & (lo < len(q))
    i = lo[inside]
    x0, x1, y0 = q[i - 1], q[i], levels[i - 1]
    out[inside] = y0 + (s[inside] - x0) / (x1 - x0) * (levels[1] - levels[0])
    return out


def _numbers(values, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers") from None
    if array.ndim != 1 or not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be a flat list of finite numbers")
    return array


def load_distribution(model: object, pretrained_cfg=None) -> ScoreDistribution | None:
    """The training-label summary of a model: `mos_distribution.json` in a model folder (`model` a path), else the
    `mos_quantiles` / `mos_range` attributes of the registered `pretrained_cfg`; None when neither has any. A file
    that cannot be used is reported as a warning (the scores are still given, without percentiles)."""
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        path = Path(model) / DISTRIBUTION_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            found = ScoreDistribution.from_dict(values, str(path))
        except (OSError, ValueError) as err:
            _logger.warning("ignoring %s: %s", path, err)
            return None
        if found.dataset is None:
            found = ScoreDistribution(found.quantiles, found.mos_range, _card_dataset(Path(model)), found.n_images,
                                      found.lower_better)
        return found
    values = {key: getattr(pretrained_cfg, key, None) for key in ("mos_quantiles", "mos_range")}
    if all(value is None for value in values.values()):
        return None
    values["dataset"] = getattr(pretrained_cfg, "train_dataset", None)
    try:
        return ScoreDistribution.from_dict(values, f"registered weights {getattr(pretrained_cfg, 'tag', '')}")
    except ValueError as err:
        _logger.warning("ignoring the training-label summary of %s", err)
        return None


def _card_dataset(folder: Path) -> str | None:
    """The training dataset's name from the model card `agiqa train` writes (`- dataset: agiqa3k (root ...)`)."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^- dataset: ([^\s(]+)", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def scale_text(score_range, lower_better: bool, distribution: ScoreDistribution | None,
               level_question: str | None = None) -> str:
    """One line saying what the scores are: the zero-shot level scale, the training range and percentile, or the
    bare range."""
    if level_question is not None:
        what = "quality" if level_question == "quality" else f"{level_question} (image vs its prompt)"
        return (f"scores are the expected {what} level, 1 (bad) .. 5 (excellent), zero-shot (Q-Align rule); "
                "no training data, so no percentile")
    direction = "lower is better" if lower_better else "higher is better"
    if distribution is not None and distribution.has_percentile:
        low, high = distribution.mos_range or (distribution.quantiles[0], distribution.quantiles[-1])
        return (f"scores are on the training MOS scale {_number(low)}..{_number(high)} ({direction}); column "
                f"`percentile` = the share of {distribution.describe()} each score is better than")
    shown = f" on {_number(score_range[0])}..{_number(score_range[1])}" if score_range is not None else ""
    return (f"scores{shown} ({direction}); no percentile: the model records no quantiles of its training labels "
            f"({DISTRIBUTION_FILE} in a model folder)")


def _number(value: float) -> str:
    return f"{value:g}" if math.isfinite(value) else str(value)
