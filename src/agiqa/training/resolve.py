"""A run resolved once, before any model is built: every check a training config can fail (one `AgiqaError` naming
the key or file and what is accepted) and what everything after it reads, an `Experiment`: each dataset's targets,
label frame, split and MOS (whose maximum is MoE-AGIQA's label scale), the image cache, the cross-dataset test
set and the precisions. `train`, `evaluate`, `reproduce` and the data module read it; nothing re-derives it. The
checks of a built model against its data (`model_inputs`, `check_image_size`) live here too."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from agiqa.data.datasets import GENERIC, get_dataset_info, load_dataset_targets
from agiqa.data.splits import Split, dataset_split
from agiqa.errors import ConfigError, DatasetValidationError
from agiqa.models import needs_semantic
from agiqa.models._factory import model_targets
from agiqa.runtime import resolve_device, resolve_precision
from agiqa.training.config import DataSection, TrainConfig

ALL_TARGETS = "all"
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
MA_AGIQA_ABLATION = '--set "model.kwargs.semantic_experts=[]"'


@dataclass(frozen=True, eq=False)
class ResolvedData:
    """One dataset as a run reads it: its data section (the image cache filled in), its targets (two or more for a
    multi-target run, else None), the validated label frame, the split of its rows and the MOS as float32 ((N,), or
    (N, T) in target order)."""

    section: DataSection
    targets: list[str] | None
    frame: pd.DataFrame
    split: Split
    mos: torch.Tensor

    @property
    def label_scale(self) -> float:
        """The largest MOS over every row and target: MoE-AGIQA trains on MOS / label_scale."""
        return float(self.mos.max())

    @property
    def target_names(self) -> list[str]:
        """The targets in the model's output order; for one target, its name (the dataset's default target's)."""
        return list(self.targets or [self.frame.attrs.get("target") or "quality"])


@dataclass(frozen=True, eq=False)
class Experiment:
    """A run resolved once: `config` is the recipe as given (model, optim, trainer, output folder); `data` the
    training dataset; `test` what the chosen epoch is tested on, `data` itself (its split's test part) or the
    cross-dataset `test.dataset`; `trainer_precision` Lightning's name of the training precision ("auto" decided
    for this machine); `test_device` and `test_precision` (fp32, bf16 or fp16, decided for that device) what the
    test is scored on and in."""

    config: TrainConfig
    data: ResolvedData
    test: ResolvedData
    trainer_precision: str
    test_device: torch.device
    test_precision: str

    @property
    def cross_dataset(self) -> bool:
        return self.test is not self.data


def resolve_experiment(config: TrainConfig) -> Experiment:
    """`config` checked and resolved before any model is built or anything is written, in this order: its values
    (`TrainConfig.check`), the targets (of the cross-dataset test set too), the training labels and split sizes, an
    MA-AGIQA's semantic features, the target weights, then the cross-dataset test set's labels. Every mistake is one
    `AgiqaError` naming the key or file."""
    config.check()
    section = with_image_cache(config.data)
    targets = resolve_targets(section)
    test_section = cross_dataset_section(config, section, targets)
    test_targets = resolve_targets(test_section) if test_section else None
    data = resolve_data(section, targets)
    check_split_sizes(config, data.split)
    check_semantic_features_early(config)
    check_target_weights(config.optim.target_weights, data.targets)
    subset = "all" if config.test.subset == "all" else "split"
    test = resolve_data(test_section, test_targets, subset) if test_section else data
    precision = lightning_precision(config.trainer.precision, config.trainer.accelerator)
    device = resolve_device(None)
    return Experiment(config, data, test, precision, device, resolve_precision(inference_precision(precision), device))


