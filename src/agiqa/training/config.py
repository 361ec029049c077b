"""Experiment configuration: one YAML file per paper experiment, overridable with `key.sub=value` strings."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agiqa.errors import ConfigError


@dataclass
class ModelSection:
    """Which registered model to build and its config overrides (see `agiqa models info NAME`)."""

    name: str = "ma_agiqa"
    pretrained: str | bool = False
    kwargs: dict = field(default_factory=dict)


@dataclass
class FeatureSection:
    """Semantic features for MA-AGIQA: a feature cache directory, extracted with `encoder` if missing.

    `prompts` (default: the paper's two questions) and `answers` (answer prefixes that add level probabilities,
    `agiqa.semantic.levels`) are the encoder's questions when it extracts; `precision` its compute precision
    ("auto": bf16 on GPUs and bf16-capable CPUs, else fp32)."""

    cache: str | None = None
    encoder: str | None = None
    trust_remote_code: bool = False
    batch_size: int = 8
    prompts: list[str] | None = None
    answers: list[str] | None = None
    precision: str = "auto"


@dataclass
class DataSection:
    """Dataset, target, split and loading settings."""

    dataset: str = "agiqa3k"
    root: str = "."
    target: str | list | None = None  # one target, a list / comma string of targets, or "all" (multi-target)
    csv: str | None = None
    image_col: str | None = None
    score_col: str | None = None
    prompt_col: str | None = None
    split_method: str = "official"
    split_seed: int = 20
    k: int = 5
    fold: int = 0
    split_file: str | None = None
    image_size: int = 224
    batch_size: int = 8
    eval_batch_size: int = 32
    num_workers: int = 0
    augment: bool = True
    augment_prob: float = 0.7
    image_cache: str | None = None
    features: FeatureSection = field(default_factory=FeatureSection)


@dataclass
class OptimSection:
    """Adam + cosine schedule stepped per batch, as the official code."""

    lr: float = 1e-5
    weight_decay: float = 1e-5
    t_max: int = 50
    eta_min: float = 0.0
    loss: str = "mse"
    target_weights: dict = field(default_factory=dict)  # loss weight per target of a multi-target run (default 1)


@dataclass
class TrainerSection:
    """Lightning Trainer arguments used by `agiqa train`."""

    max_epochs: int = 30
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    seed: int = 20
    limit_train_batches: float | int | None = None
    log_every_n_steps: int = 10
    deterministic: bool = False


@dataclass
class TestSection:
    """Where to test: the training dataset's test split by default, or another dataset (cross-dataset)."""

    dataset: str | None = None
    root: str | None = None
    target: str | None = None
    subset: str = "test"  # "test" = that dataset's split test part; "all" = every row


@dataclass
class TrainConfig:
    """A whole experiment; `agiqa train -c ma_agiqa/agiqa3k --set optim.lr=1e-4` (a packaged config or a YAML path)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    test: TestSection = field(default_factory=TestSection)
    official_quirks: bool = False
    output_dir: str = "runs/experiment"

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        config = _build(cls, data or {}, "config")
        config.check()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        data = read_yaml(path)
        for override in overrides or []:
            apply_override(data, override)
        return cls.from_dict(data)

    def check(self) -> None:
        """Values a run cannot start with, refused before anything is built or written (a `ConfigError` naming
        the key and what it accepts): loss, trainer precision, split method, counts and sizes."""
        from agiqa.data.splits import METHODS

        _one_of("optim.loss", self.optim.loss, LOSSES)
        _one_of("trainer.precision", str(self.trainer.precision), TRAINER_PRECISIONS)
        _one_of("data.split_method", self.data.split_method, METHODS)
        _one_of("test.subset", self.test.subset, TEST_SUBSETS)
        for name, value, least in (("trainer.max_epochs", self.trainer.max_epochs, 1),
                                   ("data.batch_size", self.data.batch_size, 1),
                                   ("data.eval_batch_size", self.data.eval_batch_size, 1),
                                   ("data.image_size", self.data.image_size, 1),
                                   ("data.num_workers", self.data.num_workers, 0),
                                   ("data.features.batch_size", self.data.features.batch_size, 1),
                                   ("trainer.num_nodes", self.trainer.num_nodes, 1),
                                   ("trainer.log_every_n_steps", self.trainer.log_every_n_steps, 1)):
            if value < least:
                raise ConfigError(f"{name} must be at least {least}, got {value}")
        if not 0.0 <= self.data.augment_prob <= 1.0:
            raise ConfigError(f"data.augment_prob must be between 0 and 1, got {self.data.augment_prob}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


LOSSES = ("mse", "l1", "smooth_l1")  # `optim.loss` (training.module.LOSSES builds them)
# `trainer.precision`: Lightning's names, and "auto" (bf16-mixed where bf16 is fast: CUDA, AMX / AVX512-BF16 CPUs).
TRAINER_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "auto",
                      "32", "16", "bf16", "64")
TEST_SUBSETS = ("test", "all")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}{hint}")


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; a `ConfigError` naming the file and the line for text that is not YAML."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not a YAML experiment config{where}: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping (model:, data:, optim:, trainer:, ...), "
                          f"got a {type(data).__name__}")
    return data


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = [f"{key} (did you mean {match[0]}?)" for key in unknown
                 if (match := difflib.get_close_matches(key, list(fields), n=1))]
        hint = f" [{'; '.join(close)}]" if close else ""
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}{hint}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        sub_cls = type(default()) if default is not None and dataclasses.is_dataclass(default()) else None
        if sub_cls:
            values[name] = _build(sub_cls, value or {}, f"{where}.{name}")
        else:
            values[name] = _checked(value, hints[name], f"{where}.{name}")
    return cls(**values)


def _checked(value, hint, where: str):
    """`value` if it has the annotated type (ints and numeric strings such as "5e-4" pass as floats, numbers as
    strings); else a `ConfigError` naming the key."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is bool and isinstance(value, bool):
            return value
        if origin in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if origin is float or isinstance(value, int):
                return origin(value)
        if origin is float and isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if origin is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if origin in (dict, list) and isinstance(value, origin):
            return value
    names = " or ".join("null" if k is type(None) else getattr(typing.get_origin(k) or k, "__name__", str(k))
                        for k in allowed)
    raise ConfigError(f"{where} must be {names}, got {value!r}")


def apply_override(data: dict, override: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not YAML ({str(err).splitlines()[0]}); quote "
                          "lists and mappings for the shell: --set \"model.kwargs.semantic_experts=[]\"") from err
