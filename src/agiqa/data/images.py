"""Image loading: any file Pillow reads -> a fully decoded RGB `PIL.Image` with EXIF orientation applied."""
from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agiqa.errors import ImageLoadError

# Transparent pixels are shown as they would be on a white page.
BACKGROUND = (255, 255, 255)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode (so truncated files fail here), apply EXIF orientation and convert to RGB.

    Raises `ImageLoadError` naming the file and the reason for missing, unreadable or corrupt files.
    """
    if not os.path.exists(path):
        raise ImageLoadError(path, "file not found")
    if not os.path.isfile(path):
        raise ImageLoadError(path, "not a regular file")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as err:
        raise ImageLoadError(path, "not an image Pillow can identify (corrupt or unsupported format)") from err
    except _DECODE_ERRORS as err:
        raise ImageLoadError(path, f"corrupt or truncated image data ({err})") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of `img`: alpha composited on white, 16-bit grey scaled to 8 bit, other modes via Pillow."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow's own I -> RGB conversion clips at 255 instead of scaling 16-bit values.
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        page = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(page, rgba).convert("RGB")
    return img.convert("RGB")
