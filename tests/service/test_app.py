"""The HTTP service through FastAPI's test client: scores, bad uploads reported per file, limits."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from agiqa.models import create_model  # noqa: E402
from agiqa.scoring.scorer import Scorer  # noqa: E402
from agiqa.service.app import create_app  # noqa: E402
from agiqa.service.limits import ServiceLimits  # noqa: E402


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
    too_many = [("images", (f"{i}.png", b"x", "image/png")) for i in range(ServiceLimits().max_images + 1)]
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


@pytest.fixture(scope="module")
def limited():
    """A tiny MANIQA behind tight limits, to hit each of them with small files."""
    torch.manual_seed(0)
    scorer = Scorer(create_model("test_maniqa").eval(), device="cpu", precision="fp32")
    limits = ServiceLimits(max_upload_bytes=20_000, max_images=3, max_pixels=50 * 50, max_batch=4)
    return TestClient(create_app(scorer, "tiny-maniqa", limits)), scorer


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def one(name: str, data: bytes, content_type: str = "image/png") -> list:
    return [("images", (name, data, content_type))]


@pytest.mark.parametrize("case, status, words", [
    ("corrupt image", 422, ["bad.png", "not an image"]),
    ("zero-byte file", 422, ["empty.png", "empty file"]),
    ("wrong content type", 415, ["notes.txt", "text/plain", "not an image"]),
    ("not multipart", 415, ["multipart/form-data", "application/json"]),
    ("oversize upload", 413, ["upload limit of 20000 bytes", "max-upload-mb"]),
    ("too many pixels", 413, ["huge.png", "60x60", "max_pixels"]),
    ("too many images", 413, ["at most 3 images", "got 4"]),
    ("prompt count mismatch", 422, ["1 images but 2 prompts"]),
])
def test_each_bad_request_gets_its_status_and_a_message_naming_the_problem(limited, case, status, words):
    http, _ = limited
    send = {
        "corrupt image": lambda: http.post("/score", files=one("bad.png", b"\x89PNG not really")),
        "zero-byte file": lambda: http.post("/score", files=one("empty.png", b"")),
        "wrong content type": lambda: http.post("/score", files=one("notes.txt", b"hello", "text/plain")),
        "not multipart": lambda: http.post("/score", json={"images": ["a.png"]}),
        "oversize upload": lambda: http.post("/score", files=one("big.png", big_png(120))),
        "too many pixels": lambda: http.post("/score", files=one("huge.png", big_png(60))),
        "too many images": lambda: http.post("/score", files=[("images", (f"{i}.png", b"x", "image/png"))
                                                              for i in range(4)]),
        "prompt count mismatch": lambda: http.post("/score", files=one("a.png", png_bytes(0)),
                                                   data={"prompts": ["one", "two"]}),
    }[case]
    response = send()
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (case, detail)
    assert http.post("/score", files=one("ok.png", png_bytes(3))).status_code == 200  # the service is still fine


def test_a_body_without_content_length_is_cut_off_at_the_upload_limit(limited):
    http, _ = limited
    boundary = "agiqa-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"s.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def chunks():  # streamed: httpx sends it chunked, with no Content-Length to refuse up front
        yield head
        for _ in range(10):
            yield b"\0" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = http.post("/score", content=chunks(), headers=headers)
    assert response.status_code == 413 and "upload limit of 20000 bytes" in response.json()["detail"]


def test_a_form_that_is_not_well_formed_or_lacks_images_is_a_client_error(limited):
    http, _ = limited
    headers = {"content-type": "multipart/form-data; boundary=agiqa-test-boundary"}
    garbage = http.post("/score", content=b"not a multipart body", headers=headers)
    assert garbage.status_code == 400 and garbage.json()["detail"] == "Invalid multipart data."
    no_boundary = http.post("/score", content=b"", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    no_images = http.post("/score", files=[("explain", (None, b"true"))])
    assert no_images.status_code == 422 and no_images.json()["detail"][0]["loc"] == ["body", "images"]
    text_image = http.post("/score", files=[("images", (None, b"a.png"))])
    assert text_image.status_code == 422 and text_image.json()["detail"][0]["loc"] == ["body", "images", 0]
    bad_flag = http.post("/score", files=one("a.png", png_bytes(0)), data={"explain": "maybe"})
    assert bad_flag.status_code == 422 and bad_flag.json()["detail"][0]["loc"] == ["body", "explain"]


def test_the_api_docs_show_the_upload_form(limited):
    http, _ = limited
    body = http.get("/openapi.json").json()["paths"]["/score"]["post"]["requestBody"]
    form = body["content"]["multipart/form-data"]["schema"]
    assert body["required"] and form["required"] == ["images"]
    assert set(form["properties"]) == {"images", "prompts", "explain"}
    assert form["properties"]["images"]["items"]["format"] == "binary"


def test_a_request_with_some_bad_images_scores_the_rest_and_ranks_them(limited):
    http, scorer = limited
    files = one("a.png", png_bytes(0)) + one("bad.png", b"nope") + one("b.png", png_bytes(1))
    body = http.post("/score", files=files).json()
    assert (body["n_scored"], body["n_failed"]) == (2, 1)
    a, bad, b = body["results"]
    assert bad["rank"] is None and bad["score"] is None and "bad.png" in bad["error"]
    assert {a["rank"], b["rank"]} == {1, 2} and (a["rank"] == 1) == (a["score"] > b["score"])
    direct = scorer.score([png_bytes(0), png_bytes(1)]).scores
    assert [a["score"], b["score"]] == pytest.approx(direct.tolist(), abs=1e-6)


def test_explain_returns_a_heat_map_of_where_the_score_comes_from(limited):
    http, scorer = limited
    image = Image.open(io.BytesIO(big_png(48))).convert("RGB").resize((48, 30))  # not square: the map keeps the shape
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    plain = http.post("/score", files=one("wide.png", buffer.getvalue())).json()["results"][0]
    explained = http.post("/score", files=one("wide.png", buffer.getvalue()), data={"explain": "true"}).json()
    result = explained["results"][0]
    assert "heatmap_png" not in plain and result["score"] == pytest.approx(plain["score"], abs=1e-6)
    heat = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
    assert heat.format == "PNG" and heat.mode == "RGBA" and heat.size == (48, 30)
    # The drawing follows the model's own map: the brightest patch centre is the map's largest patch, and patches
    # that add nothing (score 0) are darker than those that add to the score.
    with torch.no_grad():
        patch_map = scorer.model.explain(scorer.preprocess([image])["image"])["patch_map"][0].numpy()
    rows, cols = patch_map.shape
    grey = np.asarray(heat.convert("L"), dtype=float)
    centres = [grey[int((r + 0.5) * 30 / rows), int((c + 0.5) * 48 / cols)] for r in range(rows) for c in range(cols)]
    values, centres = patch_map.ravel(), np.array(centres)
    assert np.argmax(centres) == np.argmax(values)
    assert centres[values == 0].mean() < centres[values > 0].mean()
    assert http.get("/info").json()["heatmap"] is True


def test_explain_gives_gate_weights_and_expert_scores_of_ma_agiqa(client):
    http, scorer = client
    result = http.post("/score", files=one("a.png", png_bytes(0)), data={"explain": "true"}).json()["results"][0]
    assert list(result["gates"]) == list(result["experts"]) == scorer.expert_names == ["maniqa"]
    bias = scorer.model.output_fc.bias.detach().item()  # the AFM's gates are raw linear outputs, as released
    gate, expert = result["gates"]["maniqa"], result["experts"]["maniqa"]
    assert gate * (expert - bias) + bias == pytest.approx(result["score"], abs=1e-5)
    assert "heatmap_png" in result


def test_moe_agiqa_explains_its_top_k_experts():
    torch.manual_seed(0)
    model = create_model("test_moe_agiqa").eval()
    http = TestClient(create_app(Scorer(model, device="cpu", precision="fp32"), "moe"))
    result = http.post("/score", files=one("a.png", png_bytes(0)),
                       data={"prompts": ["two red circles"], "explain": "true"}).json()["results"][0]
    gates = np.array(list(result["gates"].values()))
    assert len(gates) == model.config.num_experts and (gates > 0).sum() == model.config.top_k
    assert "heatmap_png" not in result  # no per-patch scores in MoE-AGIQA: said by /info too
    assert http.get("/info").json()["heatmap"] is False


def test_page_metrics_and_info(limited):
    http, _ = limited
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http://" not in page.text and "https://" not in page.text  # works offline
    http.post("/score", files=one("ok.png", png_bytes(5)))
    http.post("/score", files=one("bad.png", b"nope"))
    info = http.get("/info").json()
    assert info["limits"]["max_images"] == 3 and info["limits"]["max_upload_bytes"] == 20_000
    text = http.get("/metrics").text
    assert 'agiqa_requests_total{path="/score",status="200"}' in text
    assert 'agiqa_requests_total{path="/score",status="422"}' in text
    assert 'agiqa_image_errors_total{kind="decode"}' in text
    assert "agiqa_batch_size_bucket" in text and "agiqa_request_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text


def test_multi_target_model_answers_every_target_beside_score():
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", semantic_experts=(), targets=("quality", "alignment"))
    scorer = Scorer(model, device="cpu")
    http = TestClient(create_app(scorer, "two-target"))
    assert http.get("/info").json()["targets"] == ["quality", "alignment"]
    files = [("images", ("a.png", png_bytes(0), "image/png")), ("images", ("bad.png", b"nope", "image/png"))]
    results = http.post("/score", files=files, data={"explain": "true"}).json()["results"]
    direct = scorer.score([Image.open(io.BytesIO(png_bytes(0)))]).scores
    assert direct.shape == (1, 2)
    assert results[0]["scores"] == pytest.approx({"quality": direct[0, 0], "alignment": direct[0, 1]}, abs=1e-5)
    assert results[0]["score"] == pytest.approx(direct[0, 0], abs=1e-5)
    assert set(results[0]["experts"]["maniqa"]) == {"quality", "alignment"}
    assert "scores" not in results[1] and results[1]["score"] is None
