"""Train → pick the best epoch on validation → test → write reports. Shared by `agiqa train|evaluate|reproduce|demo`."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import sys
import time
import types
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from agiqa._files import torch_load_weights_only, untrusted_file_error
from agiqa.models._card import MOS_DISTRIBUTION_FILE, write_model_card, write_mos_distribution
from agiqa.models._config import UnknownConfigFieldError, without_weight_sources
from agiqa.models._registry import UnknownModelError
from agiqa.runtime import resolve_device, resolve_precision
from agiqa.scoring.inference import inference_context, prepare_model
from agiqa.training.config import DataSection, TrainConfig
from agiqa.errors import ConfigError, DatasetValidationError
from agiqa.models._factory import model_targets, saved_config
from agiqa.training.datamodule import AGIQADataModule, check_data_root, load_frame, multi_targets, split_frame
from agiqa.models import model_scores, needs_semantic, saved_architecture
from agiqa.training.module import IQAModule
from agiqa.training.outputs import predictions_frame, training_curves_plot, write_evaluation

_logger = logging.getLogger(__name__)

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def default_cache_dir() -> str:
    return os.environ.get("AGIQA_CACHE_DIR", str(Path.home() / ".cache" / "agiqa"))


def build_module(config: TrainConfig) -> IQAModule:
    """The module of `config`; a multi-target `data.target` gives the model one output per target."""
    optim = config.optim
    targets = multi_targets(config.data)
    model_kwargs = dict(config.model.kwargs, **({"targets": targets} if targets else {}))
    check_target_weights(optim.target_weights, targets)
    try:
        return IQAModule(model=config.model.name, model_kwargs=model_kwargs,
                         pretrained=config.model.pretrained, lr=optim.lr, weight_decay=optim.weight_decay,
                         t_max=optim.t_max, eta_min=optim.eta_min, loss=optim.loss,
                         **({"target_weights": dict(optim.target_weights)} if targets else {}))
    except UnknownModelError as err:
        hint = (f"did you mean {', '.join(err.close)}?" if err.close
                else "`agiqa models list` shows the registered models")
        raise ConfigError(f"model.name {config.model.name!r} is not a registered model: {hint}") from err
    except ValueError as err:  # a config the model's own checks refuse (patch size, hooked blocks, no expert, ...)
        raise ConfigError(f"{config.model.name} cannot be built from model.kwargs {dict(config.model.kwargs)}: "
                          f"{err}") from err
    except TypeError as err:
        if targets and "targets" in str(err):
            raise ConfigError(f"data.target asks for {len(targets)} targets ({', '.join(targets)}) but model "
                              f"{config.model.name} has a single output; multi-target models: ma_agiqa, "
                              "moe_agiqa (and their test_ variants)") from err
        if isinstance(err, UnknownConfigFieldError):
            raise ConfigError(f"{config.model.name} ({err.config_name}) has no config field "
                              f"{err.describe(prefix='model.kwargs.')}") from err
        raise


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


def with_image_cache(data: DataSection) -> DataSection:
    """A copy of `data` whose decoded-image cache defaults to $AGIQA_CACHE_DIR/images (~/.cache/agiqa/images)."""
    cache = data.image_cache or str(Path(default_cache_dir()) / "images")
    return dataclasses.replace(copy.deepcopy(data), image_cache=cache)


def build_datamodule(config: TrainConfig, model: torch.nn.Module) -> AGIQADataModule:
    data = with_image_cache(config.data)
    test_config = test_data(config, data)
    select_on_test = config.official_quirks and getattr(model, "official_selects_on_test", False)
    return AGIQADataModule(data, needs_semantic=needs_semantic(model), official_quirks=config.official_quirks,
                           seed=config.trainer.seed, test_config=test_config,
                           test_subset="all" if config.test.subset == "all" else "split",
                           select_on_test=select_on_test, **processing(model))


def test_data(config: TrainConfig, data: DataSection) -> DataSection | None:
    """The cross-dataset test set's data section (`test.dataset`), or None to test on `data`'s own split."""
    if not config.test.dataset:
        return None
    # A multi-target run is tested on the same targets unless test.target names others.
    target = config.test.target or (data.target if multi_targets(data) else None)
    return dataclasses.replace(data, dataset=config.test.dataset, root=config.test.root or data.root,
                               target=target, csv=None, split_file=None)


def processing(model: torch.nn.Module) -> dict:
    """Datamodule arguments of models with their own preprocessing (MoE-AGIQA: crops + prompt image + tokens) or
    without pixel input (a zero-shot VLM reads semantic features only)."""
    if hasattr(model, "processor"):
        return {"processor": model.processor(), "train_crops": model.config.train_crops,
                "test_crops": model.config.test_crops}
    return {} if "image" in getattr(model, "input_names", ("image",)) else {"needs_images": False}


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


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Fit with validation-based model selection, then test the best epoch; returns the test metrics.

    Writes to `config.output_dir`: config.yaml, split.json, checkpoints/{best,last}.ckpt (resume),
    val_predictions.csv (the last validation, gathered from every process),
    model/ (best weights as safetensors + config.json, mos_distribution.json with the training MOS quantiles, and
    README.md, the model card), predictions.csv, metrics.json (with the `precision` the test ran in, which
    `agiqa evaluate` of model/ uses), report.md, scatter.png.

    Every mistake a config can hold (data root, split sizes, model name and fields, features, image size, trainer
    settings) is reported before the output folder is written. `progress`: a progress bar on a terminal, one line
    per epoch otherwise (logs of CI or cluster jobs); False for neither.
    """
    config.check()
    for data in (config.data, test_data(config, config.data)):
        if data is not None:
            check_data_root(data)  # a wrong root is reported before any model (or its weights) is loaded
    check_split_sizes(config)
    check_semantic_features_early(config)
    out = Path(config.output_dir)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = build_module(config)
    check_model_inputs(config, module.model)
    trainer = _trainer(config, out, progress)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(config, module.model)
    if module.uses_semantic and "semantic_dim" not in config.model.kwargs:
        module = _match_semantic_dim(config, module, datamodule)
    if hasattr(module.model.config, "label_scale") and "label_scale" not in config.model.kwargs:
        _match_label_scale(config, module, datamodule)
    config.to_yaml(out / "config.yaml")
    last = out / "checkpoints" / "last.ckpt"
    try:
        with warnings.catch_warnings():
            # Lightning 2.6 flattens every dataloader with torch's deprecated `LeafSpec()` (torch >= 2.10), which
            # warns once per fit; nothing here can change that call.
            warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume and last.is_file() else None,
                        weights_only=True)
    except pickle.UnpicklingError as err:  # the resumed checkpoint holds more than weights: refused, nothing ran
        raise untrusted_file_error(last, err) from err
    if not trainer.is_global_zero:
        return {}
    if module.last_val_table is not None:
        num_targets = len(module.targets)
        rows = module.last_val_table[:, 0].astype(int)
        predictions = module.last_val_table[:, 1:1 + num_targets]
        predictions = predictions[:, 0] if num_targets == 1 else predictions
        predictions_frame(datamodule.fit_data.frame, rows, predictions).assign(row=rows).to_csv(
            out / "val_predictions.csv", index=False)
    best = out / "checkpoints" / "best.ckpt"
    module = load_trained_module(best if best.is_file() else last)
    module.model.save_pretrained(out / "model")
    datamodule.setup("test")
    datamodule.fit_data.split.to_json(out / "split.json")
    # Tested in the precision it was trained in: a 32-true run reports fp32 metrics even on a bf16-capable CPU; the
    # precision goes into metrics.json, where `agiqa evaluate` of model/ finds it and scores the same way.
    precision = inference_precision(trainer.precision)
    write_mos_distribution(out / "model", training_mos_distribution(datamodule, training_targets(datamodule)))
    metrics = evaluate_module(module.model, datamodule, out,
                              title=f"{config.model.name} on {datamodule.test_data.frame.attrs.get('dataset', '')}",
                              precision=precision)
    metrics["best_checkpoint"] = str(best if best.is_file() else last)
    metrics["epoch_selected_on"] = "test (--official-quirks)" if datamodule.select_on_test else "val"
    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if logs:  # this session's log (one folder per session; --resume starts a new one)
        training_curves_plot(logs[-1], out / "training_curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(module.model, out / "model", training_record(config, datamodule), metrics)
    return metrics


def training_record(config: TrainConfig, datamodule: AGIQADataModule) -> dict:
    """What the model card says of the training: data, target, split and its sizes, recipe, the training MOS
    distribution, where the run is."""
    split = datamodule.fit_data.split
    data = config.data
    record = {"dataset": f"{data.dataset} (root {data.root})" + (f", labels {data.csv}" if data.csv else ""),
              "target": _target_text(data.target),
              "split": f"{split.method}, seed {split.seed}: {len(split.train)} train / {len(split.val)} validation / "
                       f"{len(split.test)} test images (indices in the run's split.json)",
              "recipe": f"{config.trainer.max_epochs} epochs, batch {data.batch_size}, lr {config.optim.lr}, "
                        f"seed {config.trainer.seed}",
              "best epoch chosen on": "the test split (--official-quirks)" if datamodule.select_on_test
              else "the validation split",
              "run": str(Path(config.output_dir).resolve())}
    distribution = training_mos_distribution(datamodule, training_targets(datamodule))
    for target, part in distribution.get("per_target", {distribution["target"]: distribution}).items():
        values = part["mos_quantiles"]
        record[f"training MOS ({target})"] = (
            f"min {values[0]:.4g}, quartiles {values[25]:.4g} / {values[50]:.4g} / {values[75]:.4g}, max "
            f"{values[100]:.4g} (all 101 percentiles in {MOS_DISTRIBUTION_FILE})")
    return record


def training_targets(datamodule: AGIQADataModule) -> list[str]:
    """The target names of the training data, in the model's output order (one name for a single target)."""
    frame = datamodule.fit_data.frame
    return list(frame.attrs.get("targets") or [frame.attrs.get("target") or "quality"])


QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)  # 0 %, 1 %, ..., 100 %


