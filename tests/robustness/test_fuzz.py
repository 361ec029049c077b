"""Fuzzing with hypothesis: image bytes (valid files mutated / truncated), label CSVs (encodings, BOM, CRLF,
separators, quoting, NaN / text in MOS, duplicates), split JSON and feature-cache files. Every case either works or
raises the package's clear error; no other exception escapes.

CI runs AGIQA_FUZZ_EXAMPLES (default 600) cases per test (2,400 in all, about 30 s on 2 cores); a longer run:
    AGIQA_FUZZ_EXAMPLES=20000 python -m pytest tests/robustness/test_fuzz.py
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agiqa.data.datasets import load_dataset
from agiqa.data.images import decode_image
from agiqa.data.splits import Split
from agiqa.errors import AgiqaError, DatasetValidationError, ImageLoadError

EXAMPLES = int(os.environ.get("AGIQA_FUZZ_EXAMPLES", "600"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encoded(fmt: str, mode: str = "RGB", **kwargs) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


SEEDS = [_encoded("PNG"), _encoded("JPEG", quality=90), _encoded("GIF", "P"), _encoded("BMP"), _encoded("TIFF"),
         _encoded("PNG", "RGBA"), _encoded("WEBP", lossless=True), _encoded("PNG", "I;16")]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            del data[position:position + draw(st.integers(1, 16))]
    return bytes(data)


@fuzz
@given(mutated_images())
def test_image_bytes_decode_or_fail_as_one_file_error(data):
    try:
        image = decode_image(data, name="upload.png", max_pixels=1 << 20)
    except ImageLoadError as err:
        assert err.path == "upload.png" and err.reason
        return
    assert image.mode == "RGB" and image.width * image.height <= 1 << 20


MOS_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 200).map(str),
                     st.sampled_from(["", " ", "nan", "NaN", "abc", "1,5", "4.2 ", "1e3", "-0", "None"]))
NAME_TEXT = st.one_of(st.sampled_from(["a.png", "b.png", "c d.png", "é.png", "", " "]),
                      st.text(min_size=0, max_size=12))


@st.composite
def label_files(draw) -> bytes:
    rows = draw(st.lists(st.tuples(NAME_TEXT, MOS_TEXT, st.text(max_size=20)), min_size=0, max_size=8))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    header = draw(st.sampled_from([["image", "mos", "prompt"], ["image", "mos"], ["name", "score", "prompt"]]))
    frame = pd.DataFrame([row[: len(header)] for row in rows], columns=header) if rows else pd.DataFrame(
        columns=header)
    text = frame.to_csv(index=False, sep=sep, quoting=draw(st.sampled_from([0, 1, 2, 3])), escapechar="\\",
                        lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _load_or_clear_error(data: bytes, file_name: str, load, error: type[AgiqaError] = AgiqaError):
    """`load(path)` of `data` written as `file_name` in a fresh folder; None when it fails with an `error`, which
    must name the file (any other exception fails the test)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name
        path.write_bytes(data)
        try:
            return load(path)
        except AgiqaError as err:
            assert isinstance(err, error), f"{type(err).__name__}: {err}"
            assert file_name in str(err)
            return None


@fuzz
@given(label_files())
def test_label_csvs_load_or_fail_with_a_clear_error(data):
    frame = _load_or_clear_error(data, "labels.csv", lambda path: load_dataset(
        "csv", None, csv=str(path), prompt_col=None, check_files=False), error=DatasetValidationError)
    if frame is None:
        return
    assert frame["mos"].map(math.isfinite).all() and frame["name"].is_unique
    assert (frame["name"].str.strip() != "").all()


def test_label_csv_problems_are_listed_row_by_row(tmp_path):
    """The rows the fuzz test above may reject, each named with its row and line."""
    path = tmp_path / "labels.csv"
    path.write_text("image,mos\na.png,1\nb.png,nan\nc.png,2\nc.png,3\n,4\n")
    with pytest.raises(DatasetValidationError) as err:
        load_dataset("csv", None, csv=str(path), prompt_col=None, check_files=False)
    message = str(err.value)
    assert str(path) in message and "3 problem(s)" in message
    for row in ("row 2 (line 3): 'mos' = 'nan'", "row 4 (line 5): duplicate 'image' 'c.png'", "row 5 (line 6): empty"):
        assert row in message


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=5), max_leaves=20)


@st.composite
def split_files(draw) -> bytes:
    if draw(st.booleans()):
        parts = {key: draw(st.lists(st.integers(-2, 12), max_size=12)) for key in ("train", "val", "test")}
        document = {**parts, "method": draw(st.sampled_from(["official", "random", 3])), "seed": draw(JSON_VALUES),
                    "n": draw(st.integers(-1, 12) | JSON_VALUES)}
        if draw(st.booleans()):
            document[draw(st.text(max_size=5))] = draw(JSON_VALUES)
    else:
        document = draw(JSON_VALUES)
    data = json.dumps(document).encode()
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@fuzz
@given(split_files())
def test_split_files_load_or_fail_with_a_clear_error(data):
    split = _load_or_clear_error(data, "split.json", Split.from_json)
    if split is None:
        return
    assert not set(split.train) & set(split.test)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    import torch

    from agiqa.semantic.cache import FeatureCache

    root = tmp_path_factory.mktemp("cache")
    cache = FeatureCache.create_or_open(root / "c", {"encoder": "fuzz", "prompts": ["p"], "dtype": "fp32"})
    cache.write_shard(["k1", "k2"], ["a.png", "b.png"], torch.ones(2, 1, 4))
    cache.write_index()
    return root / "c"


@fuzz
@given(file=st.sampled_from(["index.json", "path_hashes.json", "fingerprint.json"]), document=JSON_VALUES,
       about_the_probe=st.booleans(), cut=st.booleans())
def test_feature_cache_files_are_rebuilt_or_refused_clearly(feature_cache, file, document, about_the_probe, cut):
    """Each file the cache reads (its shard index, the path -> sha256 memo, the fingerprint), replaced by any JSON
    (the memo's entries sometimes keyed by the probed file itself) or cut short: the cache still serves the right
    features and the right content hash, or refuses with an error naming the file."""
    import shutil

    from agiqa.semantic.cache import HASHES_FILE, FeatureCache, sha256_file

    assert file in ("index.json", HASHES_FILE, "fingerprint.json")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "c"
        shutil.copytree(feature_cache, copy)
        probe = copy / "index.json"
        if about_the_probe:
            document = {os.path.abspath(probe): document}
        data = json.dumps(document).encode()
        (copy / file).write_bytes(data[: len(data) // 2] if cut else data)
        try:
            cache = FeatureCache(copy)
            features = cache.get_many(["k1", "k2"])
            digest = cache.content_hash(probe)
        except AgiqaError as err:
            assert file in str(err)
            return
        assert features.shape == (2, 1, 4) and len(cache) == 2
        assert digest == sha256_file(probe)
