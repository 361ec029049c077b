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
    """

    max_upload_bytes: int = 64 * 2**20
    max_images: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 60.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value < 0 or (value == 0 and name != "max_wait_ms"):
                raise ValueError(f"{name} must be positive, got {value}")
        if self.max_queue < self.max_images:
            raise ValueError(f"max_queue ({self.max_queue}) must hold one full request (max_images "
                             f"{self.max_images})")

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
