"""Train → pick the best epoch on validation → test → write what a run writes. Shared by `agiqa
train|evaluate|reproduce|demo`, each reading an `Experiment`: its config resolved and checked once
(`training.resolve`)."""
from __future__ import annotations

import json
import logging
import pickle
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from agiqa._files import torch_load_weights_only, untrusted_file_error
from agiqa.errors import ConfigError
from agiqa.models import model_scores, saved_architecture
from agiqa.models._card import MOS_DISTRIBUTION_FILE, write_model_card, write_mos_distribution
from agiqa.models._config import UnknownConfigFieldError, without_weight_sources
from agiqa.models._factory import model_targets, saved_config
from agiqa.models._registry import UnknownModelError
from agiqa.scoring.inference import inference_context, prepare_model
from agiqa.training.config import DataSection, TrainConfig
from agiqa.training.datamodule import AGIQADataModule
from agiqa.training.module import IQAModule
from agiqa.training.outputs import predictions_frame, training_curves_plot, write_evaluation
from agiqa.training.resolve import Experiment, model_inputs, processing, resolve_evaluation, resolve_experiment

_logger = logging.getLogger(__name__)


def build_module(experiment: Experiment) -> IQAModule:
    """The module of the experiment's model: a multi-target run gives the model one output per target, and a model
    trained on MOS / label_scale (MoE-AGIQA) gets the data's (`ResolvedData.label_scale`) unless the config sets one."""
    config = experiment.config
    module = _module(config, experiment.data.targets)
    if hasattr(module.model.config, "label_scale") and "label_scale" not in config.model.kwargs:
        scale_labels(module, experiment)
    return module


def _module(config: TrainConfig, targets: list[str] | None) -> IQAModule:
    """`IQAModule` of the config's model and recipe; what the model refuses is a `ConfigError` naming the key."""
    optim = config.optim
    model_kwargs = dict(config.model.kwargs, **({"targets": targets} if targets else {}))
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


def scale_labels(module: IQAModule, experiment: Experiment) -> None:
    """Labels as MOS / max MOS of the dataset (all rows, as the official MoE-AGIQA code); the scale is stored in the
    model's config (and the run's config.yaml) so predictions come back on the MOS scale."""
    scale = experiment.data.label_scale
    if not scale > 0:
        raise ValueError(f"label_scale = max MOS must be positive, got {scale}; set model.kwargs.label_scale")
    experiment.config.model.kwargs["label_scale"] = scale
    module.model.config.label_scale = scale
    module.hparams.model_kwargs["label_scale"] = scale
    _logger.info("Training on MOS / %.4g (max MOS of the data set)", scale)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Fit with validation-based model selection, then test the best epoch; returns the test metrics.

    Writes to `config.output_dir`: config.yaml, split.json, checkpoints/{best,last}.ckpt (resume),
    val_predictions.csv (the last validation, gathered from every process),
    model/ (best weights as safetensors + config.json, mos_distribution.json with the training MOS quantiles, and
    README.md, the model card), predictions.csv, metrics.json (with the `precision` the test ran in, which
    `agiqa evaluate` of model/ uses), report.md, scatter.png.

    Every mistake a config can hold (data root, split sizes, model name and fields, features, image size, trainer
    settings) is reported before the output folder is written: the config is resolved and checked once
    (`resolve_experiment`), then trained (`train_experiment`). `progress`: a progress bar on a terminal, one line
    per epoch otherwise (logs of CI or cluster jobs); False for neither.
    """
    experiment = resolve_experiment(config)
    return train_experiment(experiment, resume, progress)


def train_experiment(experiment: Experiment, resume: bool = False, progress: bool = True) -> dict:
    """`train` of an experiment resolved already (`resolve_experiment`)."""
    config = experiment.config
    out = Path(config.output_dir)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = build_module(experiment)
    inputs = model_inputs(experiment, module.model)
    trainer = _trainer(experiment, out, progress)
    out.mkdir(parents=True, exist_ok=True)
    select_on_test = config.official_quirks and getattr(module.model, "official_selects_on_test", False)
    datamodule = AGIQADataModule(experiment, select_on_test=select_on_test, **inputs)
    if inputs["needs_semantic"] and "semantic_dim" not in config.model.kwargs:
        module = sized_to_features(experiment, module, datamodule)
    config.to_yaml(out / "config.yaml")
    _fit(trainer, module, datamodule, out / "checkpoints" / "last.ckpt" if resume else None)
    if not trainer.is_global_zero:
        return {}
    if module.last_val_table is not None:
        write_val_predictions(module, experiment, out / "val_predictions.csv")
    return test_best_epoch(experiment, datamodule, out)


LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def _fit(trainer: L.Trainer, module: IQAModule, datamodule: AGIQADataModule, resume_from: Path | None) -> None:
    """`trainer.fit`, continued from `resume_from` (last.ckpt of `--resume`) where it exists; a checkpoint that holds
    more than weights is refused before anything runs."""
    resumed = resume_from is not None and resume_from.is_file()
    try:
        with warnings.catch_warnings():
            # Lightning 2.6 flattens every dataloader with torch's deprecated `LeafSpec()` (torch >= 2.10), which
            # warns once per fit; nothing here can change that call.
            warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resumed else None,
                        weights_only=True)
    except pickle.UnpicklingError as err:  # the resumed checkpoint holds more than weights: refused, nothing ran
        raise untrusted_file_error(resume_from, err) from err


def write_val_predictions(module: IQAModule, experiment: Experiment, path: Path) -> None:
    """The last validation's predictions (gathered from every process), one row per validation image."""
    num_targets = len(module.targets)
    rows = module.last_val_table[:, 0].astype(int)
    predictions = module.last_val_table[:, 1:1 + num_targets]
    predictions = predictions[:, 0] if num_targets == 1 else predictions
    predictions_frame(experiment.data.frame, rows, predictions).assign(row=rows).to_csv(path, index=False)


