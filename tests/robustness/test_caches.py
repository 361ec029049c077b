"""The decoded-image cache is keyed by content stamps: unchanged files are never decoded twice, edited files always
are (a stale entry is never used)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import agiqa.data.images as images
from agiqa.training.datamodule import decode_images


def _write(path, value):
    Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


def test_unchanged_files_come_from_the_cache_and_edited_files_are_decoded_again(tmp_path, monkeypatch):
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        _write(path, 10 * i)
    first = decode_images(paths, 8, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(images, "decode_image", no_decoding)
        assert np.array_equal(decode_images(paths, 8, str(tmp_path / "cache")), first)

    _write(paths[1], 200)  # edited in place: same name, same byte size, new pixels
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # even within the same second
    second = decode_images(paths, 8, str(tmp_path / "cache"))
    assert int(second[1, 0, 0, 0]) == 200 and np.array_equal(second[[0, 2]], first[[0, 2]])


def test_a_file_missing_then_restored_is_not_served_from_a_stale_key(tmp_path):
    paths = [str(tmp_path / "a.png")]
    with pytest.raises(Exception, match="a.png: file not found"):
        decode_images(paths, 8, str(tmp_path / "cache"))
    _write(paths[0], 77)
    assert int(decode_images(paths, 8, str(tmp_path / "cache"))[0, 0, 0, 0]) == 77
