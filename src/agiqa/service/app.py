"""HTTP scoring service: `agiqa serve MODEL` -> a browser page at /, POST images (+ prompts) to /score for JSON
scores (optionally with gate weights, per-expert scores and a heat map), GET /health, /info, /metrics.

The model runs on one inference thread fed by a micro-batcher (`service.batcher`); uploads are parsed
(`service.uploads`), decoded by the scorer's one rule (`agiqa.data.images.decode_image`) and preprocessed by the
model's own preprocessing in worker threads, so the event loop only moves bytes. No `from __future__ import
annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import argparse
import asyncio
import contextlib
import gc
import math
import os
import re
import signal
import sys
import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from agiqa.data.images import decode_image
from agiqa.errors import AgiqaError, ImageLoadError, ImageTooLargeError
from agiqa.runtime import bound_malloc_arenas
from agiqa.scoring.heatmap import heatmap_image, png_base64
from agiqa.scoring.scorer import Scorer
from agiqa.service.batcher import ClientShareFull, MicroBatcher, QueueFull
from agiqa.service.limits import BodySizeLimit, MultipartOnly, ServiceLimits
from agiqa.service.metrics import RequestMetrics, ServiceMetrics
from agiqa.service.security import (CLIENT_SCOPE_KEY, SHORT_KEY, Access, ClientLimits, Gatekeeper, check_exposure,
                                   keys_from, parse_networks)

HEATMAP_SIDE = 512  # longest side of a heat map in an answer (the page stretches it over the image)
ACCEPTED_TYPES = ("image/", "application/octet-stream")
ROUTES = ("/", "/health", "/info", "/metrics", "/score")
# POST /score reads its multipart body itself (parsed off the event loop: `service.uploads`); its form, as /docs shows
SCORE_FORM_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "description": "image files (JPEG, PNG, WebP...), one part each",
                   "items": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}},
        "prompts": {"type": "array", "items": {"type": "string"},
                    "description": "one prompt per image, in the same order (models that compare image and prompt)"},
        "explain": {"type": "boolean", "default": False,
                    "description": "add gate weights, per-expert scores and a heat map where the model has them"}}}}}}}
SCORE_ERRORS_DOC = {
    400: {"description": "not a well-formed multipart form"},
    413: {"description": "over max_upload_bytes or max_images, or no image within max_pixels"},
    415: {"description": "not multipart/form-data, or a file that is not an image"},
    422: {"description": "prompts missing or not one per image, no image could be decoded, or a field of the "
          "wrong kind"},
    429: {"description": "this client is over its fair share (Retry-After)"},
    503: {"description": "the queue is full (Retry-After)"},
    504: {"description": "not scored within timeout_s"}}


def create_app(scorer: Scorer, model_name: str = "model", limits: ServiceLimits | None = None,
               access: Access | None = None, freeze_gc: bool = False):
    """A FastAPI app around one loaded `Scorer` (the model is loaded once, at start-up); `access` says who may
    score (keys, proxies, CORS origins; default: anyone, as on loopback). `freeze_gc` (what `agiqa serve` does):
    at start-up, every object alive (the model, torch, the libraries: hundreds of thousands) leaves the garbage
    collector's sight (gc.freeze), so a full collection takes milliseconds, not the ~170 ms that a request arriving
    meanwhile would wait (tiny model; it was the slowest request of tests/service/test_security.py's flood test)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, Response
    from starlette.concurrency import run_in_threadpool

    from agiqa.service.uploads import FormError, Part, body_chunks, parse_form, score_fields

    limits = limits or ServiceLimits(max_batch=scorer.batch_size, max_pixels=scorer.max_pixels)
    access = access or Access()
    metrics = ServiceMetrics()
    # A processor with a tokenizer (MoE-AGIQA) runs one request at a time: a Rust tokenizer whose padding and
    # truncation are set per call is not safe to share between threads. Decoding stays parallel.
    preprocessing = threading.Lock() if scorer.processor is not None else contextlib.nullcontext()
    batcher = MicroBatcher(scorer, limits.max_batch, limits.max_wait_ms, limits.max_queue, metrics.observe_batch,
                           client_share=limits.client_max_queued)
    clients = ClientLimits(limits.client_max_in_flight, limits.client_rate, limits.client_burst)

    @asynccontextmanager
    async def lifespan(app):
        if freeze_gc:
            gc.collect()
            gc.freeze()
        yield
        batcher.close()

    app = FastAPI(title="agiqa scoring service", version="2", lifespan=lifespan)
    # Middleware, outermost last: metrics of every answer; CORS (only for --cors-origin origins, outside the
    # gatekeeper so that a browser can read a 401/429); key and per-client limits before any body is read; 415 for
    # a body that is not multipart; 413 for one over the upload limit.
    app.add_middleware(BodySizeLimit, limit=limits.max_upload_bytes)
    app.add_middleware(MultipartOnly, path="/score")
    app.add_middleware(Gatekeeper, access=access, limits=clients, on_refusal=metrics.observe_refusal)
    if access.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(RequestMetrics, metrics=metrics, routes=ROUTES)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files("agiqa.service").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "queued_images": batcher.waiting}

    @app.get("/info")
    def info() -> dict:
        return {"model": model_name, "image_size": scorer.image_size, "score_range": scorer.score_range,
                "lower_better": scorer.lower_better, "needs_prompt": scorer.needs_prompt,
                "targets": scorer.targets, "experts": scorer.expert_names, "heatmap": scorer.has_patch_map,
                "scale": scorer.scale, "percentile": percentile_info(scorer), "levels": level_info(scorer),
                "limits": limits.as_dict(), **access.as_dict()}

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.queue.set(batcher.waiting)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/score", openapi_extra=SCORE_FORM_DOC, responses=SCORE_ERRORS_DOC)
    async def score(request: Request) -> dict:
        # The loop only awaits the body's chunks; parsing them and decoding the images run in worker threads.
        chunks = await body_chunks(request)
        images, names, prompts, explain = await run_in_threadpool(read_form, request.headers["content-type"], chunks)
        client = request.scope.get(CLIENT_SCOPE_KEY)
        clients.charge(client, len(images) - 1)  # the gatekeeper took one image's token already
        decoded = await run_in_threadpool(prepare, [upload.data for upload in images], names, prompts)
        errors = decoded["errors"]
        for kind in decoded["kinds"]:
            if kind is not None:
                metrics.image_errors.labels(kind).inc()
        if not decoded["good"]:
            too_large = all(kind == "too_large" for kind in decoded["kinds"])
            raise HTTPException(413 if too_large else 422, "no image could be scored: " + "; ".join(
                f"{name}: {error}" for name, error in zip(names, errors)))
        columns = await scored_columns(decoded, explain, client)
        metrics.images.inc(len(decoded["good"]))
        results = await run_in_threadpool(answer_rows, names, errors, decoded, columns, explain)
        return {"model": model_name, "n_scored": len(decoded["good"]), "n_failed": len(names) - len(decoded["good"]),
                "results": results}

    def read_form(content_type: str, chunks) -> tuple[list[Part], list[str], list[str] | None, bool]:
        """(images, their names, prompts, explain) of a /score body, checked against the limits (400 for a body
        that is not a well-formed form). CPU work: runs in a worker thread."""
        try:
            parts = parse_form(content_type, chunks)
        except FormError as err:
            raise HTTPException(400, str(err)) from None
        images, prompts, explain = score_fields(parts)
        names = [upload.filename or f"image {i}" for i, upload in enumerate(images)]
        check_request(images, names, prompts)
        return images, names, prompts, explain

    def check_request(images: list[Part], names: list[str], prompts: list[str] | None) -> None:
        if len(images) > limits.max_images:
            raise HTTPException(413, f"at most {limits.max_images} images per request (max_images), got {len(images)}")
        for name, upload in zip(names, images):
            if upload.content_type and not upload.content_type.startswith(ACCEPTED_TYPES):
                raise HTTPException(415, f"{name}: content type {upload.content_type} is not an image (send image/* "
                                    "or application/octet-stream)")
        if prompts is not None and len(prompts) != len(images):
            raise HTTPException(422, f"got {len(images)} images but {len(prompts)} prompts (send one `prompts` "
                                "field per image, in the same order)")
        if scorer.needs_prompt and (prompts is None or not all(p.strip() for p in prompts)):
            missing = names if prompts is None else [n for n, p in zip(names, prompts) if not p.strip()]
            raise HTTPException(422, f"{model_name} compares each image with its prompt: send one `prompts` field "
                                f"per image (missing for {', '.join(missing)})")

    def prepare(uploads: list[bytes], names: list[str], prompts: list[str] | None) -> dict:
        """Decode (the one rule) and preprocess (the model's own) the uploads; failures become per-image errors."""
        errors, kinds, good, pil_images = [None] * len(uploads), [None] * len(uploads), [], []
        for i, (data, name) in enumerate(zip(uploads, names)):
            try:
                if not data:
                    raise ImageLoadError(name, "empty file (0 bytes)")
                pil_images.append(decode_image(data, name, limits.max_pixels))
                good.append(i)
            except ImageLoadError as err:
                errors[i] = err.reason
                kinds[i] = "too_large" if isinstance(err, ImageTooLargeError) else "decode"
        good_prompts = [prompts[i] for i in good] if prompts is not None else None
        with preprocessing:
            inputs = scorer.preprocess(pil_images, good_prompts) if pil_images else None
        return {"errors": errors, "kinds": kinds, "good": good, "images": pil_images, "prompts": good_prompts,
                "inputs": inputs}

    async def scored_columns(decoded: dict, explain: bool, client) -> dict:
        try:
            future = batcher.submit(decoded["inputs"], decoded["images"], decoded["prompts"], explain, client)
        except ClientShareFull as full:
            metrics.observe_refusal("queue_share")
            raise HTTPException(429, f"this client already has {full.waiting} images waiting for the model (its share "
                                f"of the queue: client_max_queued {full.share} of max_queue {limits.max_queue}); "
                                f"retry in {full.retry_after} s",
                                headers={"Retry-After": str(full.retry_after)}) from None
        except QueueFull as full:
            raise HTTPException(503, f"busy: {full.waiting} images are waiting for the model (max_queue "
                                f"{limits.max_queue}); retry in {full.retry_after} s",
                                headers={"Retry-After": str(full.retry_after)}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise HTTPException(504, f"not scored within {limits.timeout_s} s (timeout_s)") from None

    def answer_rows(names, errors, decoded, columns, explain: bool) -> list[dict]:
        scores = np.full(len(names), np.nan)
        scores[decoded["good"]] = columns["score"]
        ranks = rank_of(scores, scorer.lower_better)
        rows = [{"filename": name, "score": None if math.isnan(value) else float(value), "rank": rank,
                 "error": None if error is None else f"{name}: {error}"}
                for name, value, rank, error in zip(names, scores, ranks, errors)]
        if scorer.has_percentile:
            percentiles = np.full(len(names), np.nan)
            percentiles[decoded["good"]] = columns["percentile"]
            for row, value in zip(rows, percentiles):
                row["percentile"] = None if math.isnan(value) else float(value)
        if len(scorer.targets) > 1:
            for position, index in enumerate(decoded["good"]):
                rows[index]["scores"] = target_scores(columns, position)
        if explain:
            for position, (index, image) in enumerate(zip(decoded["good"], decoded["images"])):
                rows[index].update(explanation(columns, position, image))
        return rows

    def target_scores(columns: dict, position: int) -> dict:
        """{target: score} of one image of a multi-target model (beside `score`, the first target's)."""
        return {target: float(columns[f"score_{target}"][position]) for target in scorer.targets}

    def expert_score(columns: dict, expert: str, position: int) -> float | dict:
        """One expert's own score, or {target: score} for a multi-target model."""
        if len(scorer.targets) == 1:
            return float(columns[f"expert_{expert}"][position])
        return {target: float(columns[f"expert_{expert}_{target}"][position]) for target in scorer.targets}

    def explanation(columns: dict, position: int, image) -> dict:
        parts = {"gates": {name: float(columns[f"gate_{name}"][position]) for name in scorer.expert_names},
                 "experts": {name: expert_score(columns, name, position) for name in scorer.expert_names}}
        if "patch_map" in columns:
            parts["heatmap_png"] = png_base64(heatmap_image(columns["patch_map"][position],
                                                            fitted(image.size, HEATMAP_SIDE)))
        return parts

    return app


def percentile_info(scorer: Scorer) -> dict | None:
    """What `percentile` compares with (None when the model records no training-label quantiles)."""
    if not scorer.has_percentile:
        return None
    found = scorer.distribution
    return {"dataset": found.dataset, "n_images": found.n_images, "compared_with": found.describe(),
            "mos_range": list(found.mos_range) if found.mos_range else None}


def level_info(scorer: Scorer) -> dict | None:
    """A zero-shot VLM's level scale (its scores are expected levels, 1 bad .. 5 excellent); None for other models."""
    if scorer.level_question is None:
        return None
    from agiqa.semantic.levels import LEVEL_VALUES, LEVEL_WORDS

    return {"question": scorer.level_question, "range": [min(LEVEL_VALUES), max(LEVEL_VALUES)],
            "words": dict(zip(LEVEL_WORDS, LEVEL_VALUES))}


def rank_of(scores: np.ndarray, lower_better: bool = False) -> list[int | None]:
    """1 for the best scored image of a request, 2 for the next...; None where it failed."""
    order = sorted((i for i in range(len(scores)) if not math.isnan(scores[i])),
                   key=lambda i: scores[i] if lower_better else -scores[i])
    ranks: list[int | None] = [None] * len(scores)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def fitted(size: tuple[int, int], side: int) -> tuple[int, int]:
    """`size` scaled down (never up) so that its longer side is at most `side`."""
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: ...)` after every option that has a default worth showing (not None / off switches)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def register(subparsers) -> None:
    defaults = ServiceLimits()
    parser = subparsers.add_parser(
        "serve", help="serve a model over HTTP: a browser page at /, POST /score, /health, /info, /metrics",
        formatter_class=DefaultsHelpFormatter,
        description="Load a model once and serve it. Open http://HOST:PORT/ in a browser to drop images and see "
        "scores, ranks, gate weights and heat maps; programs POST multipart `images` (+ one `prompts` field per "
        "image, + `explain=true`) to /score. Concurrent requests share model batches (--batch-size images, "
        "--max-wait-ms); when --max-queue images wait, new requests get 503 with Retry-After. Limits answer 413 "
        "(upload, images, pixels), 415 (not an image) or 422 (prompts). Needs the [serve] extra.")
    parser.add_argument("model", help="model directory (a training run's model/, or the run folder itself), "
                        "registered name or vlm:<VLM> (as for `agiqa score`)")
    parser.add_argument("--weights", help="weights for a registered model name")
    parser.add_argument("--encoder", help="VLM for MA-AGIQA's semantic features")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the VLM's own code (mPLUG-Owl2)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else fp32")
    parser.add_argument("--batch-size", type=int, default=defaults.max_batch,
                        help="most images per model batch, collected across concurrent requests")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long a batch waits for more images after its first")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="images waiting for the model before new requests get 503")
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds before a 504")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                        help="largest request body (413)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request (413)")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help="pixels per image, decompression bombs included (413 when no image of a request fits)")
    keys = parser.add_argument_group(
        "who may score", "With a key (--api-key, AGIQA_API_KEY or --api-key-file), POST /score needs "
        "`Authorization: Bearer KEY` (401 without it); /, /health and /info stay open. Without a key, a --host "
        "beyond loopback is refused unless --allow-unauthenticated.")
    keys.add_argument("--api-key", metavar="KEY", help="the key clients send (visible in `ps`: prefer the "
                      "environment variable AGIQA_API_KEY, read when this flag is not given, or --api-key-file)")
    keys.add_argument("--api-key-file", metavar="FILE", help="file of keys, one per line (# comments allowed), "
                      "re-read when it changes or on SIGHUP: for rotation, and one key per client for fair shares")
    keys.add_argument("--metrics-need-key", action="store_true", help="GET /metrics needs the key too")
    keys.add_argument("--allow-unauthenticated", action="store_true",
                      help="serve a --host beyond loopback without a key (anyone who reaches it can score)")
    keys.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                      help="a reverse proxy (address or network, repeatable) whose X-Forwarded-For names the client; "
                      "from anyone else the header is ignored")
    keys.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                      help="an origin (e.g. https://app.example.com; repeatable) whose pages may call the service "
                      "from the browser; none: CORS is off")
    share = parser.add_argument_group(
        "fair share per client", "A client is its key (its address without keys); past a limit it gets 429 with "
        "Retry-After while the other clients go on.")
    share.add_argument("--client-max-in-flight", type=int, metavar="N",
                       help="requests of one client at once (default: max(2, --max-queue / 4))")
    share.add_argument("--client-rate", type=float, default=defaults.client_rate, metavar="IMAGES_PER_S",
                       help="images per second of one client on average (0: no rate limit)")
    share.add_argument("--client-burst", type=float, metavar="IMAGES",
                       help="images one client may send at once above its rate (default: max(--client-rate, "
                       "--max-images))")
    share.add_argument("--client-max-queued", type=int, metavar="IMAGES",
                       help="images of one client waiting for the model (default: max(--max-images, --max-queue / 2))")
    parser.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    from agiqa.scoring.resolve import check_device, check_positive, resolve_model

    bound_malloc_arenas()  # before any thread allocates
    # Every mistake is reported before the model loads (which can take minutes) and before the port is taken.
    limits = _limits(args)
    keys = keys_from(args.api_key, args.api_key_file)
    unauthenticated = check_exposure(args.host, keys is not None, args.allow_unauthenticated)
    access = Access(keys=keys, metrics_need_key=args.metrics_need_key,
                    trusted_proxies=parse_networks(args.trusted_proxy), cors_origins=tuple(args.cors_origin),
                    unauthenticated=unauthenticated)
    check_device(args.device)
    source = resolve_model(args.model)
    if source.note:
        print(f"note: {source.note}", file=sys.stderr)
    if args.weights and Path(source.model).is_dir():
        raise AgiqaError(f"--weights is for a registered model name; {source.model} is a model folder with its own "
                         "weights (model.safetensors)")
    check_positive(batch_size=args.batch_size)
    check_port_free(args.host, args.port)
    scorer = Scorer(source.model, pretrained=args.weights or True, device=args.device, encoder=args.encoder,
                    trust_remote_code=args.trust_remote_code, precision=args.precision, batch_size=args.batch_size,
                    max_pixels=args.max_pixels)
    print(f"{args.model}: {scorer.scale}", file=sys.stderr)
    for line in access_lines(args, access, limits):
        print(line, file=sys.stderr)
    if keys is not None and keys.file is not None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda signum, frame: keys.request_reload())
    # proxy_headers off: uvicorn would trust X-Forwarded-For from 127.0.0.1, letting any local client pick its own
    # identity; the gatekeeper reads it from --trusted-proxy addresses only.
    uvicorn.run(create_app(scorer, str(args.model), limits, access, freeze_gc=True), host=args.host, port=args.port,
                proxy_headers=False)
    return 0


def access_lines(args, access: Access, limits: ServiceLimits) -> list[str]:
    """What start-up says about who may score (never a key)."""
    if access.keys is not None:
        sources = {"--api-key": args.api_key, "AGIQA_API_KEY": (os.environ.get("AGIQA_API_KEY") or "").strip(),
                   str(args.api_key_file): args.api_key_file}
        where = [name for name, given in sources.items() if given]
        lines = [f"scoring needs a key (Authorization: Bearer; {len(access.keys)} key(s) from {', '.join(where)}"
                 f"{'; /metrics too' if access.metrics_need_key else ''})"]
        if access.keys.short:
            lines.append(f"warning: {access.keys.short} key(s) shorter than {SHORT_KEY} characters are easy to guess; "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))' makes a good one")
        if args.allow_unauthenticated:
            lines.append("note: --allow-unauthenticated has no effect: a key is set")
    elif access.unauthenticated:
        lines = [f"warning: serving {args.host}:{args.port} without a key (--allow-unauthenticated): anyone who "
                 "can reach it can score; set AGIQA_API_KEY or --api-key-file to require one"]
    else:
        lines = []
    if access.keys is None and args.metrics_need_key:
        lines.append("note: --metrics-need-key has no effect without a key")
    lines.append(f"per client: {limits.client_max_in_flight} requests at once, "
                 + (f"{limits.client_rate:g} images/s (bursts of {limits.client_burst:g}), " if limits.client_rate > 0
                    else "no rate limit, ")
                 + f"{limits.client_max_queued} images queued; 429 past them")
    if access.cors_origins:
        lines.append(f"CORS: pages of {', '.join(access.cors_origins)} may call the service")
    return lines


def _limits(args) -> ServiceLimits:
    """The flags as `ServiceLimits`; a value it refuses is named by its flag."""
    flags = {"max_upload_bytes": "--max-upload-mb", "max_images": "--max-images", "max_pixels": "--max-pixels",
             "max_batch": "--batch-size", "max_wait_ms": "--max-wait-ms", "max_queue": "--max-queue",
             "timeout_s": "--timeout", "client_max_in_flight": "--client-max-in-flight",
             "client_rate": "--client-rate", "client_burst": "--client-burst",
             "client_max_queued": "--client-max-queued"}
    if not 1 <= args.port <= 65535:
        raise AgiqaError(f"--port must be 1..65535, got {args.port}")
    try:
        return ServiceLimits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_images=args.max_images,
                             max_pixels=args.max_pixels, max_batch=args.batch_size, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, timeout_s=args.timeout,
                             client_max_in_flight=args.client_max_in_flight, client_rate=args.client_rate,
                             client_burst=args.client_burst, client_max_queued=args.client_max_queued)
    except ValueError as err:
        message = str(err)
        for name, flag in flags.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        raise AgiqaError(message) from None


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on (an earlier `agiqa serve`?) before the model is loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AgiqaError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as err:
            raise AgiqaError(f"cannot listen on {host}:{port}: {err.strerror} (another `agiqa serve` there? pass "
                             "--port with a free port)") from None
