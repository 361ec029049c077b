"""`agiqa serve` under load on loopback: many concurrent clients against the same requests sent one at a time.

    python benchmarks/bench_serve.py --out /tmp/bench_serve                           # tiny + full MANIQA
    python benchmarks/bench_serve.py --out /tmp/b --models tiny --requests 400 --clients 32 --sequential 100

For each model a real `agiqa serve` process (seeded random weights; weights do not change speed) gets a warm-up,
then `--sequential` requests one after another (one client), then `--requests` requests from `--clients`
concurrent clients (one image per request, `--size`² JPEGs). Meanwhile a prober GETs /health every 50 ms and the
server's resident memory is sampled every 200 ms. Printed per run: failed requests, latency p50/p95/p99, images/s
and its ratio to the sequential run (what micro-batching buys), the mean model batch (from /metrics), /health p99
while loaded, and the server's RSS after the first quarter of the loaded run, at its end and at peak.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by path: its sibling too
from bench_score import saved_model, write_jpegs  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)) / 1024


class Server:
    """`agiqa serve MODEL` in a child process on a free port."""

    def __init__(self, model: Path, batch_size: int, max_wait_ms: float, queue: int):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agiqa", "serve", str(model), "--port", self.url.rsplit(":", 1)[1], "--device",
             "cpu", "--batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms), "--max-queue", str(queue),
             "--timeout", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agiqa serve did not start: " + self.process.stderr.read().decode()[-2000:])
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def mean_batch(self) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        total = float(re.search(r"^agiqa_batch_size_sum ([\d.e+]+)", text, re.M).group(1))
        count = float(re.search(r"^agiqa_batch_size_count ([\d.e+]+)", text, re.M).group(1))
        return total / max(count, 1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def run_requests(url: str, files: list[str], n: int, clients: int) -> tuple[list[float], int, float]:
    """`n` POST /score (one image each, files in turn) from `clients` threads: (latencies s, failures, wall s)."""
    payloads = [Path(f).read_bytes() for f in files]
    latencies, failures, lock, counter = [], 0, threading.Lock(), iter(range(n))

    def client():
        nonlocal failures
        with httpx.Client(base_url=url, timeout=3600) as http:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                response = http.post("/score", files=[("images", (f"{index}.jpg", payloads[index % len(payloads)],
                                                                  "image/jpeg"))])
                with lock:
                    latencies.append(time.perf_counter() - started)
                    failures += response.status_code != 200 or response.json()["n_failed"] != 0

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return latencies, failures, time.perf_counter() - started


class Watcher:
    """Background /health latencies (every 50 ms) and server RSS samples (every 200 ms) until `stop`."""

    def __init__(self, server: Server):
        self.server, self.health, self.rss, self.done = server, [], [], threading.Event()
        self.threads = [threading.Thread(target=self._probe), threading.Thread(target=self._sample)]
        for thread in self.threads:
            thread.start()

    def _probe(self):
        with httpx.Client(base_url=self.server.url, timeout=60) as http:
            while not self.done.wait(0.05):
                started = time.perf_counter()
                http.get("/health")
                self.health.append(time.perf_counter() - started)

    def _sample(self):
        while not self.done.wait(0.2):
            self.rss.append(rss_mb(self.server.process.pid))

    def stop(self):
        self.done.set()
        for thread in self.threads:
            thread.join()


def percentiles(values: list[float]) -> tuple[float, float, float]:
    return tuple(float(np.percentile(values, q)) * 1000 for q in (50, 95, 99))


def bench_model(name: str, work: Path, files: list[str], args) -> list[dict]:
    server = Server(saved_model(work, name), args.batch_size, args.max_wait_ms, queue=max(256, args.requests))
    try:
        run_requests(server.url, files, 2, 1)  # warm-up
        rows = []
        latencies, failed, wall = run_requests(server.url, files, args.sequential, 1)
        rows.append({"model": name, "mode": "sequential", "clients": 1, "requests": args.sequential,
                     "failed": failed, "latency_ms": percentiles(latencies), "rate": args.sequential / wall})
        rss_before = rss_mb(server.process.pid)
        watcher = Watcher(server)
        latencies, failed, wall = run_requests(server.url, files, args.requests, args.clients)
        watcher.stop()
        quarter = watcher.rss[len(watcher.rss) // 4] if watcher.rss else rss_before
        rows.append({"model": name, "mode": "concurrent", "clients": args.clients, "requests": args.requests,
                     "failed": failed, "latency_ms": percentiles(latencies), "rate": args.requests / wall,
                     "ratio": args.requests / wall / rows[0]["rate"], "mean_batch": server.mean_batch(),
                     "health_p99_ms": percentiles(watcher.health)[2] if watcher.health else float("nan"),
                     "rss_mb": (quarter, watcher.rss[-1] if watcher.rss else rss_before,
                                max(watcher.rss, default=rss_before))})
        return rows
    finally:
        server.close()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "agiqa-bench-serve"))
    parser.add_argument("--models", nargs="+", default=["tiny", "maniqa"], choices=["tiny", "maniqa"])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="side of the JPEGs sent")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    work = Path(args.out)
    files = write_jpegs(work / f"jpegs-{args.size}", 32, args.size)
    print(f"{os.cpu_count()} CPUs, {args.size}² JPEG, one image per request, batch <= {args.batch_size}, "
          f"wait {args.max_wait_ms} ms; clients and server share this machine")
    print(f"{'model':7} {'mode':10} {'clients':>7} {'req':>5} {'fail':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'img/s':>7} {'vs seq':>6} {'batch':>5} {'health p99':>10}  RSS MB (1/4, end, peak)")
    rows = []
    for name in args.models:
        for row in bench_model(name, work, files, args):
            rows.append(row)
            p50, p95, p99 = row["latency_ms"]
            extra = ""
            if row["mode"] == "concurrent":
                extra = (f" {row['ratio']:>5.2f}x {row['mean_batch']:>5.1f} {row['health_p99_ms']:>10.1f}  "
                         + " / ".join(f"{mb:.0f}" for mb in row["rss_mb"]))
            print(f"{name:7} {row['mode']:10} {row['clients']:>7} {row['requests']:>5} {row['failed']:>4} "
                  f"{p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {row['rate']:>7.2f}{extra}")
    return rows


if __name__ == "__main__":
    main()
