"""Train → pick the best epoch on validation → test → write reports. Shared by `agiqa train|evaluate|reproduce|demo`."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from agiqa._files import torch_load_weights_only, untrusted_file_error
from agiqa.models._card import write_model_card
from agiqa.models._config import without_weight_sources
from agiqa.runtime import resolve_device, resolve_precision
from agiqa.scoring.inference import inference_context, prepare_model
from agiqa.training.config import DataSection, TrainConfig
from agiqa.errors import ConfigError
from agiqa.models._factory import model_targets
from agiqa.training.datamodule import AGIQADataModule, check_data_root, multi_targets
from agiqa.models import model_scores, needs_semantic, saved_architecture
from agiqa.training.module import IQAModule
from agiqa.training.reports import predictions_frame, training_curves_plot, write_evaluation

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
    except TypeError as err:
        if targets and "targets" in str(err):
            raise ConfigError(f"data.target asks for {len(targets)} targets ({', '.join(targets)}) but model "
                              f"{config.model.name} has a single output; multi-target models: ma_agiqa, "
                              "moe_agiqa (and their test_ variants)") from err
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
    model/ (best weights as safetensors + config.json), predictions.csv, metrics.json, report.md, scatter.png.
    """
    for data in (config.data, test_data(config, config.data)):
        if data is not None:
            check_data_root(data)  # a wrong root is reported before any model (or its weights) is loaded
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = build_module(config)
    datamodule = build_datamodule(config, module.model)
    if module.uses_semantic and "semantic_dim" not in config.model.kwargs:
        module = _match_semantic_dim(config, module, datamodule)
    if hasattr(module.model.config, "label_scale") and "label_scale" not in config.model.kwargs:
        _match_label_scale(config, module, datamodule)
    config.to_yaml(out / "config.yaml")
    trainer = _trainer(config, out, progress)
    last = out / "checkpoints" / "last.ckpt"
    try:
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
    # Tested in the precision it was trained in: a 32-true run reports fp32 metrics even on a bf16-capable CPU.
    metrics = evaluate_module(module.model, datamodule, out,
                              title=f"{config.model.name} on {datamodule.test_data.frame.attrs.get('dataset', '')}",
                              precision=inference_precision(trainer.precision))
    metrics["best_checkpoint"] = str(best if best.is_file() else last)
    metrics["epoch_selected_on"] = "test (--official-quirks)" if datamodule.select_on_test else "val"
    logs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if logs:  # this session's log (one folder per session; --resume starts a new one)
        training_curves_plot(logs[-1], out / "training_curves.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(module.model, out / "model", training_record(config, datamodule), metrics)
    return metrics


def training_record(config: TrainConfig, datamodule: AGIQADataModule) -> dict:
    """What the model card says of the training: data, target, split and its sizes, recipe, where the run is."""
    split = datamodule.fit_data.split
    data = config.data
    return {"dataset": f"{data.dataset} (root {data.root})" + (f", labels {data.csv}" if data.csv else ""),
            "target": _target_text(data.target),
            "split": f"{split.method}, seed {split.seed}: {len(split.train)} train / {len(split.val)} validation / "
                     f"{len(split.test)} test images (indices in the run's split.json)",
            "recipe": f"{config.trainer.max_epochs} epochs, batch {data.batch_size}, lr {config.optim.lr}, "
                      f"seed {config.trainer.seed}",
            "best epoch chosen on": "the test split (--official-quirks)" if datamodule.select_on_test
            else "the validation split",
            "run": str(Path(config.output_dir).resolve())}


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


def _trainer(config: TrainConfig, out: Path, progress: bool) -> L.Trainer:
    t = config.trainer
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val/score", mode="max",
                           enable_version_counter=False)
    # Written after every epoch, improved or not, so `--resume` always continues from the latest state.
    last = ModelCheckpoint(dirpath=out / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=lightning_precision(t.precision, t.accelerator), callbacks=[best, last],
        logger=CSVLogger(out, name="logs"), default_root_dir=out, enable_progress_bar=progress,
        limit_train_batches=t.limit_train_batches, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, num_sanity_val_steps=0, enable_model_summary=False,
    )


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
    return metrics


def evaluate(model_dir: str | Path, data: DataSection, out_dir: str | Path, subset: str = "split",
             device: str | None = None, precision: str = "auto") -> dict:
    """Evaluate a saved model directory (`save_pretrained` output or a run's `model/`) on a dataset, or a zero-shot
    VLM (`vlm:<id>`, `vlm-alignment:<id>`: its level features are extracted into `data.features.cache`, default
    OUT/features)."""
    from agiqa.models import create_model
    from agiqa.models.vlm_levels import is_vlm_spec, model_from_spec

    if is_vlm_spec(model_dir):
        model = model_from_spec(str(model_dir), trust_remote_code=data.features.trust_remote_code)
        data = with_level_features(data, model, out_dir)
    else:
        model = create_model(saved_architecture(model_dir), pretrained=str(model_dir))
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
    return int(json.loads((Path(model_dir) / "config.json").read_text()).get("img_size", 224))
