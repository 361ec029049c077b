import io

import numpy as np
import pytest
from PIL import Image

from agiqa.data.images import load_image
from agiqa.errors import ImageLoadError


def _left_red_right_blue(width=6, height=4) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_exif_orientation_applied(tmp_path):
    img = _left_red_right_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.mode == "RGB" and loaded.size == (4, 6)
    arr = np.asarray(loaded).astype(int)
    # Rotated 90 degrees clockwise: the left (red) half is now at the top.
    assert arr[0, 2, 0] > 200 and arr[0, 2, 2] < 60
    assert arr[-1, 2, 2] > 200 and arr[-1, 2, 0] < 60


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[:, :2, 3] = 255  # left opaque red, right fully transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    loaded = np.asarray(load_image(tmp_path / "a.png"))
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[0, 3].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    img = _left_red_right_blue().convert(mode)
    suffix = "jpg" if mode == "CMYK" else "png"
    img.save(tmp_path / f"x.{suffix}")
    loaded = load_image(tmp_path / f"x.{suffix}")
    assert loaded.mode == "RGB" and loaded.size == (6, 4)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    loaded = np.asarray(load_image(tmp_path / "p.png"))
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[3, 3].tolist() == [255, 255, 255]


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    loaded = np.asarray(load_image(tmp_path / "g16.png"))
    assert loaded[0, :, 0].tolist() == [0, 128, 255]


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.png: file not found") as err:
        load_image(tmp_path / "nope.png")
    assert err.value.path.endswith("nope.png")


def test_corrupt_bytes(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError, match="bad.png: not an image"):
        load_image(tmp_path / "bad.png")


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match="cut.png: corrupt or truncated"):
        load_image(tmp_path / "cut.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path)