def training_mos_distribution(datamodule: AGIQADataModule, targets: list[str]) -> dict:
    """The training part's MOS as `write_mos_distribution` saves it: `mos_quantiles` (101 quantiles, 0..100 %,
    numpy's default linear interpolation, of the label file's values) and `mos_range` ([min, max]) of the first
    target, the dataset, the number of training images and the target; a multi-target model adds `per_target`
    ({target: {"mos_quantiles", "mos_range"}} for every target)."""
    data = datamodule.fit_data
    columns = [f"mos_{target}" for target in targets] if data.frame.attrs.get("targets") else ["mos"]
    mos = data.frame[columns].to_numpy(dtype=np.float64)[list(data.split.train)]
    parts = {target: {"mos_quantiles": [float(v) for v in np.quantile(mos[:, index], QUANTILE_LEVELS)],
                      "mos_range": [float(mos[:, index].min()), float(mos[:, index].max())]}
             for index, target in enumerate(targets)}
    first = targets[0]
    distribution = {**parts[first], "dataset": data.frame.attrs.get("dataset") or datamodule.config.dataset,
                    "n_images": int(len(mos)), "target": first}
    if len(targets) > 1:
        distribution["per_target"] = parts
    return distribution


def _target_text(target: str | list | None) -> str:
    if target is None:
        return "the dataset's default"
    return target if isinstance(target, str) else ", ".join(target)