def resolve_evaluation(model_dir: str | Path, model: torch.nn.Module, data: DataSection, out_dir: str | Path,
                       precision: str = "auto", device: str | torch.device | None = None,
                       subset: str = "split") -> Experiment:
    """What `agiqa evaluate` scores, checked and resolved once its model is loaded: a zero-shot VLM (`vlm:<id>`)
    reads its level answers from `data.features.cache` (default OUT/features); a saved model needs a feature cache
    where it has semantic experts and an image size it takes, and is scored in the precision its run tested it in
    (`recorded_precision`) where `precision` is "auto" (else "auto" is decided for `device`); a multi-target model
    is scored on its own targets; `subset="all"` scores every row. An evaluation trains nothing: its config is a
    default `TrainConfig` of its data."""
    from agiqa.models.vlm_levels import is_vlm_spec

    if is_vlm_spec(model_dir):
        data = with_level_features(data, model, out_dir)
    else:
        if needs_semantic(model) and not data.features.cache:
            raise ConfigError(f"{model_dir} has semantic experts and needs features of a VLM: pass --features DIR "
                              "(a feature cache from `agiqa features extract`, e.g. the one it was trained with) "
                              "and/or --encoder VLM to extract the missing ones into it")
        check_image_size(model, data.image_size, "--image-size")
        if precision == "auto":
            precision = recorded_precision(model_dir) or precision
    section = with_image_cache(with_model_targets(data, model_targets(model)))
    resolved = resolve_data(section, resolve_targets(section), subset)
    config = TrainConfig(data=section)
    trainer_precision = lightning_precision(config.trainer.precision, config.trainer.accelerator)
    device = resolve_device(device)
    return Experiment(config, resolved, resolved, trainer_precision, device, resolve_precision(precision, device))


def resolve_data(section: DataSection, targets: list[str] | None, subset: str = "split") -> ResolvedData:
    """`section`'s labels (validated), split (`subset="all"`: every row in `test`, for cross-dataset testing) and
    MOS, for `targets` (`resolve_targets`)."""
    options = dataset_options(section)
    frame = load_dataset_targets(section.dataset, section.root, targets, **options)
    split = dataset_split(frame, section.split_file, section.split_method, section.split_seed, section.k,
                          section.fold, every_row_in_test=subset == "all")
    return ResolvedData(section, multi_targets(targets), frame, split, target_mos(frame))


# ---------------------------------------------------------------------------------------------------- the data
def resolve_targets(config: DataSection) -> list[str] | None:
    """The targets `data.target` asks for, checked against the dataset: None for the dataset's default target,
    else the names ("all" expands to every target the dataset declares; for a plain CSV, the `score_col` columns).

    A `ConfigError` names an unknown target and the targets the dataset has.
    """
    names = target_names(config.target)
    if names is None:
        return None
    if config.dataset == GENERIC:
        declared = [column.strip() for column in (config.score_col or "mos").split(",")]
        return declared if names == [ALL_TARGETS] else names
    declared = list(get_dataset_info(config.dataset).targets)
    if names == [ALL_TARGETS]:
        return declared
    for name in names:
        if name not in declared:
            raise ConfigError(f"data.target: {config.dataset} has no target {name!r}; its targets: "
                              f"{', '.join(declared)}")
    return names


