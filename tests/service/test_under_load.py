"""The service under concurrent clients: requests share model batches and each gets its own scores back, the
event loop stays free while the model works and while an upload is parsed, a full queue answers 503 + Retry-After,
a slow answer 504."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx")

from agiqa.models import create_model  # noqa: E402
from agiqa.scoring.scorer import Scorer  # noqa: E402
from agiqa.service.app import create_app  # noqa: E402
from agiqa.service.batcher import MicroBatcher, QueueFull  # noqa: E402
from agiqa.service.limits import ServiceLimits  # noqa: E402

from ._server import serving, wait_until  # noqa: E402


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def scorer():
    torch.manual_seed(0)
    return Scorer(create_model("test_maniqa").eval(), device="cpu", precision="fp32", batch_size=8)


class Gate:
    """Wraps `scorer.predict_columns`: records batch sizes, and holds every batch until `open` is set."""

    def __init__(self, scorer):
        self.predict, self.sizes = scorer.predict_columns, []
        self.open, self.entered = threading.Event(), threading.Event()
        scorer.predict_columns = self

    def __call__(self, inputs, *args, **kwargs):
        self.entered.set()
        self.open.wait(30)
        self.sizes.append(len(next(iter(inputs.values()))))
        return self.predict(inputs, *args, **kwargs)


def test_concurrent_requests_share_batches_and_each_gets_its_own_scores(scorer):
    direct = scorer.score([png(i) for i in range(24)]).scores
    gate = Gate(scorer)
    with serving(create_app(scorer, "tiny", ServiceLimits(max_batch=8, max_wait_ms=20))) as url:
        def post(i):
            with httpx.Client(base_url=url, timeout=60) as http:
                return http.post("/score", files=[("images", (f"{i}.png", png(i), "image/png"))]).json()

        with ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(post, i) for i in range(24)]
            assert gate.entered.wait(30)
            # the other requests queue up behind the held first batch: the service says so in /health
            wait_until(lambda: httpx.get(f"{url}/health").json()["queued_images"] == 24, 30,
                       "all 24 images queued behind the held batch")
            gate.open.set()
            answers = [future.result() for future in futures]
    scores = [answer["results"][0]["score"] for answer in answers]
    assert [answer["results"][0]["filename"] for answer in answers] == [f"{i}.png" for i in range(24)]
    assert scores == pytest.approx(direct.tolist(), abs=1e-5)  # nobody got a neighbour's score
    assert sum(gate.sizes) == 24 and max(gate.sizes) == 8 and len(gate.sizes) < 24


def test_health_answers_while_the_model_is_busy(scorer):
    gate = Gate(scorer)
    with serving(create_app(scorer, "tiny")) as url, ThreadPoolExecutor(1) as pool:
        with httpx.Client(base_url=url, timeout=60) as http:
            busy = pool.submit(http.post, "/score", files=[("images", ("a.png", png(0), "image/png"))])
            assert gate.entered.wait(30)
            started = time.perf_counter()
            health = http.get("/health")
            seconds = time.perf_counter() - started
            gate.open.set()
            assert busy.result().status_code == 200
    assert health.status_code == 200 and health.json()["queued_images"] == 1 and seconds < 1.0


def busy(seconds: float) -> None:
    """CPU work in Python for `seconds`: it holds the GIL, which other threads get only at switch intervals."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_health_answers_while_a_large_upload_is_parsed(scorer, monkeypatch):
    """/health is answered while a multi-MB upload is being parsed: the form is parsed in a worker thread, not on the
    event loop. The parse is made to take 1.5 s of CPU (python-multipart's first `write` of the body spins first;
    the library's own speed depends on the machine), so that parsing on the loop would hold /health for 1.5 s."""
    from python_multipart import MultipartParser

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)).save(
        buffer, "PNG", compress_level=0)
    large = buffer.getvalue()
    assert len(large) > 4 * 2**20
    parsing, parsed, write = threading.Event(), threading.Event(), MultipartParser.write

    def slow_write(self, data):
        if not parsing.is_set():
            parsing.set()
            busy(1.5)
            parsed.set()
        return write(self, data)

    monkeypatch.setattr(MultipartParser, "write", slow_write)
    files = [("images", ("large.png", large, "image/png"))]
    with serving(create_app(scorer, "tiny")) as url, ThreadPoolExecutor(1) as pool:
        with httpx.Client(base_url=url, timeout=60) as http:
            upload = pool.submit(http.post, "/score", files=files)
            assert parsing.wait(30), "the upload was not parsed"
            started = time.perf_counter()
            health = http.get("/health")
            seconds = time.perf_counter() - started
            answered_while_parsing = not parsed.is_set()
            answer = upload.result()
    assert health.status_code == 200 and answered_while_parsing, f"/health took {seconds:.2f} s, after the parse"
    assert seconds < 0.5
    assert answer.status_code == 200 and answer.json()["n_scored"] == 1


