"""Heat maps of where a score comes from: a model's patch map (MANIQA's per-patch score x weight) drawn over the
image. One rendering for `agiqa score --explain DIR` (PNG files) and the service (base64 PNG in the answer)."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

COLORMAP = "inferno"
OPACITY = 0.6


def heatmap_image(patch_map: np.ndarray, size: tuple[int, int], opacity: float = OPACITY) -> Image.Image:
    """RGBA heat map of a (H, W) patch map stretched to `size` (width, height): the model sees the whole image
    resized to a square, so patch (r, c) covers the same share of the original. Colours are relative within the
    image (its lowest patch dark, its highest bright)."""
    from matplotlib import colormaps

    values = np.asarray(patch_map, dtype=np.float64)
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    colours = (colormaps[COLORMAP](scaled) * 255).astype(np.uint8)
    colours[..., 3] = round(opacity * 255)
    return Image.fromarray(colours, "RGBA").resize(size, Image.Resampling.BILINEAR)


def overlay(image: Image.Image, patch_map: np.ndarray) -> Image.Image:
    """The image with its heat map blended over it (RGB)."""
    heat = heatmap_image(patch_map, image.size)
    return Image.alpha_composite(image.convert("RGBA"), heat).convert("RGB")


def png_base64(image: Image.Image) -> str:
    """PNG bytes of `image`, base64 text (for JSON answers and `data:image/png;base64,` URLs)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_file(folder: str | os.PathLike, key: str) -> Path:
    """Where `agiqa score --explain FOLDER` draws the heat map of input `key`: its name made file-safe, plus a short
    hash of the key so that two inputs never share a file (the output's `heatmap` column names it)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[-100:]
    return Path(folder) / f"{stem}.{hashlib.sha1(key.encode()).hexdigest()[:8]}.png"


def write_overlay(path: Path, image: Image.Image, patch_map: np.ndarray) -> None:
    """The image with its heat map over it, as PNG at `path` (written whole: a temporary file, then renamed)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    overlay(image, patch_map).save(partial, format="PNG")
    os.replace(partial, path)
