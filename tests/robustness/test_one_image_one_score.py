"""One image, one score: every entry point decodes by the same rule (agiqa.data.images.decode_image), so a file
scores the same through `agiqa score`, `Scorer` with its path, its bytes or the PIL image, and the HTTP service;
bad files are per-file errors and the counts add up."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.data.images import decode_image
from agiqa.models import create_model
from agiqa.scoring.scorer import Scorer
from agiqa.scoring.sources import find_images
from tests.robustness._files import truncated_png, write_image_kinds

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from agiqa.service.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    files = write_image_kinds(root / "images")
    (root / "images" / "truncated.png").write_bytes(truncated_png())
    (root / "images" / "text_not_image.png").write_bytes(b"hello")
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(root / "model")
    return root, files


def _service_scores(scorer, paths) -> dict:
    client = TestClient(create_app(scorer, "tiny"))
    upload = [("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    body = client.post("/score", files=upload).json()
    assert body["n_scored"] + body["n_failed"] == len(paths)
    return {r["filename"]: (r["score"], r["error"]) for r in body["results"]}


def test_every_kind_of_file_scores_the_same_on_every_path(setup, tmp_path):
    root, files = setup
    paths = find_images([root / "images"])
    scorer = Scorer(root / "model", device="cpu", batch_size=4)

    assert main(["score", str(root / "model"), str(root / "images"), "--out", str(tmp_path / "s.csv"),
                 "--device", "cpu", "--batch-size", "4"]) == 1  # two bad files
    cli = pd.read_csv(tmp_path / "s.csv").set_index("image")
    by_path = scorer.score([str(p) for p in paths])
    by_bytes = scorer.score([p.read_bytes() for p in paths], names=[p.name for p in paths])
    by_pil = scorer.score([Image.open(p) for p in files.values()])
    service = _service_scores(scorer, paths)

    assert len(cli) == len(paths) and cli["score"].notna().sum() + cli["error"].notna().sum() == len(paths)
    for i, path in enumerate(paths):
        expected = by_path.scores[i]
        assert cli.loc[str(path), "score"] == pytest.approx(expected, abs=1e-6, nan_ok=True), path.name
        assert by_bytes.scores[i] == pytest.approx(expected, abs=1e-6, nan_ok=True), path.name
        http_score, http_error = service[path.name]
        assert (http_score is None) == bool(np.isnan(expected)), path.name
        if http_score is not None:
            assert http_score == pytest.approx(expected, abs=1e-6), path.name
        else:
            assert path.name in http_error
    index = {str(p): i for i, p in enumerate(paths)}
    for pil_score, path in zip(by_pil.scores, files.values()):
        assert pil_score == pytest.approx(by_path.scores[index[str(path)]], abs=1e-6), path.name
    failed = {p.name for p, e in zip(paths, by_path.errors) if e}
    assert failed == {"truncated.png", "text_not_image.png"}


def test_the_old_pil_path_would_have_failed_this_test(setup):
    """Proof that the comparison above can fail: Pillow's plain `convert("RGB")` (the old PIL path) ignores EXIF
    orientation and clips 16-bit grey, and the model sees the difference."""
    root, files = setup
    scorer = Scorer(root / "model", device="cpu")
    for name in ("exif_rotated.jpg", "grey16.png"):
        plain = Image.open(files[name])
        plain.load()
        naive = np.asarray(plain.convert("RGB"))  # an array carries no EXIF: the pixels as the old path had them
        ours = scorer.score([files[name]]).scores[0]
        assert abs(scorer.score([naive]).scores[0] - ours) > 1e-4, name


def test_16bit_mid_grey_stays_mid_grey_and_exif_rotates(setup):
    _, files = setup
    grey = np.asarray(decode_image(files["grey16.png"]))
    assert grey[0, 0, 0] == 0 and grey[-1, -1, 0] == 255 and 120 < grey[18, 22, 0] < 136
    assert decode_image(files["exif_rotated.jpg"]).size == (36, 44)  # 44 x 36 stored, displayed rotated


def test_animation_uses_its_first_frame_whatever_frame_the_image_is_at(setup):
    _, files = setup
    first = np.asarray(decode_image(files["animated.gif"]))
    moved = Image.open(files["animated.gif"])
    moved.seek(1)
    assert np.array_equal(np.asarray(decode_image(moved)), first)
    assert moved.tell() == 1 and not np.array_equal(np.asarray(moved.convert("RGB")), first)  # caller's frame kept


def test_pixel_limit_is_a_per_file_error_on_every_path(setup):
    root, files = setup
    scorer = Scorer(root / "model", device="cpu", max_pixels=1000)
    result = scorer.score([files["grey.png"], files["grey.png"].read_bytes(), Image.open(files["grey.png"])])
    assert np.isnan(result.scores).all()
    assert all("more than the limit of 1000" in reason for _, reason in result.failures)
    client = TestClient(create_app(scorer, "tiny"))
    grey = ("g.png", files["grey.png"].read_bytes(), "image/png")
    alone = client.post("/score", files=[("images", grey)])  # nothing to score: the request as a whole is too large
    assert alone.status_code == 413 and "g.png" in alone.json()["detail"] and "max_pixels" in alone.json()["detail"]
    buffer = io.BytesIO()
    Image.open(files["grey.png"]).resize((20, 20)).save(buffer, format="PNG")  # 400 pixels: under the limit
    small = ("s.png", buffer.getvalue(), "image/png")
    body = client.post("/score", files=[("images", grey), ("images", small)]).json()
    assert body["n_failed"] == 1 and "max_pixels" in body["results"][0]["error"] and body["results"][1]["score"]


@pytest.mark.parametrize("array, expected", [
    (np.full((8, 8), 65535, np.uint16), 255),
    (np.full((8, 8, 3), 0.5, np.float32), 128),
    (np.full((8, 8, 1), 7, np.uint8), 7),
    (np.zeros((8, 8, 4), np.uint8), 255),  # fully transparent -> white
])
def test_arrays_follow_the_same_rule(array, expected):
    assert np.asarray(decode_image(array))[0, 0].tolist() == [expected] * 3


@pytest.mark.parametrize("array, match", [
    (np.full((8, 8, 3), 1.5), r"\[0, 1\]"), (np.zeros((8, 8, 2), np.uint8), "shape"),
    (np.zeros((8, 8), np.int64), "dtype")])
def test_bad_arrays_are_clear_errors(array, match):
    with pytest.raises(Exception, match=match):
        decode_image(array, name="frame 7")
