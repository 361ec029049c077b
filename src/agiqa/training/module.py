"""The training loop, once: loss, optimiser, schedule, validation metrics and prediction collection."""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch import nn

from agiqa.metrics import compute_metrics
from agiqa.models import create_model, model_scores, needs_semantic
from agiqa.models._factory import model_targets

LOSSES = {"mse": nn.MSELoss, "l1": nn.L1Loss, "smooth_l1": nn.SmoothL1Loss}


class IQAModule(L.LightningModule):
    """Wraps any registered quality model built by `create_model(model, **model_kwargs)`.

    Validation logs `val/srcc`, `val/plcc` (raw, as the official code) and `val/score` = their sum, which picks
    the best epoch; testing happens outside Lightning, once, on the chosen checkpoint (`training.run`).
    Models with a `label_scale` (MoE-AGIQA) are trained on MOS / label_scale, as their official code, and predict
    on the MOS scale; a model's `balance_loss` (MoE load balancing) is added with its configured weight.

    Multi-target models (`model_kwargs["targets"]`, two or more) predict (B, T) against (B, T) MOS: the loss is the
    sum of per-target losses times `target_weights` (default 1 each), and `val/srcc`, `val/plcc` are the means of
    the per-target correlations (also logged as `val/srcc_<target>`), so the best epoch is the best on average.
    """

    def __init__(self, model: str = "ma_agiqa", model_kwargs: dict | None = None, pretrained: str | bool = False,
                 lr: float = 1e-5, weight_decay: float = 1e-5, t_max: int = 50, eta_min: float = 0.0,
                 loss: str = "mse", target_weights: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, pretrained=pretrained, **(model_kwargs or {}))
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.criterion = LOSSES[loss]()
        self.targets = model_targets(self.model)
        self.loss_weights = [float((target_weights or {}).get(target, 1.0)) for target in self.targets]
        self._outputs: dict[str, list] = {}
        # [row, prediction(s), MOS(es)] of the latest validation, gathered: 1 + 2T columns
        self.last_val_table: np.ndarray | None = None

    @property
    def uses_semantic(self) -> bool:
        """True when the model has semantic experts, so batches must carry features."""
        return needs_semantic(self.model)

    def forward(self, batch: dict) -> torch.Tensor:
        return model_scores(self.model, batch)

    def _predict(self, batch: dict) -> torch.Tensor:
        return self(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = float(getattr(self.model.config, "label_scale", 1.0))
        prediction, mos = self._predict(batch) / scale, batch["mos"].float() / scale
        if len(self.targets) == 1:
            loss = self.criterion(prediction, mos)
        else:
            losses = self.target_losses(prediction, mos)
            loss = self.weighted_loss(losses)
            self.log_dict({f"train/loss_{target}": part for target, part in zip(self.targets, losses)},
                          batch_size=len(mos))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["mos"]))
        balance = getattr(self.model, "balance_loss", None)
        if balance is not None:
            loss = loss + self.model.config.balance_loss_weight * balance
            self.log("train/balance_loss", balance, batch_size=len(batch["mos"]))
        return loss

    def target_losses(self, prediction: torch.Tensor, mos: torch.Tensor) -> list[torch.Tensor]:
        """The loss of each target's column of (B, T) predictions and MOS."""
        return [self.criterion(prediction[:, index], mos[:, index]) for index in range(len(self.targets))]

    def weighted_loss(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """Sum of per-target losses times `target_weights` (1 for targets it does not name)."""
        return sum(weight * loss for weight, loss in zip(self.loss_weights, losses))

    def _collect(self, stage: str, batch: dict) -> None:
        n = len(batch["row"])
        pred = self._predict(batch).float().reshape(n, -1)
        self._outputs.setdefault(stage, []).append(
            torch.cat([batch["row"].float()[:, None], pred, batch["mos"].float().reshape(n, -1)], dim=1).detach()
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("val", batch)

    def gathered(self, stage: str) -> np.ndarray:
        """(n, 1 + 2T) array of [row, prediction(s), MOS(es)] for a stage, gathered over all processes, one row per
        image."""
        width = 1 + 2 * len(self.targets)
        local = torch.cat(self._outputs.get(stage, [torch.empty(0, width, device=self.device)]))
        if self.trainer is not None and self.trainer.world_size > 1:
            local = self.all_gather(local).reshape(-1, width)
        table = local.cpu().numpy()
        # DistributedSampler pads with repeated rows so every process has equal work; keep each row once.
        _, first = np.unique(table[:, 0], return_index=True)
        return table[np.sort(first)]

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        table = self.gathered("val")
        self.last_val_table = table
        num_targets = len(self.targets)
        per_target = [validation_correlations(table[:, 1 + index], table[:, 1 + num_targets + index])
                      for index in range(num_targets)]
        srcc, plcc = (float(np.mean(values)) for values in zip(*per_target))
        # Undefined correlations (constant predictions, tiny val set) count as the worst score, -1 each.
        score = float(np.nan_to_num(srcc, nan=-1.0) + np.nan_to_num(plcc, nan=-1.0))
        logged = {"val/srcc": srcc, "val/plcc": plcc, "val/score": score}
        if num_targets > 1:
            logged.update({f"val/srcc_{target}": values[0] for target, values in zip(self.targets, per_target)})
        self.log_dict(logged, prog_bar=True, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints are written at epoch ends: with the RNG states a resumed run draws the same augmentations,
        # crops and dropout masks as an uninterrupted one (the batch order comes from `EpochShuffle`).
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.t_max, eta_min=hp.eta_min)
        # Stepped every batch, as the official code does.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def validation_correlations(predictions: np.ndarray, mos: np.ndarray) -> tuple[float, float]:
    """(SRCC, raw PLCC) of one target's validation predictions; NaN for fewer than 3 images."""
    if len(mos) < 3:
        return float("nan"), float("nan")
    metrics = compute_metrics(predictions, mos)
    return float(metrics["srcc"]), float(metrics["plcc_raw"])


def rng_states() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain values (loadable with weights_only=True)."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (torch.from_numpy(keys.copy()), position, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` saved."""
    random.setstate(states["python"])
    keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
