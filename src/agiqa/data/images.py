"""Image decoding: the one rule every entry point uses (files, uploads, PIL images, arrays) -> RGB `PIL.Image`.

The rule (docs/robustness.md): fully decode the first frame (so truncated files fail here), refuse images above
`max_pixels`, apply EXIF orientation, then convert to 8-bit RGB: alpha (RGBA, LA, palette/RGB transparency) is
composited on white, 16-bit grey is scaled by 255/65535 (not clipped), float grey is taken as 0-255, palette, CMYK,
1-bit and grey go through Pillow's conversion. Arrays: uint8 as is, uint16 scaled like 16-bit files, bool as 0/255,
floats must lie in [0, 1]; shapes (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA).
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agiqa.errors import ImageLoadError, ImageTooLargeError

# Transparent pixels are shown as they would be on a white page.
BACKGROUND = (255, 255, 255)
# Refuse images with more pixels than this (Pillow's own decompression-bomb threshold, ~89 Mpx); each entry point
# takes `max_pixels` to lower it. Pillow itself refuses twice its `Image.MAX_IMAGE_PIXELS` before we can look.
DEFAULT_MAX_PIXELS = 89_478_485
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file by the package's one rule; `ImageLoadError` names the file and the reason."""
    return decode_image(path, max_pixels=max_pixels)


def decode_image(source: ImageSource, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any image input -> RGB `PIL.Image` by the module's rule. `name` labels errors (default: the path, or
    "<image>"); every failure, whatever the decoder raised, is an `ImageLoadError(name, reason)`."""
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else _default_name(source))
    if isinstance(source, np.ndarray):
        return _finish(array_to_image(source, label), label, max_pixels)
    if isinstance(source, Image.Image):
        return _finish(source, label, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        _check_file(source)
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with Image.open(stream) as img:
            return _finish(img, label, max_pixels)
    except UnidentifiedImageError as err:
        raise ImageLoadError(label, "not an image Pillow can identify (corrupt or unsupported format)") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(label, f"too many pixels ({err})") from err
    except ImageLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a permission error, or a plugin failing while identifying
        raise ImageLoadError(label, f"could not be opened ({type(err).__name__}: {err})") from err


def _default_name(source) -> str:
    return getattr(source, "filename", None) or getattr(source, "name", None) or "<image>"


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.exists(path):
        raise ImageLoadError(path, "file not found")
    if not os.path.isfile(path):
        raise ImageLoadError(path, "not a regular file")


def _finish(img: Image.Image, label: str, max_pixels: int) -> Image.Image:
    """Pixel limit, first frame, full decode, EXIF orientation, RGB."""
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(label, f"{width}x{height} = {width * height} pixels, more than the limit of "
                                    f"{max_pixels} (max_pixels)")
    frame = img.tell() if getattr(img, "n_frames", 1) > 1 else 0
    try:
        if frame:
            img.seek(0)
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))  # a new image: the caller's `img` is left as it was
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises on bad data is this file's error
        raise ImageLoadError(label, f"corrupt or truncated image data ({type(err).__name__}: {err})") from err
    finally:
        if frame:
            img.seek(frame)


def array_to_image(array: np.ndarray, name: str = "<array>") -> Image.Image:
    """A numpy image (see the module rule for dtypes and shapes) -> PIL image before the RGB conversion."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(name, f"array of shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if np.issubdtype(array.dtype, np.uint16):  # any byte order (">u2" from big-endian PNGs)
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageLoadError(name, "float array must hold finite values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageLoadError(name, f"array dtype {array.dtype}: expected uint8, uint16, bool or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))  # (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of `img`: alpha composited on white, 16-bit grey scaled to 8 bit, other modes via Pillow."""
    if img.mode == "RGB" and "transparency" not in img.info:  # a transparency key still needs compositing
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow's own I -> RGB conversion clips at 255 instead of scaling 16-bit values.
        grey = np.clip(np.asarray(img, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        page = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(page, rgba).convert("RGB")
    return img.convert("RGB")
