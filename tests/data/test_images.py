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


# --- Mutation-testing additions (docs/mutation.md): every input kind of the one decoding rule against pixel values
# and messages written by hand.

from agiqa.data.images import array_to_image, decode_image, to_rgb  # noqa: E402
from agiqa.errors import ImageTooLargeError  # noqa: E402

DIMS_MESSAGE = "expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_uint8_arrays_of_every_shape():
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    assert np.asarray(decode_image(rgb)).tolist() == rgb.tolist()
    grey = np.array([[0, 7, 255]], dtype=np.uint8)
    expected = [[[0, 0, 0], [7, 7, 7], [255, 255, 255]]]
    assert np.asarray(decode_image(grey)).tolist() == expected
    assert np.asarray(decode_image(grey[..., None])).tolist() == expected  # (H, W, 1) is grey too
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], dtype=np.uint8)
    assert np.asarray(decode_image(rgba)).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    assert decode_image(grey).mode == "RGB"


@pytest.mark.parametrize("channels", [None, 3])
def test_array_dtypes_are_scaled_to_8_bit(channels):
    def pixels(values, dtype):
        array = np.array([values], dtype=dtype)
        if channels:  # (1, N, 3): the scaled array itself must be 8-bit (Pillow has no float RGB mode)
            array = np.repeat(array[..., None], channels, axis=-1)
        return np.asarray(decode_image(array))[0, :, 0].tolist()

    # / 257, rounded: 385 -> 1.498 -> 1, 386 -> 1.502 -> 2, 1000 -> 3.89 -> 4
    assert pixels([0, 257, 385, 386, 1000, 32896, 65535], np.uint16) == [0, 1, 1, 2, 4, 128, 255]
    assert pixels([True, False], bool) == [255, 0]
    assert pixels([0.0, 0.2, 0.5, 1.0], np.float64) == [0, 51, 128, 255]  # * 255, rounded (127.5 -> 128)
    assert pixels([0.0, 1.0], np.float32) == [0, 255]


@pytest.mark.parametrize("values", [[-0.01, 0.5], [0.5, 1.01], [0.0, 1.5], [np.nan, 0.5], [0.5, np.inf]])
def test_float_arrays_outside_0_1_are_refused(values):
    with pytest.raises(ImageLoadError) as err:
        decode_image(np.array([values]), name="scores.npy")
    assert err.value.path == "scores.npy" and str(err.value) == (
        "scores.npy: float array must hold finite values in [0, 1]")


@pytest.mark.parametrize("shape", [(2, 2, 2), (4,), (1, 2, 2, 3), (2, 2, 5)])
def test_array_shapes_outside_the_rule_are_refused(shape):
    with pytest.raises(ImageLoadError) as err:
        decode_image(np.zeros(shape, dtype=np.uint8))
    assert err.value.path == "<image>" and str(err.value) == f"<image>: array of shape {shape}: {DIMS_MESSAGE}"


def test_array_dtype_outside_the_rule_is_refused():
    with pytest.raises(ImageLoadError) as err:
        decode_image(np.zeros((2, 2), dtype=np.int32), name="a")
    assert str(err.value) == "a: array dtype int32: expected uint8, uint16, bool or float in [0, 1]"
    with pytest.raises(ImageLoadError) as err:
        array_to_image(np.zeros((2, 2), dtype=np.int32))  # called directly: named "<array>"
    assert str(err.value) == "<array>: array dtype int32: expected uint8, uint16, bool or float in [0, 1]"


def test_max_pixels_is_inclusive_on_every_input_kind(tmp_path):
    img = Image.new("RGB", (4, 3), (1, 2, 3))  # 12 pixels
    img.save(tmp_path / "p.png")
    sources = {"<image>": [np.zeros((3, 4, 3), np.uint8), img, _png(img)],
               str(tmp_path / "p.png"): [tmp_path / "p.png"]}
    for label, kinds in sources.items():
        for source in kinds:
            assert decode_image(source, max_pixels=12).size == (4, 3)
            with pytest.raises(ImageTooLargeError) as err:
                decode_image(source, max_pixels=11)
            assert err.value.path == label
            assert str(err.value) == f"{label}: 4x3 = 12 pixels, more than the limit of 11 (max_pixels)"
    assert load_image(tmp_path / "p.png", max_pixels=12).size == (4, 3)
    with pytest.raises(ImageTooLargeError, match="limit of 11"):
        load_image(tmp_path / "p.png", max_pixels=11)


