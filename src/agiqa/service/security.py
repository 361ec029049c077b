"""Who may score, and how much (issue #32): API keys (`Authorization: Bearer <key>`), no start beyond loopback
without one, and a fair share per client so that one client flooding the service cannot push the others into 503s.

    keys = KeyRing(["s3cret..."], file="keys.txt")        # --api-key / AGIQA_API_KEY, --api-key-file (re-read)
    access = Access(keys=keys, trusted_proxies=parse_networks(["10.0.0.5"]))
    create_app(scorer, limits=ServiceLimits(client_max_in_flight=8, client_rate=50), access=access)

A client is its key when the service has keys, else its address (`X-Forwarded-For` counts only from
`--trusted-proxy` addresses). Keys are kept as SHA-256 digests, compared with `hmac.compare_digest`, and never
written anywhere: not in logs, /info, /metrics or error messages.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agiqa.errors import AgiqaError

log = logging.getLogger("agiqa.service")

OPEN_PATHS = frozenset({"/", "/health", "/info"})  # everything else needs the key (deny by default)
SHORT_KEY = 16  # characters; shorter keys get a warning at start-up
KEY_HINT = ("python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one; set AGIQA_API_KEY=KEY, or "
            "--api-key-file FILE with one key per line")
CLIENT_SCOPE_KEY = "agiqa.client"  # where the gatekeeper leaves the client's identity for the endpoint


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _is_key(text: str) -> bool:
    """A key fits an HTTP header unchanged: printable ASCII, no spaces."""
    return bool(text) and all("!" <= char <= "~" for char in text)


class KeyRing:
    """The keys a client may send: `keys` (--api-key, AGIQA_API_KEY) and the lines of `file` (--api-key-file;
    blank lines and `#` comments skipped). The file is re-read when it changes (checked at most every
    `check_every_s` seconds, at a request) or after `request_reload()` (SIGHUP). A file that is gone or empty at a
    re-read accepts none of its keys until it is back (fail closed), with a warning in the log."""

    def __init__(self, keys: Iterable[str] = (), file: str | Path | None = None, check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        keys = list(keys)
        for key in keys:
            if not _is_key(key):
                raise AgiqaError("--api-key / AGIQA_API_KEY: a key is printable ASCII without spaces (it goes into an "
                                 "`Authorization: Bearer` header)")
        self._fixed = [_digest(key) for key in keys]
        self.file = Path(file) if file is not None else None
        self.check_every_s, self.clock = check_every_s, clock
        self._file_keys: list[bytes] = []
        self._signature: tuple | None = None
        self._checked = clock()
        self._reload = False
        self.short = sum(len(key) < SHORT_KEY for key in keys)
        if self.file is not None:
            self._signature = self._signature_now()
            self._file_keys = self._read(strict=True)
        if not self._fixed and not self._file_keys:
            raise AgiqaError(f"no key given ({KEY_HINT})")

    def __len__(self) -> int:
        return len(self._fixed) + len(self._file_keys)

    def request_reload(self) -> None:
        """Re-read the key file at the next request (the SIGHUP handler; safe in a signal handler)."""
        self._reload = True

    def client_of(self, token: str) -> str | None:
        """An opaque name of the client sending `token` (from the key's digest, never the key), or None when no
        key matches. Every key is compared, each in constant time."""
        self._refresh()
        sent, match = _digest(token), None
        for key in (*self._fixed, *self._file_keys):
            if hmac.compare_digest(sent, key):
                match = key
        return None if match is None else "key:" + hashlib.sha256(b"agiqa-client" + match).hexdigest()[:12]

    def _refresh(self) -> None:
        if self.file is None:
            return
        now = self.clock()
        if not self._reload and now - self._checked < self.check_every_s:
            return
        forced, self._reload, self._checked = self._reload, False, now
        signature = self._signature_now()
        if forced or signature != self._signature:
            self._signature = signature
            self._file_keys = self._read(strict=False)
            log.info("re-read the key file %s: %d key(s)", self.file, len(self._file_keys))

    def _signature_now(self) -> tuple | None:
        try:
            stat = self.file.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _read(self, strict: bool) -> list[bytes]:
        """The keys of the file; at start-up (`strict`) a problem is an error, later a warning (and no file keys)."""
        def problem(message: str) -> list[bytes]:
            if strict:
                raise AgiqaError(f"--api-key-file {self.file}: {message}")
            log.warning("key file %s: %s; none of its keys is accepted until it is fixed", self.file, message)
            return []

        try:
            lines = self.file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            return problem(getattr(err, "strerror", None) or str(err.__class__.__name__))
        keys = []
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if not _is_key(text):  # the line is not shown: it may be a key with a typo
                return problem(f"line {number} is not a key (printable ASCII without spaces)")
            keys.append(text)
        if not keys:
            return problem(f"no key in it (one key per line; {KEY_HINT.split(';')[0]})")
        if strict:
            self.short += sum(len(key) < SHORT_KEY for key in keys)
        return [_digest(key) for key in keys]


def parse_networks(values: Iterable[str]) -> tuple:
    """`--trusted-proxy` values (addresses or networks, e.g. 10.0.0.5, 10.0.0.0/24, ::1) as ip_network objects."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise AgiqaError(f"--trusted-proxy {value}: not an IP address or network (e.g. 10.0.0.5 or "
                             "10.0.0.0/24)") from None
    return tuple(networks)


def _address(text: str):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if getattr(address, "ipv4_mapped", None) is not None:
        return address.ipv4_mapped
    return address


def _trusted(text: str, networks: tuple) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple) -> str:
    """The client's address: the peer's, or where the peer is a trusted proxy, the nearest address in
    `X-Forwarded-For` (read from the right) that is not a trusted proxy itself. A header from anyone else is
    ignored: a client cannot pick its own identity (and so its own share) by sending one."""
    peer = peer or "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def is_loopback_host(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AgiqaError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    addresses = [_address(info[4][0]) for info in infos]
    return bool(addresses) and all(address is not None and address.is_loopback for address in addresses)