def test_a_full_queue_answers_503_with_retry_after_and_a_slow_answer_504(scorer):
    gate = Gate(scorer)
    limits = ServiceLimits(max_batch=2, max_images=2, max_queue=2, timeout_s=1.0)
    with serving(create_app(scorer, "tiny", limits)) as url, ThreadPoolExecutor(1) as pool:
        with httpx.Client(base_url=url, timeout=60) as http:
            two = [("images", (f"{i}.png", png(i), "image/png")) for i in range(2)]
            held = pool.submit(http.post, "/score", files=two)
            assert gate.entered.wait(30)
            full = http.post("/score", files=two[:1])
            slow = held.result()  # held past timeout_s
            gate.open.set()
            wait_until(lambda: http.get("/health").json()["queued_images"] == 0, 30, "the queue drained")
            after = http.post("/score", files=two[:1])
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1 and "max_queue 2" in full.json()["detail"]
    assert slow.status_code == 504 and "timeout_s" in slow.json()["detail"]
    assert after.status_code == 200  # the queue drained; the service goes on


def test_timed_out_requests_are_not_scored():
    calls = []

    class Fake:
        def predict_columns(self, inputs, images, prompts, patch_maps=False):
            calls.append(inputs["x"].tolist())
            return {"score": inputs["x"].float().numpy()}

    batcher = MicroBatcher(Fake(), max_batch=4, max_wait_ms=50, max_queue=4)
    cancelled = batcher.submit({"x": torch.tensor([1, 2])}, [None, None])
    assert cancelled.cancel()  # what a 504 does before the batch is taken
    # the batcher takes a batch of cancelled images only (and releases them), and must go on
    wait_until(lambda: batcher.waiting == 0, 10, "the batcher dropped the cancelled images")
    kept = batcher.submit({"x": torch.tensor([3])}, [None])
    assert kept.result(10)["score"].tolist() == [3.0] and calls == [[3]]
    assert batcher.waiting == 0
    with pytest.raises(QueueFull):
        batcher.submit({"x": torch.arange(5)}, [None] * 5)
    batcher.close()


def grey_png(level: int, seed: int) -> bytes:
    """A noisy image of one grey level: images of different levels score clearly apart."""
    noise = np.random.default_rng(seed).normal(0, 8, (36, 44, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(level + noise, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_concurrent_prompt_model_requests_each_get_their_own_scores():
    torch.manual_seed(0)
    model = create_model("test_moe_agiqa").eval()
    # The tiny random model's scores all lie within ~0.02 of each other; its score heads (the linear layers with
    # one output) are scaled up so that different images and prompts score clearly apart.
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and layer.out_features == 1:
                layer.weight.mul_(1000)
    scorer = Scorer(model, device="cpu", precision="fp32", batch_size=4)
    prompts = [f"{count} red circles, flat style" for count in ("one", "two", "three", "four")] * 3
    images = [grey_png(10 + 20 * i, i) for i in range(12)]
    direct = scorer.score(images, prompts).scores
    tolerance = 1e-4  # batching the same inputs differently changes a score by ~4e-6 (float32 rounding)
    gaps = np.diff(np.sort(direct))
    assert gaps.min() > 100 * tolerance, f"the inputs do not score apart clearly enough: {np.sort(direct)}"
    with serving(create_app(scorer, "moe", ServiceLimits(max_batch=4, max_wait_ms=20))) as url:
        def post(i):
            with httpx.Client(base_url=url, timeout=60) as http:
                files = [("images", (f"{i}.png", images[i], "image/png"))]
                return http.post("/score", files=files, data={"prompts": [prompts[i]]}).json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(post, range(12)))
    # each answer is its own input's score, not a neighbour's (the nearest other score is > 100x tolerance away)
    assert [a["results"][0]["score"] for a in answers] == pytest.approx(direct.tolist(), abs=tolerance)
