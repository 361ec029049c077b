"""A flooding client, as its own process: `python _flood.py URL KEY RATE SECONDS` POSTs one-image requests to
URL/score with the key, paced at RATE per second from 8 threads for SECONDS; prints `ready` as it starts sending,
then one JSON line: the status of every request and the Retry-After of every 429.

It speaks HTTP/1.1 over plain sockets with one request prepared once (keep-alive, reconnecting when the server
closes): the flood costs the 2 shared cores little of the client's own CPU, so a test measures what the flood costs
the server, not what a heavyweight client costs the machine; a process of its own, so that its threads do not hold
the measuring client's GIL."""
from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

THREADS = 8


def request_bytes(host: str, key: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1000).integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(buffer, "PNG")
    boundary = "agiqa-flood"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"flood.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /score HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Connection:
    """One keep-alive connection; `send()` -> (status, headers) of the answer (its body is read and dropped)."""

    def __init__(self, address: tuple[str, int]):
        self.address, self.sock, self.buffer = address, None, b""

    def send(self, data: bytes) -> tuple[int, dict[str, str]]:
        for attempt in (0, 1):  # a connection the server closed meanwhile: once more on a new one
            try:
                if self.sock is None:
                    self.sock, self.buffer = socket.create_connection(self.address, timeout=30), b""
                self.sock.sendall(data)
                return self._answer()
            except (ConnectionError, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _answer(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        length = int(headers.get("content-length", 0))
        while len(self.buffer) < length:
            self._read()
        self.buffer = self.buffer[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def main(url: str, key: str, rate: float, seconds: float) -> None:
    parts = urlsplit(url)
    data = request_bytes(parts.netloc, key)
    statuses, retry_after, lock = [], [], threading.Lock()
    total, ready, start = int(rate * seconds), threading.Barrier(THREADS + 1), 0.0

    def sender(first: int) -> None:
        connection = Connection((parts.hostname, parts.port))
        ready.wait()
        for i in range(first, total, THREADS):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            status, headers = connection.send(data)
            with lock:
                statuses.append(status)
                if status == 429:
                    retry_after.append(int(headers["retry-after"]))
        connection.close()

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.05
    ready.wait()
    print("ready", flush=True)
    for thread in threads:
        thread.join()
    print(json.dumps({"statuses": statuses, "retry_after": retry_after, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