def check_exposure(host: str, keyed: bool, allow_unauthenticated: bool) -> bool:
    """Refuse to serve beyond loopback without a key; True when it will (--allow-unauthenticated)."""
    if keyed or is_loopback_host(host):
        return False
    if not allow_unauthenticated:
        raise AgiqaError(f"--host {host} is reachable from other machines and no key is set: set AGIQA_API_KEY=KEY "
                         "or pass --api-key-file FILE (one key per line) so that only clients with the key can score, "
                         "or pass --allow-unauthenticated to serve it to anyone")
    return True


@dataclass
class Access:
    """Who may call the service: `keys` (None: anyone), whether /metrics needs the key too, proxies whose
    `X-Forwarded-For` names the client, origins allowed by CORS (none: CORS off), and whether the service is
    reachable beyond loopback without a key (--allow-unauthenticated; said by /info)."""

    keys: KeyRing | None = None
    metrics_need_key: bool = False
    trusted_proxies: tuple = ()
    cors_origins: tuple[str, ...] = ()
    unauthenticated: bool = False

    def is_open(self, path: str) -> bool:
        return path in OPEN_PATHS or (path == "/metrics" and not self.metrics_need_key)

    def as_dict(self) -> dict:
        """What /info says (nothing secret: no key, no number of keys)."""
        return {"auth": "bearer" if self.keys is not None else "none", "unauthenticated": self.unauthenticated,
                "metrics_need_key": self.keys is not None and self.metrics_need_key}


@dataclass
class _Client:
    in_flight: int = 0
    tokens: float = 0.0
    updated: float = 0.0


@dataclass
class Refusal:
    """Why a client's request is refused (429), and after how many seconds it may try again."""

    reason: str  # in_flight, rate, queue_share (the label of agiqa_client_limited_total)
    retry_after: int
    message: str