def target_names(target: str | list | None) -> list[str] | None:
    """`data.target` as a list of names: None stays None (the dataset's default), "a,b" and ["a", "b"] give
    ["a", "b"], "all" gives ["all"] (expanded by `resolve_targets`); a `ConfigError` for empty or repeated names."""
    if target is None:
        return None
    names = target.split(",") if isinstance(target, str) else [str(name) for name in target]
    names = [name.strip() for name in names]
    if not names or "" in names:
        raise ConfigError(f"data.target has an empty target name: {target!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"data.target names {', '.join(repeated)} more than once")
    if ALL_TARGETS in names and len(names) > 1:
        raise ConfigError(f'data.target "all" cannot be combined with other targets: {target!r}')
    return names


def multi_targets(targets: list[str] | None) -> list[str] | None:
    """The targets of a multi-target run (two or more), or None for a single-target one."""
    return targets if targets is not None and len(targets) > 1 else None


def with_image_cache(data: DataSection) -> DataSection:
    """A copy of `data` whose decoded-image cache defaults to $AGIQA_CACHE_DIR/images (~/.cache/agiqa/images)."""
    cache = data.image_cache or str(Path(default_cache_dir()) / "images")
    return dataclasses.replace(copy.deepcopy(data), image_cache=cache)


def default_cache_dir() -> str:
    return os.environ.get("AGIQA_CACHE_DIR", str(Path.home() / ".cache" / "agiqa"))


def cross_dataset_section(config: TrainConfig, data: DataSection, targets: list[str] | None) -> DataSection | None:
    """The cross-dataset test set's data section (`test.dataset`), or None to test on `data`'s own split."""
    if not config.test.dataset:
        return None
    # A multi-target run is tested on the same targets unless test.target names others.
    target = config.test.target or (data.target if multi_targets(targets) else None)
    return dataclasses.replace(data, dataset=config.test.dataset, root=config.test.root or data.root,
                               target=target, csv=None, split_file=None)


def dataset_options(config: DataSection) -> dict:
    """The reader options of a data section that are set (a plain CSV's file and columns)."""
    options = dict(csv=config.csv, image_col=config.image_col, score_col=config.score_col, prompt_col=config.prompt_col)
    return {key: value for key, value in options.items() if value is not None}


def target_mos(frame: pd.DataFrame) -> torch.Tensor:
    """MOS as float32: (N,) for one target, (N, T) in `frame.attrs["targets"]` order for several."""
    targets = frame.attrs.get("targets")
    columns = [f"mos_{target}" for target in targets] if targets else "mos"
    return torch.tensor(frame[columns].to_numpy(), dtype=torch.float32)


def check_split_sizes(config: TrainConfig, split: Split) -> None:
    """Refuse a split a run cannot train on, before any model is built: no full training batch (the incomplete
    last batch is dropped, as the official code) or no image to choose the best epoch on."""
    batch_size = config.data.batch_size
    train_images = len(split.train)
    if train_images < batch_size:
        raise DatasetValidationError(
            f"the training part of the split has {train_images} images, fewer than one batch (data.batch_size = "
            f"{batch_size}; incomplete batches are dropped): use more data (agiqa synth --n) or a smaller "
            "--set data.batch_size=N")
    if not split.val and not (config.official_quirks and config.test.dataset is None):
        raise DatasetValidationError(
            f"the validation part of the split is empty ({len(split.train)} train / 0 validation / "
            f"{len(split.test)} test images): the best epoch is chosen on it; use more data or another split")


# ------------------------------------------------------------------------------------------- the model's inputs
def check_target_weights(weights: dict, targets: list[str] | None) -> None:
    """`optim.target_weights` must name targets of a multi-target run, with non-negative numbers."""
    if not weights:
        return
    if not targets:
        raise ConfigError("optim.target_weights is for multi-target runs (data.target with two or more targets)")
    unknown = sorted(set(weights) - set(targets))
    if unknown:
        raise ConfigError(f"optim.target_weights names {', '.join(unknown)}, not among the run's targets: "
                          f"{', '.join(targets)}")
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"optim.target_weights.{name} must be a non-negative number, got {value!r}")


def check_semantic_features_early(config: TrainConfig) -> None:
    """An MA-AGIQA built from scratch with semantic experts (the class default) but no feature cache, told before
    its backbone is built (the paper configs would download the ImageNet ViT first); `model_inputs` checks
    every other model once built."""
    from agiqa.models._registry import architecture_family

    if config.data.features.cache or config.model.pretrained or architecture_family(config.model.name) != "ma_agiqa":
        return
    from agiqa.models.ma_agiqa import MaAgiqaConfig

    fields = {f.name: f.default for f in dataclasses.fields(MaAgiqaConfig)}
    kwargs = config.model.kwargs
    if set(kwargs) - set(fields):
        return  # a misspelt field: building the model names it first
    settings = types.SimpleNamespace(**{name: kwargs.get(name, fields[name])
                                        for name in ("semantic_experts", "level_prompts", "use_maniqa")})
    if settings.semantic_experts or settings.level_prompts:
        raise ConfigError(semantic_features_message(config.model.name, settings))


def model_inputs(experiment: Experiment, model: torch.nn.Module) -> dict:
    """What a built model reads (`processing`: the data module's arguments), checked against the experiment before
    anything runs: semantic features for models with semantic experts (the error says how to get them, or how to
    train without them), and an image size the model takes."""
    inputs, data = processing(model), experiment.data.section
    if inputs["needs_semantic"] and not data.features.cache:
        raise ConfigError(semantic_features_message(experiment.config.model.name, model.config))
    check_image_size(model, data.image_size, "data.image_size")
    return inputs


def processing(model: torch.nn.Module) -> dict:
    """Datamodule arguments of a model: whether it reads semantic features, and its own preprocessing (MoE-AGIQA:
    crops + prompt image + tokens) or no pixel input (a zero-shot VLM reads semantic features only)."""
    inputs = {"needs_semantic": needs_semantic(model)}
    if hasattr(model, "processor"):
        return {**inputs, "processor": model.processor(), "train_crops": model.config.train_crops,
                "test_crops": model.config.test_crops}
    return inputs if "image" in getattr(model, "input_names", ("image",)) else {**inputs, "needs_images": False}


