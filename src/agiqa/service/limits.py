"""What the service accepts, and the size guard that refuses an oversize body before it is read."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from agiqa.data.images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServiceLimits:
    """Limits of `agiqa serve` (command-line flags of the same names; reported by GET /info).

    max_upload_bytes: whole request body (413); max_images: images per request (413); max_pixels: pixels per
    image (decompression bombs included; 413); max_batch / max_wait_ms: a model batch collects up to `max_batch`
    images of concurrent requests, waiting at most `max_wait_ms` for more; max_queue: images waiting for the model
    before new requests get 503 + Retry-After; timeout_s: a request not answered by then gets 504.

    Per client (its key, or its address without keys), 429 + Retry-After past: client_max_in_flight requests at
    once (default max(2, max_queue // 4)); client_rate images per second on average with bursts of client_burst
    images (default max(client_rate, max_images); client_rate 0: no rate limit); client_max_queued images waiting
    for the model (default max(max_images, max_queue // 2), so that one client leaves room for the others).
    """

    max_upload_bytes: int = 64 * 2**20
    max_images: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 60.0
    client_max_in_flight: int | None = None
    client_rate: float = 1000.0
    client_burst: float | None = None
    client_max_queued: int | None = None

    def __post_init__(self):
        derived = {"client_max_in_flight": lambda: max(2, self.max_queue // 4),
                   "client_burst": lambda: max(self.client_rate, self.max_images),
                   "client_max_queued": lambda: max(self.max_images, self.max_queue // 2)}
        for name, value in asdict(self).items():
            if value is None:
                continue
            if value < 0 or (value == 0 and name not in ("max_wait_ms", "client_rate")):
                raise ValueError(f"{name} must be positive, got {value}")
        for name, default in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default())
        if self.max_queue < self.max_images:
            raise ValueError(f"max_queue ({self.max_queue}) must hold one full request (max_images "
                             f"{self.max_images})")
        if not self.max_images <= self.client_max_queued <= self.max_queue:
            raise ValueError(f"client_max_queued ({self.client_max_queued}) must hold one full request (max_images "
                             f"{self.max_images}) and fit in the queue (max_queue {self.max_queue})")
        if self.client_rate > 0 and self.client_burst < 1:
            raise ValueError(f"client_burst ({self.client_burst}) must be at least 1 image")

    def as_dict(self) -> dict:
        return asdict(self)


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, from its Content-Length before reading anything, or
    counted while it streams in (no Content-Length, or a false one: the endpoint reading it gets a 413 error)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, int(declared))
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                from starlette.exceptions import HTTPException

                raise HTTPException(413, self.message(received))
            return message

        await self.app(scope, counting_receive, send)

    def message(self, size: int) -> str:
        return (f"request body of {size} bytes or more is over the upload limit of {self.limit} bytes "
                "(max_upload_bytes, `agiqa serve --max-upload-mb`)")

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"detail": self.message(size)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class MultipartOnly:
    """ASGI middleware: 415 for a POST to `path` whose body is not multipart/form-data (before reading it)."""

    def __init__(self, app, path: str):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == self.path and scope["method"] == "POST":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
            if not content_type.startswith("multipart/form-data"):
                body = json.dumps({"detail": f"POST {self.path} takes multipart/form-data (fields `images`, "
                                   f"`prompts`, `explain`), not {content_type or 'a body without a content type'}"})
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body.encode())).encode())]})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)