def _match_semantic_dim(config: TrainConfig, module: IQAModule, datamodule: AGIQADataModule) -> IQAModule:
    """Size the semantic experts to the cached features (e.g. 4096 for mPLUG-Owl2, 1536 for Qwen2-VL-2B; features
    with level probabilities end with 5 more values, read by the `levels` expert)."""
    from agiqa.semantic.levels import LEVEL_COUNT

    datamodule.prepare_data()
    datamodule.setup("fit")
    levels = LEVEL_COUNT if getattr(module.model.config, "level_prompts", ()) else 0
    dim = int(datamodule.fit_data.semantic.shape[-1]) - levels
    config.model.kwargs["semantic_dim"] = dim
    if dim == module.model.config.semantic_dim:
        return module
    _logger.info("Semantic features are %d-d: building the experts for that width", dim)
    return build_module(config)


def _match_label_scale(config: TrainConfig, module: IQAModule, datamodule: AGIQADataModule) -> None:
    """Labels as MOS / max MOS of the dataset (all rows, as the official MoE-AGIQA code); the scale is stored in the
    model's config (and the run's config.yaml) so predictions come back on the MOS scale."""
    datamodule.setup("fit")
    scale = float(datamodule.fit_data.mos.max())
    if not scale > 0:
        raise ValueError(f"label_scale = max MOS must be positive, got {scale}; set model.kwargs.label_scale")
    config.model.kwargs["label_scale"] = scale
    module.model.config.label_scale = scale
    module.hparams.model_kwargs["label_scale"] = scale
    _logger.info("Training on MOS / %.4g (max MOS of the data set)", scale)


LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _trainer(config: TrainConfig, out: Path, progress: bool) -> L.Trainer:
    """The Lightning trainer of `config`; settings it refuses (no GPU for `accelerator: gpu`, an unknown strategy)
    are a `ConfigError` naming the trainer section. Nothing is written yet."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    t = config.trainer
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val/score", mode="max",
                           enable_version_counter=False)
    # Written after every epoch, improved or not, so `--resume` always continues from the latest state.
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    bar = progress and _is_terminal(sys.stdout)
    callbacks = [best, last] + ([EpochLines()] if progress and not bar else [])
    try:
        return L.Trainer(
            max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            strategy=t.strategy, precision=lightning_precision(t.precision, t.accelerator), callbacks=callbacks,
            logger=CSVLogger(out, name="logs"), default_root_dir=out, enable_progress_bar=bar,
            limit_train_batches=t.limit_train_batches, log_every_n_steps=t.log_every_n_steps,
            deterministic=t.deterministic, num_sanity_val_steps=0, enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"the trainer section cannot run here (accelerator={t.accelerator}, devices={t.devices}, "
                          f"strategy={t.strategy}, precision={t.precision}): {reason}") from err


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class EpochLines(L.Callback):
    """One line per epoch on stdout, for logs where a progress bar cannot draw (CI, nohup, cluster jobs):
    `epoch 3/15  train loss 0.4127  val SRCC 0.8123  elapsed 1m 12s  ETA 4m 48s` (rank 0 only)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.started = 0.0
        self.first_epoch = 0
        self.loss_sum, self.loss_count = 0.0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()
        self.first_epoch = trainer.current_epoch  # > 0 when resumed: the ETA counts this session's epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.loss_sum, self.loss_count = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss_sum += float(loss.detach())
            self.loss_count += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self.started
        done = epoch - self.first_epoch
        remaining = (trainer.max_epochs - epoch) * elapsed / max(done, 1)
        loss = f"{self.loss_sum / self.loss_count:.4f}" if self.loss_count else "n/a"
        srcc = trainer.callback_metrics.get("val/srcc")
        val = f"{float(srcc):.4f}" if srcc is not None else "n/a"
        print(f"epoch {epoch}/{trainer.max_epochs}  train loss {loss}  val SRCC {val}  "
              f"elapsed {_duration(elapsed)}  ETA {_duration(remaining)}", file=self.stream or sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def check_split_sizes(config: TrainConfig) -> None:
    """Refuse a split a run cannot train on, before any model is built: no full training batch (the incomplete
    last batch is dropped, as the official code) or no image to choose the best epoch on."""
    data = config.data
    split = split_frame(data, load_frame(data))
    train_images = len(split.train)
    if train_images < data.batch_size:
        raise DatasetValidationError(
            f"the training part of the split has {train_images} images, fewer than one batch (data.batch_size = "
            f"{data.batch_size}; incomplete batches are dropped): use more data (agiqa synth --n) or a smaller "
            "--set data.batch_size=N")
    if not split.val and not (config.official_quirks and config.test.dataset is None):
        raise DatasetValidationError(
            f"the validation part of the split is empty ({len(split.train)} train / 0 validation / "
            f"{len(split.test)} test images): the best epoch is chosen on it; use more data or another split")


def check_model_inputs(config: TrainConfig, model: torch.nn.Module) -> None:
    """The data a model needs, checked against the config before anything runs: semantic features for models
    with semantic experts (the error says how to get them, or how to train without them), and an image size the
    model takes."""
    features = config.data.features
    if needs_semantic(model) and not features.cache:
        raise ConfigError(semantic_features_message(config.model.name, model.config))
    check_image_size(model, config.data.image_size, "data.image_size")


MA_AGIQA_ABLATION = '--set "model.kwargs.semantic_experts=[]"'


def check_semantic_features_early(config: TrainConfig) -> None:
    """An MA-AGIQA built from scratch with semantic experts (the class default) but no feature cache, told before
    its backbone is built (the paper configs would download the ImageNet ViT first); `check_model_inputs` checks
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


def load_trained_module(checkpoint: str | Path) -> IQAModule:
    """Rebuild an `IQAModule` from a Lightning checkpoint without fetching any backbone weights."""
    state = torch_load_weights_only(checkpoint)
    hparams = dict(state["hyper_parameters"])
    hparams["pretrained"] = False
    hparams["model_kwargs"] = without_weight_sources(hparams.get("model_kwargs") or {})
    module = IQAModule(**hparams)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def predict_rows(model: torch.nn.Module, loader, device: str | torch.device | None = None,
                 precision: str = "auto") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rows, columns) for every batch of an evaluation loader: `prediction` ((n,), or (n, T) for a multi-target
    model), and for models with experts `gate_<expert>` / `expert_<expert>` from the same forward pass
    (`model.explain`, as `agiqa score` does)."""
    from agiqa.models._factory import expert_names, explanation_columns

    device = resolve_device(device)
    model = prepare_model(model, device)
    experts = expert_names(model)
    targets = model_targets(model)
    rows, parts = [], []
    for batch in loader:
        inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
        with inference_context(precision, device):
            if experts:
                part = prediction_column(explanation_columns(model, inputs, experts), targets)
            else:
                part = {"prediction": model_scores(model, inputs)}
        rows.append(batch["row"].numpy())
        parts.append({name: value.float().cpu().numpy() for name, value in part.items()})
    return np.concatenate(rows), {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def prediction_column(columns: dict, targets: list[str]) -> dict:
    """`explanation_columns` with the score(s) as one `prediction` column: `score` for one target, the
    `score_<target>` columns stacked to (B, T) for several."""
    columns = dict(columns)
    score = columns.pop("score")
    if len(targets) > 1:
        score = torch.stack([columns.pop(f"score_{target}") for target in targets], dim=1)
    return {"prediction": score, **columns}


def evaluate_module(model: torch.nn.Module, datamodule: AGIQADataModule, out_dir: str | Path, title: str = "",
                    device: str | None = None, precision: str = "auto") -> dict:
    """Score the datamodule's test part and write predictions, metrics, report and plot into `out_dir`."""
    rows, columns = predict_rows(model, datamodule.test_dataloader(), device, precision)
    frame = datamodule.test_data.frame
    predictions = predictions_frame(frame, rows, columns.pop("prediction"), columns)
    metrics = write_evaluation(predictions, out_dir, title=title)
    metrics["targets"] = list(frame.attrs.get("targets") or [frame.attrs.get("target")])  # what `mos` measures
    metrics["n_scored"] = int(len(rows))
    metrics["n_test"] = int(len(datamodule.test_data.split.test))
    metrics["precision"] = resolve_precision(precision, resolve_device(device))  # what the scores were computed in
    return metrics


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


def evaluate(model_dir: str | Path, data: DataSection, out_dir: str | Path, subset: str = "split",
             device: str | None = None, precision: str = "auto") -> dict:
    """Evaluate a saved model directory (`save_pretrained` output or a run's `model/`) on a dataset, or a zero-shot
    VLM (`vlm:<id>`, `vlm-alignment:<id>`: its level features are extracted into `data.features.cache`, default
    OUT/features). `precision="auto"` scores a run's `model/` in the precision the run tested it in
    (`recorded_precision`), so the numbers are the run's own."""
    from agiqa.models import create_model
    from agiqa.models.vlm_levels import is_vlm_spec, model_from_spec

    if is_vlm_spec(model_dir):
        model = model_from_spec(str(model_dir), trust_remote_code=data.features.trust_remote_code)
        data = with_level_features(data, model, out_dir)
    else:
        model = create_model(saved_architecture(model_dir), pretrained=str(model_dir))
        if needs_semantic(model) and not data.features.cache:
            raise ConfigError(f"{model_dir} has semantic experts and needs features of a VLM: pass --features DIR "
                              "(a feature cache from `agiqa features extract`, e.g. the one it was trained with) "
                              "and/or --encoder VLM to extract the missing ones into it")
        check_image_size(model, data.image_size, "--image-size")
        if precision == "auto":
            precision = recorded_precision(model_dir) or precision
    data = with_image_cache(with_model_targets(data, model_targets(model)))
    datamodule = AGIQADataModule(data, needs_semantic=needs_semantic(model), test_subset=subset, **processing(model))
    datamodule.prepare_data()
    datamodule.setup("test")
    metrics = evaluate_module(model, datamodule, out_dir, title=f"{model_dir} on {data.dataset}", device=device,
                              precision=precision)
    metrics["model_dir"] = str(model_dir) if is_vlm_spec(model_dir) else str(Path(model_dir).resolve())  # heat maps
    datamodule.test_data.split.to_json(Path(out_dir) / "split.json")
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


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
    asked = multi_targets(data)
    if asked != targets:
        raise ConfigError(f"data.target {data.target!r} does not match the model's targets: {', '.join(targets)}")
    return data


def model_image_size(model_dir: str | Path) -> int:
    """The input size a saved model was built for (its config's img_size)."""
    return int(saved_config(model_dir).get("img_size", 224))
