"""Dynamic micro-batching: images of concurrent requests share model batches on one inference thread, so the
event loop stays free (GET /health answers while the model works) and a busy service runs full batches.

    batcher = MicroBatcher(scorer, max_batch=16, max_wait_ms=5, max_queue=256, client_share=128)
    future = batcher.submit(inputs, images, prompts, client="key:ab12")  # QueueFull when 256 images already wait,
    columns = future.result()                          # ClientShareFull when this client has 128 waiting;
                                                       # one dict of per-image values per request

Each client's images wait in their own lane and batches take one image of each waiting client in turn (round
robin), so a client with a long backlog delays another client's image by at most one image per batch, not by its
whole backlog.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


class QueueFull(Exception):
    """More images wait for the model than the queue holds; `retry_after` (s) estimates when there is room."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} images are waiting for the model")
        self.waiting, self.retry_after = waiting, retry_after


class ClientShareFull(QueueFull):
    """This client already has `waiting` images queued, and `share` is all one client may have."""

    def __init__(self, waiting: int, share: int, retry_after: int):
        super().__init__(waiting, retry_after)
        self.share = share


@dataclass(eq=False)  # compared (and hashed) by identity
class Request:
    """One request's preprocessed images; its future gets the columns of all of them at once."""

    inputs: dict
    images: list
    prompts: list[str] | None
    explain: bool
    client: Hashable = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    parts: list = field(default_factory=list)
    done: int = 0

    def __len__(self) -> int:
        return len(self.images)


class MicroBatcher:
    """Collects up to `max_batch` images (waiting at most `max_wait_ms` for more after the first) and scores them
    with `scorer.predict_columns` (the same call `agiqa score` makes); at most `max_queue` images wait, at most
    `client_share` of them from one client, and batches take the waiting clients' images in turn."""

    def __init__(self, scorer, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None, client_share: int | None = None):
        self.scorer, self.max_batch, self.max_wait, self.max_queue = scorer, max_batch, max_wait_ms / 1000, max_queue
        self.client_share = client_share or max_queue
        self.on_batch = on_batch
        self._lanes: dict[Hashable, deque[tuple[Request, int]]] = {}  # client -> its images; order = whose turn
        self._per_client: dict[Hashable, int] = {}  # client -> images queued or in the batch being scored
        self._waiting = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._seconds_per_image = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def waiting(self) -> int:
        """Images queued or in the batch being scored."""
        return self._waiting

    def waiting_of(self, client: Hashable) -> int:
        """Images of one client queued or in the batch being scored."""
        return self._per_client.get(client, 0)

    def submit(self, inputs: dict, images: Sequence, prompts: Sequence[str] | None = None,
               explain: bool = False, client: Hashable = None) -> concurrent.futures.Future:
        """Queue one request's preprocessed `inputs` (and decoded images, for a semantic encoder) in `client`'s
        lane; the future's result is `predict_columns`' dict for them, in order."""
        request = Request(inputs, list(images), list(prompts) if prompts is not None else None, explain, client)
        with self._lock:
            mine = self._per_client.get(client, 0)
            if self.client_share < self.max_queue and mine + len(request) > self.client_share:
                raise ClientShareFull(mine, self.client_share, self._retry_after(mine))
            if self._waiting + len(request) > self.max_queue:
                raise QueueFull(self._waiting, self.retry_after())
            self._waiting += len(request)
            self._per_client[client] = mine + len(request)
            lane = self._lanes.setdefault(client, deque())  # a new client joins at the end of the turn order
            lane.extend((request, index) for index in range(len(request)))
            self._ready.notify()
            self._start()
        return request.future

    def retry_after(self) -> int:
        """Seconds until the queue has drained at the recent speed (at least 1)."""
        return self._retry_after(self._waiting)

    def _retry_after(self, images: int) -> int:
        return max(1, round(images * self._seconds_per_image + 0.5))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agiqa-batcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._take(0.1)
            if first is None:
                continue
            batch = self._collect(first)
            if not batch:  # every image collected belonged to requests that timed out meanwhile
                continue
            started = time.perf_counter()
            self._score(batch)
            seconds = time.perf_counter() - started
            self._seconds_per_image = seconds / len(batch)
            self.on_batch(len(batch), seconds)

    def _take(self, timeout: float) -> tuple[Request, int] | None:
        """The next image of the client whose turn it is (that client then goes to the end of the turn order), or
        None when none arrives within `timeout` s."""
        with self._ready:
            if not self._lanes:
                self._ready.wait(timeout)
                if not self._lanes:
                    return None
            client = next(iter(self._lanes))
            lane = self._lanes.pop(client)
            item = lane.popleft()
            if lane:
                self._lanes[client] = lane
            return item

    def _collect(self, first: tuple[Request, int]) -> list[tuple[Request, int]]:
        """The first image plus whatever arrives within `max_wait` (up to `max_batch`); cancelled requests (timed
        out, or failed) are dropped here, before any work is spent on them."""
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            item = self._take(max(deadline - time.perf_counter(), 0))
            if item is None:
                break
            batch.append(item)
        live, dropped = [], []
        for request, index in batch:  # one look at each future: it may be cancelled meanwhile
            (dropped if request.future.done() else live).append((request, index))
        self._release([request for request, _ in dropped])
        return live

    def _score(self, batch: list[tuple[Request, int]]) -> None:
        requests = [request for request, _ in batch]
        try:
            inputs = {name: torch.cat([request.inputs[name][index:index + 1] for request, index in batch])
                      for name in requests[0].inputs}
            images = [request.images[index] for request, index in batch]
            prompts = ([request.prompts[index] for request, index in batch]
                       if all(request.prompts is not None for request in requests) else None)
            columns = self.scorer.predict_columns(inputs, images, prompts,
                                                  patch_maps=any(request.explain for request in requests))
        except Exception as err:  # noqa: BLE001 - the requests get the error; the service keeps running
            for request in dict.fromkeys(requests):
                _settle(request.future, error=err)
            self._release(requests)
            return
        for position, (request, index) in enumerate(batch):
            request.parts.append((index, {name: values[position] for name, values in columns.items()}))
            request.done += 1
            if request.done == len(request):
                _settle(request.future, _in_order(request.parts))
        self._release(requests)

    def _release(self, requests: list[Request]) -> None:
        """One image of each request listed (a request once per image) is no longer waiting."""
        if not requests:
            return
        with self._lock:
            self._waiting -= len(requests)
            for request in requests:
                left = self._per_client[request.client] - 1
                if left:
                    self._per_client[request.client] = left
                else:
                    del self._per_client[request.client]


def _settle(future: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    """Result or error into a future that its request may have cancelled meanwhile (a timeout): then dropped."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _in_order(parts: list[tuple[int, dict]]) -> dict[str, np.ndarray]:
    """Per-image dicts, by image index -> one dict of arrays (row i = image i)."""
    rows = [row for _, row in sorted(parts, key=lambda part: part[0])]
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}