@dataclass
class ClientLimits:
    """Per client: at most `max_in_flight` requests at once and `rate` images per second on average (a token
    bucket of `burst` images; rate 0: no rate limit). Runs on the event loop only (no locks)."""

    max_in_flight: int
    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    sweep_every_s: float = 10.0
    clients: dict[str, _Client] = field(default_factory=dict)
    _swept: float = 0.0

    def admit(self, client: str) -> Refusal | None:
        """Take one slot in flight and one image's token, or say why not."""
        now = self.clock()
        self._sweep(now)
        state = self.clients.get(client)
        if state is None:
            state = self.clients[client] = _Client(tokens=self.burst, updated=now)
        if state.in_flight >= self.max_in_flight:
            return Refusal("in_flight", 1, f"too many requests at once from this client: {state.in_flight} in flight "
                           f"(client_max_in_flight {self.max_in_flight}, `agiqa serve --client-max-in-flight`); "
                           "retry in 1 s")
        if self.rate > 0:
            self._refill(state, now)
            if state.tokens < 1:
                wait = max(1, math.ceil((1 - state.tokens) / self.rate))
                return Refusal("rate", wait, f"over this client's rate of {self.rate:g} images/s (burst "
                               f"{self.burst:g}; `agiqa serve --client-rate/--client-burst`); retry in {wait} s")
            state.tokens -= 1
        state.in_flight += 1
        return None

    def charge(self, client: str | None, images: int) -> None:
        """The request's other images (admit took one): the bucket may go below zero; later requests then wait."""
        state = self.clients.get(client) if client is not None else None
        if state is not None and self.rate > 0 and images > 0:
            self._refill(state, self.clock())
            state.tokens -= images

    def release(self, client: str) -> None:
        state = self.clients.get(client)
        if state is not None:
            state.in_flight -= 1

    def _refill(self, state: _Client, now: float) -> None:
        state.tokens = min(self.burst, state.tokens + (now - state.updated) * self.rate)
        state.updated = now

    def _sweep(self, now: float) -> None:
        """Forget idle clients whose bucket is full again (they are as new): the table does not grow over a long
        run with many addresses."""
        if now - self._swept < self.sweep_every_s:
            return
        self._swept = now
        for client in [name for name, state in self.clients.items() if state.in_flight == 0 and
                       (self.rate <= 0 or state.tokens + (now - state.updated) * self.rate >= self.burst)]:
            del self.clients[client]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Gatekeeper:
    """ASGI middleware, before any body is read: 401 (with `WWW-Authenticate: Bearer`) without a right key on a
    path that needs one, 429 (with `Retry-After`) past the client's requests in flight or images per second. The
    client's name is left in the scope for the endpoint (its images are charged there, once counted)."""

    def __init__(self, app, access: Access, limits: ClientLimits, on_refusal: Callable[[str], None] = lambda r: None):
        self.app, self.access, self.limits, self.on_refusal = app, access, limits, on_refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.access.is_open(scope["path"]):
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        if self.access.keys is not None:
            token = bearer_token(headers)
            client = self.access.keys.client_of(token) if token is not None else None
            if client is None:
                return await self._unauthorized(send, token is not None)
        else:
            peer = (scope.get("client") or (None,))[0]
            forwarded = [value.decode("latin-1") for name, value in headers if name.lower() == b"x-forwarded-for"]
            client = "address:" + client_address(peer, forwarded, self.access.trusted_proxies)
        refusal = self.limits.admit(client)
        if refusal is not None:
            self.on_refusal(refusal.reason)
            return await send_json(send, 429, {"detail": refusal.message}, {"Retry-After": str(refusal.retry_after)})
        scope[CLIENT_SCOPE_KEY] = client
        try:
            await self.app(scope, receive, send)
        finally:
            self.limits.release(client)

    async def _unauthorized(self, send, sent_one: bool) -> None:
        # The key sent is never echoed. RFC 6750: error="invalid_token" only when a token was sent.
        if sent_one:
            detail = "the key was not accepted (send `Authorization: Bearer <key>` with a key this service was given)"
            challenge = 'Bearer realm="agiqa", error="invalid_token"'
        else:
            detail = "this service needs a key: send it as `Authorization: Bearer <key>`"
            challenge = 'Bearer realm="agiqa"'
        await send_json(send, 401, {"detail": detail}, {"WWW-Authenticate": challenge})


def keys_from(api_key: str | None, api_key_file: str | None, environ: dict | None = None) -> KeyRing | None:
    """The KeyRing of `agiqa serve`'s flags and AGIQA_API_KEY (None: no key anywhere)."""
    environ = os.environ if environ is None else environ
    if api_key is not None and not api_key.strip():
        raise AgiqaError(f"--api-key is empty ({KEY_HINT})")
    keys = [key.strip() for key in (api_key, environ.get("AGIQA_API_KEY")) if key and key.strip()]
    if not keys and not api_key_file:
        return None
    return KeyRing(keys, api_key_file)