def semantic_features_message(model_name: str, model_config) -> str:
    """Why a model with semantic experts cannot train without a feature cache, and the two ways on: features of a
    VLM (cache + encoder), or the MANIQA-expert-only ablation of paper Table 3 (what `agiqa demo` trains)."""
    experts = list(getattr(model_config, "semantic_experts", ()) or ())
    levels = list(getattr(model_config, "level_prompts", ()) or ())
    has = ", ".join(part for part in (f"model.kwargs.semantic_experts: {experts}" if experts else "",
                                      f"model.kwargs.level_prompts: {len(levels)}" if levels else "") if part)
    message = (f"{model_name} has semantic experts ({has}) and needs features of a VLM: --set "
               "data.features.cache=DIR (a cache from `agiqa features extract`; add --set data.features.encoder=VLM, a "
               "hub id or local folder, to extract the missing ones into it)")
    if hasattr(model_config, "use_maniqa"):
        ablation = [MA_AGIQA_ABLATION] + (['--set "model.kwargs.level_prompts=[]"'] if levels else [])
        if not model_config.use_maniqa:
            ablation.append("--set model.kwargs.use_maniqa=true")
        message += (", or train the MANIQA-expert-only ablation (paper Table 3, row 1; what `agiqa demo` trains "
                    f"without a VLM): {' '.join(ablation)}")
    return message


def check_image_size(model: torch.nn.Module, image_size: int, name: str) -> None:
    """A model fed resized images (MANIQA, MA-AGIQA) takes exactly its `img_size`; models with their own
    preprocessing (MoE-AGIQA's crops) or without pixels are not checked."""
    if hasattr(model, "processor") or "image" not in getattr(model, "input_names", ("image",)):
        return
    size = getattr(model.config, "img_size", None)
    if size is not None and int(size) != int(image_size):
        raise ConfigError(f"{name} is {image_size} but the model takes {size} px images (its img_size, "
                          f"model.kwargs.img_size when training): set both to the same size")


def with_level_features(data: DataSection, model: torch.nn.Module, out_dir: str | Path) -> DataSection:
    """`data` whose features are the zero-shot VLM's level answers (cache: the given one, else OUT/features)."""
    options = model.encoder_options()
    features = dataclasses.replace(data.features, cache=data.features.cache or str(Path(out_dir) / "features"),
                                   encoder=model.config.encoder, prompts=list(options["prompts"]),
                                   answers=list(options["answers"]))
    return dataclasses.replace(data, features=features)


def with_model_targets(data: DataSection, targets: list[str]) -> DataSection:
    """`data` evaluated on a multi-target model's targets (when `data.target` is unset); a `ConfigError` when it
    asks for other targets than the model predicts."""
    if len(targets) == 1:
        return data
    if data.target is None:
        return dataclasses.replace(data, target=list(targets))
    if multi_targets(resolve_targets(data)) != targets:
        raise ConfigError(f"data.target {data.target!r} does not match the model's targets: {', '.join(targets)}")
    return data


# ------------------------------------------------------------------------------------------------ the precisions
def lightning_precision(precision: str, accelerator: str) -> str:
    """`auto` → bf16-mixed where bf16 is fast (CUDA, AMX CPUs), else 32-true; other values pass through."""
    if precision != "auto":
        return precision
    device = resolve_device("cpu" if accelerator == "cpu" else "auto")
    return LIGHTNING_PRECISION[resolve_precision("auto", device)]


def inference_precision(lightning_precision_name: str) -> str:
    """The scoring precision matching a Lightning training precision ("32-true" → fp32, "bf16-mixed" → bf16)."""
    for prefix, precision in (("bf16", "bf16"), ("16", "fp16")):
        if str(lightning_precision_name).startswith(prefix):
            return precision
    return "fp32"


def recorded_precision(model_dir: str | Path) -> str | None:
    """The precision the training run of a run's `model/` folder tested it in, so `agiqa evaluate` gives the run's
    numbers: the run's metrics.json `precision`, else (runs from before it was recorded) its config.yaml
    `trainer.precision`; None for a folder that is not a run's model/ or a run that says nothing."""
    model_dir = Path(model_dir).resolve()
    run = model_dir.parent
    if model_dir.name != "model" or not (run / "config.yaml").is_file():
        return None
    try:
        recorded = json.loads((run / "metrics.json").read_text()).get("precision")
        if recorded in ("fp32", "bf16", "fp16"):
            return recorded
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import yaml

        trained = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("trainer", {}).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    return inference_precision(trained) if trained and trained != "auto" else None
