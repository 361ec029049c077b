"""Dynamic micro-batching: images of concurrent requests share model batches on one inference thread, so the
event loop stays free (GET /health answers while the model works) and a busy service runs full batches.

    batcher = MicroBatcher(scorer, max_batch=16, max_wait_ms=5, max_queue=256)
    future = batcher.submit(images, prompts, explain=False)   # raises QueueFull when 256 images already wait
    columns = future.result()                                 # one dict of per-image values per request
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


class QueueFull(Exception):
    """More images wait for the model than the queue holds; `retry_after` (s) estimates when there is room."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} images are waiting for the model")
        self.waiting, self.retry_after = waiting, retry_after


@dataclass(eq=False)  # compared (and hashed) by identity
class Request:
    """One request's preprocessed images; its future gets the columns of all of them at once."""

    inputs: dict
    images: list
    prompts: list[str] | None
    explain: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    parts: list = field(default_factory=list)
    done: int = 0

    def __len__(self) -> int:
        return len(self.images)


class MicroBatcher:
    """Collects up to `max_batch` images (waiting at most `max_wait_ms` for more after the first) and scores them
    with `scorer.predict_columns` (the same call `agiqa score` makes); at most `max_queue` images wait."""

    def __init__(self, scorer, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None):
        self.scorer, self.max_batch, self.max_wait, self.max_queue = scorer, max_batch, max_wait_ms / 1000, max_queue
        self.on_batch = on_batch
        self._queue: queue.Queue[tuple[Request, int]] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._seconds_per_image = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def waiting(self) -> int:
        """Images queued or in the batch being scored."""
        return self._waiting

    def submit(self, inputs: dict, images: Sequence, prompts: Sequence[str] | None = None,
               explain: bool = False) -> concurrent.futures.Future:
        """Queue one request's preprocessed `inputs` (and decoded images, for a semantic encoder); the future's
        result is `predict_columns`' dict for them, in order."""
        request = Request(inputs, list(images), list(prompts) if prompts is not None else None, explain)
        with self._lock:
            if self._waiting + len(request) > self.max_queue:
                raise QueueFull(self._waiting, self.retry_after())
            self._waiting += len(request)
            self._start()
        for index in range(len(request)):
            self._queue.put((request, index))
        return request.future

    def retry_after(self) -> int:
        """Seconds until the queue has drained at the recent speed (at least 1)."""
        return max(1, round(self._waiting * self._seconds_per_image + 0.5))

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
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = self._collect(first)
            if not batch:  # every image collected belonged to requests that timed out meanwhile
                continue
            started = time.perf_counter()
            self._score(batch)
            seconds = time.perf_counter() - started
            self._seconds_per_image = seconds / len(batch)
            self.on_batch(len(batch), seconds)

    def _collect(self, first: tuple[Request, int]) -> list[tuple[Request, int]]:
        """The first image plus whatever arrives within `max_wait` (up to `max_batch`); cancelled requests (timed
        out, or failed) are dropped here, before any work is spent on them."""
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get(timeout=max(deadline - time.perf_counter(), 0)))
            except queue.Empty:
                break
        live = [(request, index) for request, index in batch if not request.future.done()]
        self._release(len(batch) - len(live))
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
            self._release(len(batch))
            return
        for position, (request, index) in enumerate(batch):
            request.parts.append((index, {name: values[position] for name, values in columns.items()}))
            request.done += 1
            if request.done == len(request):
                _settle(request.future, _in_order(request.parts))
        self._release(len(batch))

    def _release(self, count: int) -> None:
        with self._lock:
            self._waiting -= count


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
