"""Real servers for tests: `serving(app)` runs an app under uvicorn in a thread (tests that need concurrency);
`agiqa_serve(model, ...)` runs the `agiqa serve` command as a process on 127.0.0.1 with its output in a log file
(tests of the command line, the page and security); `wait_until` polls with a deadline instead of sleeping."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def serving(app):
    """Yields the base URL of `app` served on 127.0.0.1 (a free port); stops it on exit."""
    import uvicorn

    # proxy_headers off, as `agiqa serve` runs it (X-Forwarded-For counts from --trusted-proxy addresses only)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.02) -> None:
    """Polls `predicate()` until it is true; fails naming `what` after `timeout_s` (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running `agiqa serve`: its URL, process and log file (stdout and stderr together)."""

    url: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, number: int = signal.SIGHUP) -> None:
        self.process.send_signal(number)


@contextlib.contextmanager
def agiqa_serve(model: Path, *flags: str, env: dict | None = None, log: Path | None = None, host: str = "127.0.0.1",
                start_timeout_s: float = 180):
    """`python -m agiqa serve MODEL --port P --device cpu --precision fp32 FLAGS` as a real process; yields a
    `Served` once GET /health answers on 127.0.0.1:P (fails with the log after `start_timeout_s`); stops it on exit."""
    import httpx

    port = free_port()
    log = log or Path(model).parent / f"serve-{port}.log"
    command = [sys.executable, "-m", "agiqa", "serve", str(model), "--host", host, "--port", str(port), "--device",
               "cpu", "--precision", "fp32", *flags]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    served = Served(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{served.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agiqa serve did not start within {start_timeout_s:g} s:\n{served.log_text()}")
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