def test_pillow_decompression_bomb_guard_is_an_image_too_large_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5)  # Pillow refuses more than twice this before we can look
    with pytest.raises(ImageTooLargeError) as err:
        decode_image(_png(Image.new("RGB", (4, 3))), name="bomb.png")
    assert err.value.path == "bomb.png"
    assert str(err.value).startswith("bomb.png: too many pixels (Image size (12 pixels) exceeds limit of 10 pixels")


def test_bytes_and_file_objects(tmp_path):
    data = _png(_left_red_right_blue())
    expected = np.asarray(_left_red_right_blue()).tolist()
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        assert np.asarray(decode_image(source)).tolist() == expected
    with pytest.raises(ImageLoadError) as err:
        decode_image(b"not an image")
    assert err.value.path == "<image>" and str(err.value) == (
        "<image>: not an image Pillow can identify (corrupt or unsupported format)")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with open(tmp_path / "junk.png", "rb") as f, pytest.raises(ImageLoadError) as err:
        decode_image(f)  # an open file is named by its path
    assert err.value.path == str(tmp_path / "junk.png")


def test_a_stream_that_fails_to_read_is_named():
    class Broken(io.RawIOBase):
        name = "stream.png"

        def readable(self):
            return True

        def read(self, size=-1):
            raise OSError("boom")

    with pytest.raises(ImageLoadError) as err:
        decode_image(Broken())
    assert err.value.path == "stream.png" and str(err.value) == "stream.png: could not be opened (OSError: boom)"


def test_file_errors_name_the_full_path(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageLoadError) as err:
        load_image(tmp_path / "bad.png")
    assert err.value.path == str(tmp_path / "bad.png")
    with pytest.raises(ImageLoadError) as err:
        load_image(tmp_path)
    assert err.value.path == str(tmp_path) and str(err.value) == f"{tmp_path}: not a regular file"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(ImageLoadError) as err:
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], name="cut.png")
    assert str(err.value) == "cut.png: corrupt or truncated image data (OSError: image file is truncated)"


def test_an_opened_image_is_named_by_its_file(tmp_path):
    Image.new("RGB", (4, 3)).save(tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img, pytest.raises(ImageTooLargeError) as err:
        decode_image(img, max_pixels=5)
    assert err.value.path == str(tmp_path / "big.png")


def test_animation_decodes_the_first_frame_and_leaves_the_callers_frame():
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "GIF", save_all=True,
                                                append_images=[Image.new("RGB", (4, 3), (0, 0, 255))])
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        img.seek(1)
        assert np.asarray(decode_image(img))[0, 0].tolist() == [255, 0, 0]
        assert img.tell() == 1
    assert np.asarray(decode_image(buf.getvalue()))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_every_16_bit_grey_layout_is_scaled(mode):
    values = np.array([[0, 32896, 65535]], dtype=">u2" if mode == "I;16B" else "<u2")
    rgb = to_rgb(Image.frombytes(mode, (3, 1), values.tobytes()))
    assert rgb.mode == "RGB" and np.asarray(rgb)[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]


def test_32_bit_integer_and_float_grey_are_clipped():
    ints = Image.fromarray(np.array([[-500, 0, 32896, 100000]], dtype=np.int32))  # mode I: / 257, then 0..255
    assert ints.mode == "I" and np.asarray(to_rgb(ints))[0, :, 0].tolist() == [0, 0, 128, 255]
    floats = Image.fromarray(np.array([[-5.0, 0.0, 128.0, 300.0]], dtype=np.float32))  # mode F: taken as 0..255
    rgb = to_rgb(floats)
    assert floats.mode == "F" and rgb.mode == "RGB"
    assert np.asarray(rgb)[0].tolist() == [[0, 0, 0], [0, 0, 0], [128, 128, 128], [255, 255, 255]]


# Real bugs found while killing mutants (docs/mutation.md, "Bugs found"), fixed.


def test_rgb_png_with_a_transparency_key_is_composited_on_white():
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", transparency=(0, 0, 0))  # black is the transparent colour (tRNS)
    assert np.asarray(decode_image(buf.getvalue())).tolist() == [[[255, 0, 0], [255, 255, 255]],
                                                                 [[255, 255, 255], [255, 255, 255]]]


def test_big_endian_uint16_arrays_are_scaled_like_native_ones():
    assert np.asarray(decode_image(np.array([[0, 32896, 65535]], dtype=">u2")))[0, :, 0].tolist() == [0, 128, 255]