def test_best_epoch(experiment: Experiment, datamodule: AGIQADataModule, out: Path) -> dict:
    """Test the best checkpoint (the last where none was chosen) in the precision it was trained in, and write the
    model, its card and training MOS distribution, the split, predictions, metrics, report and figures."""
    best = out / "checkpoints" / "best.ckpt"
    chosen = best if best.is_file() else out / "checkpoints" / "last.ckpt"
    module = load_trained_module(chosen)
    module.model.save_pretrained(out / "model")
    datamodule.setup("test")
    experiment.data.split.to_json(out / "split.json")
    distribution = training_mos_distribution(datamodule, experiment.data.target_names)
    write_mos_distribution(out / "model", distribution)
    # Tested in the precision it was trained in: a 32-true run reports fp32 metrics even on a bf16-capable CPU; the
    # precision goes into metrics.json, where `agiqa evaluate` of model/ finds it and scores the same way.
    title = f"{experiment.config.model.name} on {experiment.test.frame.attrs.get('dataset', '')}"
    metrics = evaluate_module(module.model, datamodule, out, experiment.test_device, experiment.test_precision, title)
    metrics["best_checkpoint"] = str(chosen)
    metrics["epoch_selected_on"] = "test (--official-quirks)" if datamodule.select_on_test else "val"
    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if logs:  # this session's log (one folder per session; --resume starts a new one)
        training_curves_plot(logs[-1], out / "training_curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    record = training_record(experiment, datamodule.select_on_test, distribution)
    write_model_card(module.model, out / "model", record, metrics)
    return metrics


def training_record(experiment: Experiment, selected_on_test: bool, distribution: dict) -> dict:
    """What the model card says of the training: data, target, split and its sizes, recipe, the training MOS
    `distribution` (`training_mos_distribution`), where the run is."""
    config, split, data = experiment.config, experiment.data.split, experiment.data.section
    record = {"dataset": f"{data.dataset} (root {data.root})" + (f", labels {data.csv}" if data.csv else ""),
              "target": _target_text(data.target),
              "split": f"{split.method}, seed {split.seed}: {len(split.train)} train / {len(split.val)} validation / "
                       f"{len(split.test)} test images (indices in the run's split.json)",
              "recipe": f"{config.trainer.max_epochs} epochs, batch {data.batch_size}, lr {config.optim.lr}, "
                        f"seed {config.trainer.seed}",
              "best epoch chosen on": "the test split (--official-quirks)" if selected_on_test
              else "the validation split",
              "run": str(Path(config.output_dir).resolve())}
    for target, part in distribution.get("per_target", {distribution["target"]: distribution}).items():
        values = part["mos_quantiles"]
        record[f"training MOS ({target})"] = (
            f"min {values[0]:.4g}, quartiles {values[25]:.4g} / {values[50]:.4g} / {values[75]:.4g}, max "
            f"{values[100]:.4g} (all 101 percentiles in {MOS_DISTRIBUTION_FILE})")
    return record


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


def sized_to_features(experiment: Experiment, module: IQAModule, datamodule: AGIQADataModule) -> IQAModule:
    """Size the semantic experts to the cached features (e.g. 4096 for mPLUG-Owl2, 1536 for Qwen2-VL-2B; features
    with level probabilities end with 5 more values, read by the `levels` expert): the width goes into the run's
    config (config.yaml), and the module is built again where its experts are of another width."""
    from agiqa.semantic.levels import LEVEL_COUNT

    datamodule.prepare_data()
    datamodule.setup("fit")
    levels = LEVEL_COUNT if getattr(module.model.config, "level_prompts", ()) else 0
    dim = int(datamodule.fit_data.semantic.shape[-1]) - levels
    experiment.config.model.kwargs["semantic_dim"] = dim
    if dim == module.model.config.semantic_dim:
        return module
    _logger.info("Semantic features are %d-d: building the experts for that width", dim)
    return build_module(experiment)


def _trainer(experiment: Experiment, out: Path, progress: bool) -> L.Trainer:
    """The Lightning trainer of the experiment; settings it refuses (no GPU for `accelerator: gpu`, an unknown strategy)
    are a `ConfigError` naming the trainer section. Nothing is written yet."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    t = experiment.config.trainer
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val/score", mode="max",
                           enable_version_counter=False)
    # Written after every epoch, improved or not, so `--resume` always continues from the latest state.
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    bar = progress and _is_terminal(sys.stdout)
    callbacks = [best, last] + ([EpochLines()] if progress and not bar else [])
    try:
        return L.Trainer(
            max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            strategy=t.strategy, precision=experiment.trainer_precision, callbacks=callbacks,
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


def load_trained_module(checkpoint: str | Path) -> IQAModule:
    """Rebuild an `IQAModule` from a Lightning checkpoint without fetching any backbone weights."""
    state = torch_load_weights_only(checkpoint)
    hparams = dict(state["hyper_parameters"])
    hparams["pretrained"] = False
    hparams["model_kwargs"] = without_weight_sources(hparams.get("model_kwargs") or {})
    module = IQAModule(**hparams)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def predict_rows(model: torch.nn.Module, loader, device: torch.device,
                 precision: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rows, columns) for every batch of an evaluation loader, scored on `device` in `precision`: `prediction`
    ((n,), or (n, T) for a multi-target model), and for models with experts `gate_<expert>` / `expert_<expert>` from
    the same forward pass (`model.explain`, as `agiqa score` does)."""
    from agiqa.models._factory import expert_names, explanation_columns

    model = prepare_model(model, device)
    experts = expert_names(model)
    targets = model_targets(model)
    rows, parts = [], []
    with inference_context(precision, device):
        for batch in loader:
            inputs = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
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


def evaluate_module(model: torch.nn.Module, datamodule: AGIQADataModule, out_dir: str | Path, device: torch.device,
                    precision: str, title: str = "") -> dict:
    """Score the datamodule's test part on `device` in `precision` (as resolved: fp32, bf16 or fp16) and write
    predictions, metrics, report and plot into `out_dir`."""
    rows, columns = predict_rows(model, datamodule.test_dataloader(), device, precision)
    frame = datamodule.test_data.frame
    predictions = predictions_frame(frame, rows, columns.pop("prediction"), columns)
    metrics = write_evaluation(predictions, out_dir, title=title)
    metrics["targets"] = list(frame.attrs.get("targets") or [frame.attrs.get("target")])  # what `mos` measures
    metrics["n_scored"] = int(len(rows))
    metrics["n_test"] = int(len(datamodule.test_data.split.test))
    metrics["precision"] = precision  # what the scores were computed in
    return metrics


def evaluate(model_dir: str | Path, data: DataSection, out_dir: str | Path, subset: str = "split",
             device: str | None = None, precision: str = "auto") -> dict:
    """Evaluate a saved model directory (`save_pretrained` output or a run's `model/`) on a dataset, or a zero-shot
    VLM (`vlm:<id>`, `vlm-alignment:<id>`: its level features are extracted into `data.features.cache`, default
    OUT/features). `precision="auto"` scores a run's `model/` in the precision the run tested it in
    (`recorded_precision`), so the numbers are the run's own. `subset`: "split" scores the split's test part, "all"
    every row of the data (cross-dataset testing)."""
    model = evaluated_model(model_dir, data)
    experiment = resolve_evaluation(model_dir, model, data, out_dir, precision, device, subset)
    return evaluate_experiment(model_dir, model, experiment, out_dir)


def evaluated_model(model_dir: str | Path, data: DataSection) -> torch.nn.Module:
    """The model `evaluate` scores: a zero-shot VLM of a `vlm:` spec, else the saved model of the folder."""
    from agiqa.models import create_model
    from agiqa.models.vlm_levels import is_vlm_spec, model_from_spec

    if is_vlm_spec(model_dir):
        return model_from_spec(str(model_dir), trust_remote_code=data.features.trust_remote_code)
    return create_model(saved_architecture(model_dir), pretrained=str(model_dir))


def evaluate_experiment(model_dir: str | Path, model: torch.nn.Module, experiment: Experiment,
                        out_dir: str | Path) -> dict:
    """Score the experiment's test part with `model` (of `model_dir`) and write predictions, metrics, report, plot
    and the split into `out_dir`."""
    from agiqa.models.vlm_levels import is_vlm_spec

    datamodule = AGIQADataModule(experiment, **processing(model))
    datamodule.prepare_data()
    datamodule.setup("test")
    metrics = evaluate_module(model, datamodule, out_dir, experiment.test_device, experiment.test_precision,
                              title=f"{model_dir} on {experiment.data.section.dataset}")
    metrics["model_dir"] = str(model_dir) if is_vlm_spec(model_dir) else str(Path(model_dir).resolve())  # heat maps
    experiment.test.split.to_json(Path(out_dir) / "split.json")
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def model_image_size(model_dir: str | Path) -> int:
    """The input size a saved model was built for (its config's img_size)."""
    return int(saved_config(model_dir).get("img_size", 224))
