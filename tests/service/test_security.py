"""`agiqa serve` security (issue #32) against REAL `agiqa serve` processes on 127.0.0.1: keys (401 without the right
one, a key file of several keys, rotation by SIGHUP or by changing the file), the key never in a log line, /info
or /metrics, no start beyond loopback without a key (exit 2, one line) unless --allow-unauthenticated, and a fair
share: one client sending 10x its share gets 429s while another client's latency stays as when it runs alone."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from agiqa.cli import main  # noqa: E402
from agiqa.errors import AgiqaError  # noqa: E402
from agiqa.models import create_model  # noqa: E402
from agiqa.scoring.scorer import Scorer  # noqa: E402
from agiqa.runtime import bound_malloc_arenas  # noqa: E402
from agiqa.service.app import create_app  # noqa: E402
from agiqa.service.batcher import MicroBatcher  # noqa: E402
from agiqa.service.limits import ServiceLimits  # noqa: E402
from agiqa.service.security import (Access, ClientLimits, KeyRing, check_exposure, client_address,  # noqa: E402
                                    is_loopback_host, parse_networks)

from ._server import agiqa_serve, free_port, serving, wait_until  # noqa: E402
from .test_under_load import Gate  # noqa: E402

KEY_1, KEY_2, KEY_ENV = "k1-" + "a" * 29, "k2-" + "b" * 29, "kenv-" + "c" * 27
KEY_NEW, KEY_TOUCHED = "kn-" + "d" * 29, "ktouch-" + "e" * 25  # KEY_NEW: as long as KEY_1
WRONG = "wrong-" + "f" * 26
FLOOD = Path(__file__).with_name("_flood.py")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def one_image(seed: int = 0) -> list:
    return [("images", (f"{seed}.png", png(seed), "image/png"))]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("security") / "model"
    torch.manual_seed(0)
    create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(folder)
    return folder


def test_one_flooding_client_gets_429s_while_another_keeps_its_latency(model, tmp_path):
    """Client A (its own process) sends 10x its rate share (300 one-image requests/s against --client-rate 30)
    while client B sends a request every 100 ms: A gets 429s with Retry-After and no more than its share scored, B
    gets every answer, with a p99 latency within 2x of B sending the same requests alone (60 each)."""
    keys = tmp_path / "keys.txt"
    keys.write_text("client-a-" + "a" * 23 + "\nclient-b-" + "b" * 23 + "\n")
    key_a, key_b = keys.read_text().split()
    rate, flood_rate, b_requests, b_every_s = 30, 300, 60, 0.1
    with agiqa_serve(model, "--api-key-file", str(keys), "--client-rate", str(rate), "--client-burst", str(rate),
                     "--client-max-in-flight", "4", "--metrics-need-key") as served:
        def client_b(n: int = b_requests) -> list[float]:
            latencies = []
            with httpx.Client(base_url=served.url, headers=bearer(key_b), timeout=30) as http:
                start = time.perf_counter()
                for i in range(n):
                    time.sleep(max(0.0, start + i * b_every_s - time.perf_counter()))
                    began = time.perf_counter()
                    response = http.post("/score", files=one_image(i))
                    latencies.append(time.perf_counter() - began)
                    assert response.status_code == 200, response.text
            return latencies

        client_b(10)  # warm-up (first requests pay one-time costs)
        alone = client_b()
        seconds = b_requests * b_every_s + 1
        flood = subprocess.Popen([sys.executable, str(FLOOD), served.url, key_a, str(flood_rate), str(seconds)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert flood.stdout.readline().strip() == "ready"
            under_flood = client_b()
            out, _ = flood.communicate(timeout=seconds + 60)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        sent = json.loads(out)
        statuses, retry_after, flood_seconds = sent["statuses"], sent["retry_after"], sent["seconds"]
        # --metrics-need-key: /metrics is keyed too (open by default: test_a_keyed_service_...)
        assert httpx.get(f"{served.url}/metrics").status_code == 401
        metrics = httpx.get(f"{served.url}/metrics", headers=bearer(key_b)).text
        assert 'agiqa_client_limited_total{reason="rate"}' in metrics
    p99_alone, p99_flood = (float(np.percentile(values, 99)) * 1000 for values in (alone, under_flood))
    ok, limited = statuses.count(200), statuses.count(429)
    print(f"\nB alone: p50 {np.median(alone) * 1000:.1f} ms, p99 {p99_alone:.1f} ms; B under A's flood: p50 "
          f"{np.median(under_flood) * 1000:.1f} ms, p99 {p99_flood:.1f} ms; A sent {len(statuses)} requests in "
          f"{flood_seconds:.1f} s ({len(statuses) / flood_seconds:.0f}/s against a share of {rate}/s): {ok} scored, "
          f"{limited} got 429, other {len(statuses) - ok - limited}")
    assert limited > 0 and set(statuses) <= {200, 429} and min(retry_after) >= 1
    assert ok <= rate * flood_seconds + rate + 4  # A got no more than its share (+ the burst, + in flight)
    assert p99_flood <= 2 * p99_alone, (p99_alone, p99_flood)


def test_a_keyed_service_scores_only_with_a_key_and_never_shows_it(model, tmp_path):
    """Keys from a file (two, with a comment) and AGIQA_API_KEY: no key or a wrong one -> 401 with
    WWW-Authenticate; each right key scores as the Python API does. Rotation: SIGHUP re-reads the file (its mtime
    put back, so only the signal can tell), and a changed file is re-read by itself. /health, / and /info stay
    open; /metrics is open by default; CORS is off. No key in any log line, /info or /metrics."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# one key per line\n{KEY_1}\n\n{KEY_2}\n")
    image = png(7)
    expected = Scorer(model, device="cpu", precision="fp32").score([image]).scores[0]
    with agiqa_serve(model, "--api-key-file", str(keys), env={"AGIQA_API_KEY": KEY_ENV}) as served, \
            httpx.Client(base_url=served.url, timeout=30) as http:
        def post(key: str | None) -> httpx.Response:
            return http.post("/score", files=[("images", ("a.png", image, "image/png"))],
                             headers=bearer(key) if key else {})

        assert http.get("/health").status_code == 200 and http.get("/").status_code == 200
        info = http.get("/info")
        assert info.json()["auth"] == "bearer" and info.json()["unauthenticated"] is False

        missing = post(None)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="agiqa"'
        assert "Authorization: Bearer" in missing.json()["detail"]
        wrong = post(WRONG)
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert WRONG not in wrong.text  # the key sent is not echoed
        basic = http.post("/score", files=[("images", ("a.png", image, "image/png"))],
                          headers={"Authorization": f"Basic {KEY_1}"})
        assert basic.status_code == 401
        for key in (KEY_1, KEY_2, KEY_ENV):
            answer = post(key)
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"][0]["score"] == pytest.approx(expected, abs=1e-5)

        # rotation by SIGHUP: KEY_1 -> KEY_NEW (same length, mtime restored: the file looks unchanged)
        before = keys.stat()
        keys.write_text(f"# one key per line\n{KEY_NEW}\n\n{KEY_2}\n")
        os.utime(keys, ns=(before.st_atime_ns, before.st_mtime_ns))
        served.signal(signal.SIGHUP)
        wait_until(lambda: post(KEY_NEW).status_code == 200, 20, "the new key works after SIGHUP", every_s=0.1)
        assert post(KEY_1).status_code == 401 and post(KEY_2).status_code == 200
        # rotation by changing the file (no signal)
        keys.write_text(f"{KEY_TOUCHED}\n")
        wait_until(lambda: post(KEY_TOUCHED).status_code == 200, 20, "a changed key file is re-read", every_s=0.1)
        assert post(KEY_NEW).status_code == 401 and post(KEY_2).status_code == 401
        assert post(KEY_ENV).status_code == 200  # AGIQA_API_KEY is not in the file: it stays

        metrics = http.get("/metrics")
        assert metrics.status_code == 200  # open by default (--metrics-need-key: the flood test)
        assert 'agiqa_requests_total{path="/score",status="401"}' in metrics.text
        preflight = http.options("/score", headers={"Origin": "https://elsewhere.example",
                                                    "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "authorization"})
        simple = http.get("/info", headers={"Origin": "https://elsewhere.example"})
        assert not any(name.startswith("access-control-") for name in [*preflight.headers, *simple.headers])
        shown = {"/info": http.get("/info").text, "/metrics": metrics.text}
    log = served.log_text()
    assert "scoring needs a key" in log and "re-read the key file" in log and '"POST /score HTTP/1.1" 401' in log
    for key in (KEY_1, KEY_2, KEY_ENV, KEY_NEW, KEY_TOUCHED, WRONG):
        for where, text in {**shown, "the log": log}.items():
            assert key not in text, f"a key in {where}"
    lines = [line for line in log.splitlines() if any(key in line for key in (KEY_1, KEY_2, KEY_ENV, KEY_NEW))]
    assert lines == []


def test_serving_beyond_loopback_without_a_key_is_refused_in_one_line(model):
    env = {name: value for name, value in os.environ.items() if name != "AGIQA_API_KEY"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agiqa", "serve", str(model), "--host", "0.0.0.0", "--port",
                           str(free_port()), "--device", "cpu"], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --host 0.0.0.0 is reachable from other machines and no key is set")
    for hint in ("AGIQA_API_KEY", "--api-key-file", "--allow-unauthenticated"):
        assert hint in lines[0]
    assert "Created" not in done.stderr and time.monotonic() - started < 120  # refused before loading the model


def test_allow_unauthenticated_serves_beyond_loopback_and_says_so(model):
    with agiqa_serve(model, "--allow-unauthenticated", host="0.0.0.0") as served:
        info = httpx.get(f"{served.url}/info").json()
        scored = httpx.post(f"{served.url}/score", files=one_image(), timeout=30)
        log = served.log_text()
    assert info["unauthenticated"] is True and info["auth"] == "none"
    assert scored.status_code == 200
    port = served.url.rsplit(":", 1)[1]
    assert f"warning: serving 0.0.0.0:{port} without a key (--allow-unauthenticated)" in log


# --- the parts, without a process ---------------------------------------------------------------------------------

def test_the_exposure_rule_knows_loopback_from_everything_else():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback_host(host) and check_exposure(host, keyed=False, allow_unauthenticated=False) is False
    for host in ("0.0.0.0", "::", "192.0.2.10", "10.1.2.3"):
        assert not is_loopback_host(host)
        with pytest.raises(AgiqaError, match=f"--host {re.escape(host)} is reachable from other machines"):
            check_exposure(host, keyed=False, allow_unauthenticated=False)
        assert check_exposure(host, keyed=True, allow_unauthenticated=False) is False
        assert check_exposure(host, keyed=False, allow_unauthenticated=True) is True


@pytest.mark.parametrize("host", ["::", "192.0.2.10"])
def test_serve_refuses_other_hosts_without_a_key_before_anything_else(host, capsys, monkeypatch):
    monkeypatch.delenv("AGIQA_API_KEY", raising=False)
    assert main(["serve", "/no/such/model", "--host", host]) == 2  # refused before the model path is even looked at
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --host {host} is reachable")


def test_help_never_shows_the_key_of_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("AGIQA_API_KEY", KEY_ENV)
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert KEY_ENV not in out and "AGIQA_API_KEY" in out and "--client-max-in-flight" in out


def test_key_ring_rereads_its_file_and_fails_closed(tmp_path):
    now = [0.0]
    path = tmp_path / "keys.txt"
    path.write_text(f"{KEY_1}\n# a comment\n{KEY_2}\n")
    ring = KeyRing([KEY_ENV], path, check_every_s=1.0, clock=lambda: now[0])
    one, two, env = (ring.client_of(key) for key in (KEY_1, KEY_2, KEY_ENV))
    assert None not in (one, two, env) and len({one, two, env}) == 3 and ring.client_of(WRONG) is None
    assert all(KEY_1 not in name and KEY_2 not in name for name in (one, two))  # a name, not the key
    path.write_text(f"{KEY_NEW}\n")
    assert ring.client_of(KEY_NEW) is None  # checked at most every second
    now[0] = 1.5
    assert ring.client_of(KEY_NEW) is not None and ring.client_of(KEY_1) is None
    path.unlink()  # gone: none of its keys (not the last ones read), the fixed key stays
    now[0] = 3.0
    assert ring.client_of(KEY_NEW) is None and ring.client_of(KEY_ENV) == env
    path.write_text(f"{KEY_2}\n")
    assert ring.client_of(KEY_2) is None
    ring.request_reload()  # SIGHUP: at once
    assert ring.client_of(KEY_2) == two
    for bad, message in (("", "no key in it"), ("a key with spaces\n", "line 1 is not a key")):
        path.write_text(bad)
        with pytest.raises(AgiqaError, match=message) as refused:
            KeyRing([], path)
        assert "spaces\n" not in str(refused.value)  # the line is not shown
    with pytest.raises(AgiqaError, match="not found|No such file"):
        KeyRing([], tmp_path / "missing.txt")


def test_client_limits_count_requests_in_flight_and_images_per_second():
    now = [0.0]
    limits = ClientLimits(max_in_flight=2, rate=2.0, burst=3.0, clock=lambda: now[0])
    assert limits.admit("a") is None and limits.admit("a") is None
    refused = limits.admit("a")
    assert refused.reason == "in_flight" and refused.retry_after == 1
    assert limits.admit("b") is None  # another client is not affected
    limits.release("a")
    assert limits.admit("a") is None  # 3 of the burst of 3 taken
    limits.release("a")
    limits.release("a")
    refused = limits.admit("a")
    assert refused.reason == "rate" and refused.retry_after == 1 and "2 images/s" in refused.message
    now[0] = 0.5  # one image's token back
    assert limits.admit("a") is None
    limits.charge("a", 7)  # a request of 8 images: the bucket goes to -7; 4 s to get one token back
    limits.release("a")
    refused = limits.admit("a")
    assert refused.reason == "rate" and refused.retry_after == 4
    now[0] = 4.6
    assert limits.admit("a") is None
    limits.release("a")
    limits.release("b")
    now[0] = 100.0  # idle clients with a full bucket are forgotten
    limits.admit("c")
    assert set(limits.clients) == {"c"}
    unlimited = ClientLimits(max_in_flight=100, rate=0, burst=1)
    assert all(unlimited.admit("a") is None for _ in range(100))


def test_x_forwarded_for_counts_only_from_trusted_proxies():
    proxies = parse_networks(["10.0.0.5", "10.1.0.0/16"])
    assert client_address("10.0.0.5", ["203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("10.0.0.5", ["198.51.100.1, 203.0.113.7, 10.1.2.3"], proxies) == "203.0.113.7"
    assert client_address("10.0.0.5", ["198.51.100.1", "203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("192.0.2.1", ["203.0.113.7"], proxies) == "192.0.2.1"  # not a proxy: ignored
    assert client_address("10.0.0.5", ["203.0.113.7"], ()) == "10.0.0.5"  # no trusted proxies: ignored
    assert client_address("10.0.0.5", [], proxies) == "10.0.0.5"
    with pytest.raises(AgiqaError, match="--trusted-proxy proxy.local"):
        parse_networks(["proxy.local"])


@pytest.fixture(scope="module")
def scorer(model):
    return Scorer(model, device="cpu", precision="fp32")


@pytest.mark.parametrize("trusted", [True, False])
def test_each_forwarded_client_gets_its_own_share_behind_a_trusted_proxy(scorer, trusted):
    access = Access(trusted_proxies=parse_networks(["127.0.0.1"]) if trusted else ())
    limits = ServiceLimits(client_rate=0.01, client_burst=1)
    with serving(create_app(scorer, "tiny", limits, access)) as url, httpx.Client(base_url=url, timeout=30) as http:
        def post(address: str) -> int:
            return http.post("/score", files=one_image(), headers={"X-Forwarded-For": address}).status_code

        first, again, other = post("203.0.113.1"), post("203.0.113.1"), post("203.0.113.2")
    assert (first, again) == (200, 429)
    assert other == (200 if trusted else 429)  # untrusted: the header is ignored, both are 127.0.0.1


def test_one_client_cannot_fill_the_queue_for_the_others(scorer):
    """Two keys; the model held: client A's second 4-image request exceeds its share of the queue (4 of 8) and
    gets 429, while client B's request still gets a place (not 503) and both held requests are scored."""
    gate = Gate(scorer)
    limits = ServiceLimits(max_batch=2, max_images=4, max_queue=8, timeout_s=20)  # client_max_queued: max(4, 8 // 2)
    access = Access(keys=KeyRing([KEY_1, KEY_2]))
    four = [("images", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    try:
        with serving(create_app(scorer, "tiny", limits, access)) as url, ThreadPoolExecutor(2) as pool:
            def post(key: str) -> httpx.Response:
                return httpx.post(f"{url}/score", files=four, headers=bearer(key), timeout=60)

            held = pool.submit(post, KEY_1)
            assert gate.entered.wait(30)
            refused = post(KEY_1)
            b = pool.submit(post, KEY_2)
            wait_until(lambda: httpx.get(f"{url}/health").json()["queued_images"] == 8, 30, "B's images queued")
            gate.open.set()
            answers = held.result(), b.result()
    finally:
        gate.open.set()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "client_max_queued 4 of max_queue 8" in refused.json()["detail"]
    assert [answer.status_code for answer in answers] == [200, 200]
    with TestClient(create_app(scorer, "tiny", limits, access)) as http:
        assert http.get("/info").json()["limits"]["client_max_queued"] == 4


def test_batches_take_each_waiting_client_in_turn():
    """A client with 12 images waiting does not make two later clients wait behind all of them."""
    batches, entered, release = [], threading.Event(), threading.Event()

    class Fake:
        def predict_columns(self, inputs, images, prompts, patch_maps=False):
            entered.set()
            release.wait(30)
            batches.append(list(images))
            return {"score": np.zeros(len(images))}

    batcher = MicroBatcher(Fake(), max_batch=4, max_wait_ms=0, max_queue=64)
    a = batcher.submit({"x": torch.zeros(4, 1)}, ["a"] * 4, client="a")
    assert entered.wait(10)  # A's first 4 are being scored
    more = batcher.submit({"x": torch.zeros(12, 1)}, ["a"] * 12, client="a")
    b = batcher.submit({"x": torch.zeros(1, 1)}, ["b"], client="b")
    c = batcher.submit({"x": torch.zeros(1, 1)}, ["c"], client="c")
    release.set()
    for future in (a, more, b, c):
        future.result(10)
    batcher.close()
    assert batches[0] == ["a"] * 4 and sorted(batches[1]) == ["a", "a", "b", "c"]
    assert batcher.waiting == 0 and batcher.waiting_of("a") == 0


def test_gatekeeper_answers_before_the_route_deny_by_default_and_cors_only_for_named_origins(scorer):
    keyed = Access(keys=KeyRing([KEY_1]))
    with TestClient(create_app(scorer, "tiny", access=keyed)) as http:
        assert [http.get(path).status_code for path in ("/", "/health", "/info", "/metrics")] == [200] * 4
        assert http.get("/docs").status_code == 401 and http.get("/no-such-path").status_code == 401
        assert http.get("/docs", headers=bearer(KEY_1)).status_code == 200
        assert http.post("/score", content=b"x" * 10, headers={"content-type": "text/plain"}).status_code == 401
        assert "Access-Control-Allow-Origin" not in http.options(
            "/score", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}).headers
    metrics_keyed = Access(keys=KeyRing([KEY_1]), metrics_need_key=True)
    with TestClient(create_app(scorer, "tiny", access=metrics_keyed)) as http:
        assert http.get("/metrics").status_code == 401 and http.get("/health").status_code == 200
        assert http.get("/metrics", headers=bearer(KEY_1)).status_code == 200
        assert http.get("/info").json()["metrics_need_key"] is True
    cors = Access(keys=KeyRing([KEY_1]), cors_origins=("https://app.example",))
    with TestClient(create_app(scorer, "tiny", access=cors)) as http:
        asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = http.options("/score", headers={"Origin": "https://app.example", **asked})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = http.options("/score", headers={"Origin": "https://elsewhere.example", **asked})
        assert "access-control-allow-origin" not in other.headers
        refused = http.post("/score", files=one_image(), headers={"Origin": "https://app.example"})
        assert refused.status_code == 401  # ... and the page there can read why
        assert refused.headers["access-control-allow-origin"] == "https://app.example"


def test_serve_caps_malloc_arenas_unless_the_environment_does(monkeypatch):
    """The soak's fix (docs/scoring.md, "Memory over a long run"): glibc's arenas capped at 2 by `agiqa serve`."""
    import platform

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert bound_malloc_arenas() is False  # the operator's value stands
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert bound_malloc_arenas() is expected
