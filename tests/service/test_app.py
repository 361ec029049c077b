"""The HTTP service through FastAPI's test client: scores, bad uploads reported per file, limits."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from agiqa.models import create_model  # noqa: E402
from agiqa.scoring.scorer import Scorer  # noqa: E402
from agiqa.service.app import MAX_IMAGES_PER_REQUEST, create_app  # noqa: E402


def png_bytes(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client():
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", semantic_experts=())
    scorer = Scorer(model, device="cpu")
    return TestClient(create_app(scorer, "tiny")), scorer


def test_score_endpoint_matches_the_scorer_and_reports_bad_files(client):
    http, scorer = client
    files = [("images", ("a.png", png_bytes(0), "image/png")), ("images", ("bad.png", b"nope", "image/png")),
             ("images", ("b.png", png_bytes(1), "image/png"))]
    response = http.post("/score", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "bad.png", "b.png"]
    assert results[1]["score"] is None and "bad.png" in results[1]["error"]
    direct = scorer.score([Image.open(io.BytesIO(png_bytes(0))), Image.open(io.BytesIO(png_bytes(1)))]).scores
    assert results[0]["score"] == pytest.approx(direct[0], abs=1e-5)
    assert results[2]["score"] == pytest.approx(direct[1], abs=1e-5)


def test_health_info_and_limits(client):
    http, _ = client
    assert http.get("/health").json()["status"] == "ok"
    assert http.get("/info").json()["image_size"] == 32
    too_many = [("images", (f"{i}.png", b"x", "image/png")) for i in range(MAX_IMAGES_PER_REQUEST + 1)]
    assert http.post("/score", files=too_many).status_code == 413
    mismatch = http.post("/score", files=[("images", ("a.png", png_bytes(0), "image/png"))],
                         data={"prompts": ["one", "two"]})
    assert mismatch.status_code == 422


def test_moe_agiqa_service_scores_with_prompts_like_the_python_api():
    torch.manual_seed(0)
    model = create_model("test_moe_agiqa").eval()
    http = TestClient(create_app(Scorer(model, device="cpu", precision="fp32"), "moe"))
    assert http.get("/info").json()["needs_prompt"] is True
    files = [("images", ("a.png", png_bytes(0), "image/png")), ("images", ("b.png", png_bytes(1), "image/png"))]
    prompts = ["two red circles, flat style", "one blue star, striped style"]
    assert http.post("/score", files=files).status_code == 422  # no prompts: a clear client error, not a 500
    results = http.post("/score", files=files, data={"prompts": prompts}).json()["results"]
    images = [Image.open(io.BytesIO(png_bytes(i))).convert("RGB") for i in (0, 1)]
    direct = model.score(images, prompts)
    assert [r["score"] for r in results] == pytest.approx(direct.tolist(), abs=1e-5)
