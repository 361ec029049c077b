"""Test-time views of an image for fixed-size models (MANIQA takes 224 x 224 crops).

Modes (``crop_views(image, size, mode=...)``):

- ``"top_left"``: one crop at (0, 0) — the official MANIQA validation crop (``five_point_crop`` index 0).
- ``"random"``: ``n`` random crops (official ``predict_one_image.py``: 20). Offsets are drawn like the official
  code, ``top = randint(0, H - size)`` then ``left = randint(0, W - size)`` per crop from a NumPy ``RandomState``
  seeded with ``seed`` — so ``seed=20`` reproduces the official crops (``setup_seed(20)``). As there, the upper
  bound is exclusive (the last offset is never drawn); a side equal to ``size`` gives offset 0.
- ``"five"``: the official ``five_point_crop`` order: top-left, top-right, bottom-left, bottom-right, centre
  (centre offset ``H // 2 - size // 2``).
- ``"grid"``: a deterministic grid covering the whole image: ``ceil(H / size)`` rows x ``ceil(W / size)`` columns,
  offsets evenly spaced from 0 to ``H - size`` (neighbouring crops overlap when the side is not a multiple).
- ``"resize"``: the whole image resized to ``size x size`` (bicubic, no antialias, clamped to [0, 1]) — what the
  official MA-AGIQA data pipeline does with cv2 ``INTER_CUBIC`` (values differ from cv2 by uint8 rounding only).

Images smaller than ``size`` on a side are **padded** before cropping (not resized), split evenly between the two
sides (the extra pixel goes to the bottom/right): ``pad_mode="constant"`` with ``pad_value=0.5`` by default — mid
grey, i.e. exactly 0 after MANIQA's (x - 0.5) / 0.5 normalisation, so padding adds no signal to the ViT tokens.
``"reflect"`` and ``"replicate"`` are also accepted (reflect falls back to replicate when the image is too small).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agiqa.scoring.inference import batched_forward

__all__ = ["CROP_MODES", "crop_views", "crop_offsets", "pad_to_min_size", "predict_views"]

CROP_MODES = ("top_left", "random", "five", "grid", "resize")


def pad_to_min_size(
    image: torch.Tensor, size: int, pad_mode: str = "constant", pad_value: float = 0.5
) -> torch.Tensor:
    """Pad ``(..., 3, H, W)`` so that H and W are at least ``size`` (centred; see the module docstring)."""
    H, W = image.shape[-2:]
    pad_h, pad_w = max(size - H, 0), max(size - W, 0)
    if not pad_h and not pad_w:
        return image
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    if pad_mode == "constant":
        x = F.pad(x, pads, mode="constant", value=pad_value)
    elif pad_mode in ("reflect", "replicate"):
        mode = pad_mode if pad_mode == "replicate" or (pad_h < H and pad_w < W) else "replicate"
        x = F.pad(x, pads, mode=mode)
    else:
        raise ValueError(f"pad_mode must be 'constant', 'reflect' or 'replicate', got {pad_mode!r}")
    return x if batched else x.squeeze(0)


def crop_offsets(height: int, width: int, size: int, mode: str, n: int = 20, seed: int = 20) -> list[tuple[int, int]]:
    """``(top, left)`` offsets of the views of a ``height x width`` image (already padded to >= ``size``)."""
    if height < size or width < size:
        raise ValueError(f"image {height}x{width} is smaller than the crop {size}; pad it first")
    if mode == "top_left":
        return [(0, 0)]
    if mode == "random":
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rng = np.random.RandomState(seed)
        offsets = []
        for _ in range(n):
            top = int(rng.randint(0, height - size)) if height > size else 0
            left = int(rng.randint(0, width - size)) if width > size else 0
            offsets.append((top, left))
        return offsets
    if mode == "five":
        bottom, right = height - size, width - size
        return [(0, 0), (0, right), (bottom, 0), (bottom, right), (height // 2 - size // 2, width // 2 - size // 2)]
    if mode == "grid":
        rows = np.linspace(0, height - size, math.ceil(height / size)).round().astype(int)
        cols = np.linspace(0, width - size, math.ceil(width / size)).round().astype(int)
        return [(int(top), int(left)) for top in rows for left in cols]
    raise ValueError(f"mode must be one of {CROP_MODES}, got {mode!r}")


def crop_views(
    image: torch.Tensor,
    size: int = 224,
    mode: str = "top_left",
    n: int = 20,
    seed: int = 20,
    pad_mode: str = "constant",
    pad_value: float = 0.5,
) -> torch.Tensor:
    """Views of ``image`` for a model taking ``size x size`` inputs.

    Args:
        image: RGB in ``[0, 1]``, ``(3, H, W)`` or a batch ``(B, 3, H, W)`` of equally sized images.
        size: crop side in pixels.
        mode: one of ``CROP_MODES`` (see the module docstring).
        n: number of crops for ``mode="random"``.
        seed: seed of the random crops (20 = the official seed).
        pad_mode / pad_value: how images smaller than ``size`` are padded.

    Returns:
        ``(V, 3, size, size)`` for one image, ``(B, V, 3, size, size)`` for a batch (same offsets for every image).
    """
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W) RGB, got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got {image.dtype}")
    if mode == "resize":
        x = image if image.dim() == 4 else image.unsqueeze(0)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False).clamp_(0, 1)
        return x.unsqueeze(1) if image.dim() == 4 else x
    image = pad_to_min_size(image, size, pad_mode, pad_value)
    H, W = image.shape[-2:]
    views = [image[..., top : top + size, left : left + size] for top, left in crop_offsets(H, W, size, mode, n, seed)]
    return torch.stack(views, dim=-4)


def predict_views(
    model: nn.Module,
    views: torch.Tensor,
    batch_size: int = 32,
    precision: str = "auto",
    normalize: bool = True,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Mean model score over views.

    Args:
        model: a scorer such as :class:`~agiqa.models.maniqa.Maniqa` (``(B, 3, S, S) -> (B,)``).
        views: ``(V, 3, S, S)`` or ``(B, V, 3, S, S)`` from :func:`crop_views`, RGB in ``[0, 1]``.
        batch_size: views per forward pass (views of several images are batched together).
        precision: "auto" | "fp32" | "bf16" | "fp16" (see :func:`agiqa.runtime.resolve_precision`).
        normalize: apply ``model.normalize`` (mean = std = 0.5 for MANIQA) before the forward pass.

    Returns:
        A 0-d tensor for ``(V, ...)`` input, ``(B,)`` for ``(B, V, ...)``; fp32 on the CPU.
    """
    single = views.dim() == 4
    x = views.unsqueeze(0) if single else views
    if x.dim() != 5:
        raise ValueError(f"expected (V, 3, S, S) or (B, V, 3, S, S) views, got {tuple(views.shape)}")
    B, V = x.shape[:2]
    flat = x.reshape(B * V, *x.shape[2:])
    if normalize:
        flat = model.normalize(flat) if hasattr(model, "normalize") else (flat - 0.5) / 0.5
    scores = batched_forward(model, flat, batch_size=batch_size, precision=precision, device=device)
    scores = scores.view(B, V).mean(dim=1)
    return scores[0] if single else scores
