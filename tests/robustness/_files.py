"""Image files of every kind users feed the tools, written by the tests (no downloads)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, features


def _pattern(height: int = 36, width: int = 44, seed: int = 0) -> np.ndarray:
    """An asymmetric colour pattern: rotations, flips and lost channels all change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_image_kinds(folder: Path) -> dict[str, Path]:
    """One file per kind: EXIF rotation, alpha, 16-bit grey, palette transparency, CMYK, grey, LA, animation."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_pattern())
    files = {}

    def save(name, image, **kwargs):
        image.save(folder / name, **kwargs)
        files[name] = folder / name

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", rgb, exif=exif, quality=95)
    alpha = np.concatenate([_pattern(seed=1), np.tile(np.linspace(0, 255, 44, dtype=np.uint8), (36, 1))[..., None]], -1)
    save("alpha.png", Image.fromarray(alpha))
    grey16 = (np.linspace(0, 65535, 36 * 44).reshape(36, 44)).astype(np.uint16)
    save("grey16.png", Image.fromarray(grey16))
    palette = rgb.quantize(16)
    save("palette_transparent.png", palette, transparency=3)
    save("cmyk.jpg", Image.fromarray(_pattern(seed=2)).convert("CMYK"), quality=95)
    save("grey.png", Image.fromarray(_pattern(seed=3)).convert("L"))
    save("grey_alpha.png", Image.fromarray(alpha).convert("LA"))
    frames = [Image.fromarray(_pattern(seed=4)).quantize(64), Image.fromarray(_pattern(seed=5)[::-1]).quantize(64)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    if features.check("webp"):
        save("alpha.webp", Image.fromarray(alpha), lossless=True)
    return files


def truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pattern(64, 64, seed=6)).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]
