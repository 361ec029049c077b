"""Soak of `agiqa serve`: a long run of requests against one real server process on loopback, its resident memory
recorded after every phase, to show whether it levels off (issue #32).

    python benchmarks/soak_serve.py                                     # 50,000 requests, phases of 5,000
    python benchmarks/soak_serve.py --requests 20000 --server-env MALLOC_ARENA_MAX=2   # the server's environment

The server serves the tiny MA-AGIQA (`create_model("test_ma_agiqa", semantic_experts=())`, seeded random weights)
with a key (AGIQA_API_KEY, so the key check and the per-client limits run on every request) and its default limits.
`--clients` threads send one JPEG per request over keep-alive connections (the standard library's http.client:
light, so that most of the 2 shared cores go to the server); the JPEGs take turns among four sizes (256² to 1024²)
so that the decode threads allocate buffers of different sizes, as real uploads do. Printed per phase: requests so
far, failures (any status but 200: a 429 of the per-client limits counts), images/s, latency p50/p99, and the
server's RSS, peak RSS and threads (/proc/PID/status at the phase's end). Needs Linux (/proc). Numbers in
docs/scoring.md ("Memory over a long run").
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

KEY = "soak-" + "k" * 27
SIZES = (256, 512, 768, 1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) and Threads of a process."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {name: int(re.search(rf"^{name}:\s+(\d+)", text, re.M).group(1)) for name in ("VmRSS", "VmHWM", "Threads")}


def jpeg_bodies(n: int) -> list[tuple[bytes, str]]:
    """`n` multipart bodies (one JPEG each, sizes in turn) and their content type."""
    rng, bodies, boundary = np.random.default_rng(0), [], "agiqa-soak"
    for i in range(n):
        size = SIZES[i % len(SIZES)]
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        base = ramp[:, None, None] * rng.uniform(0, 1, 3) + ramp[None, :, None] * rng.uniform(0, 1, 3)
        image = np.clip(base / 2 + rng.normal(0, 12, (size, size, 3)) + 32, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=90)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
        bodies.append((body, f"multipart/form-data; boundary={boundary}"))
    return bodies


class Server:
    """`agiqa serve MODEL` (with AGIQA_API_KEY) on a free loopback port; its output goes to a log file."""

    def __init__(self, model: Path, log: Path, env: dict[str, str], flags: list[str]):
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agiqa", "serve", str(model), "--port", str(self.port), "--device", "cpu",
                 "--precision", "fp32", *flags], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "AGIQA_API_KEY": KEY, **env})
        deadline = time.monotonic() + 300
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agiqa serve did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def run_phase(port: int, bodies: list, n: int, clients: int, offset: int) -> tuple[list[float], dict[int, int], float]:
    """`n` POST /score from `clients` threads over keep-alive connections: (latencies s, statuses, wall s)."""
    latencies, statuses, lock, counter = [], {}, threading.Lock(), iter(range(n))

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                connection.close()
                return
            body, content_type = bodies[(offset + index) % len(bodies)]
            started = time.perf_counter()
            try:
                connection.request("POST", "/score", body, {"Content-Type": content_type,
                                                            "Authorization": f"Bearer {KEY}"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                status = 0
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses, time.perf_counter() - started


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "agiqa-soak-serve"))
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--phase", type=int, default=5_000, help="requests per phase (RSS recorded after each)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the server process (e.g. MALLOC_ARENA_MAX=2)")
    parser.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                        help="an extra flag of agiqa serve (repeat; e.g. --server-flag=--batch-size=8)")
    args = parser.parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny-ma-agiqa"
    if not (model / "config.json").is_file():
        import torch

        from agiqa.models import create_model

        torch.manual_seed(0)
        create_model("test_ma_agiqa", semantic_experts=()).save_pretrained(model)
    bodies = jpeg_bodies(32)
    env = dict(item.split("=", 1) for item in args.server_env)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"{os.cpu_count()} CPUs ({cpu}); {args.requests} requests in phases of {args.phase}, {args.clients} "
          f"clients, one JPEG of {'/'.join(map(str, SIZES))} px per request in turn; server env {env or '-'}; "
          f"flags {args.server_flag or '-'}", flush=True)
    server = Server(model, work / "serve.log", env, args.server_flag)
    rows = []
    try:
        start = proc_status(server.process.pid)
        print(f"started: RSS {start['VmRSS'] / 1024:.0f} MB, {start['Threads']} threads", flush=True)
        print(f"{'phase':>5} {'requests':>8} {'failed':>6} {'img/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7} "
              f"{'peak MB':>7} {'threads':>7}", flush=True)
        done, began = 0, time.perf_counter()
        while done < args.requests:
            n = min(args.phase, args.requests - done)
            latencies, statuses, wall = run_phase(server.port, bodies, n, args.clients, done)
            done += n
            status = proc_status(server.process.pid)
            row = {"phase": len(rows) + 1, "requests": done, "failed": n - statuses.get(200, 0), "rate": n / wall,
                   "p50_ms": float(np.percentile(latencies, 50)) * 1000,
                   "p99_ms": float(np.percentile(latencies, 99)) * 1000, "rss_mb": status["VmRSS"] / 1024,
                   "peak_mb": status["VmHWM"] / 1024, "threads": status["Threads"], "statuses": statuses}
            rows.append(row)
            print(f"{row['phase']:>5} {done:>8} {row['failed']:>6} {row['rate']:>6.1f} {row['p50_ms']:>7.1f} "
                  f"{row['p99_ms']:>7.1f} {row['rss_mb']:>7.0f} {row['peak_mb']:>7.0f} {row['threads']:>7}"
                  + (f"  statuses {statuses}" if row["failed"] else ""), flush=True)
        print(f"{done} requests in {time.perf_counter() - began:.0f} s", flush=True)
    finally:
        server.close()
    return rows


if __name__ == "__main__":
    main()
