"""HTTP scoring service: `agiqa serve MODEL` → POST images (+ prompts) to /score, get JSON scores back.

No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime.
"""

import math

from agiqa.scoring.scorer import Scorer

MAX_IMAGES_PER_REQUEST = 64


def create_app(scorer: Scorer, model_name: str = "model"):
    """A FastAPI app around one loaded `Scorer` (the model is loaded once, at start-up)."""
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile

    app = FastAPI(title="agiqa scoring service", version="1")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/info")
    def info() -> dict:
        return {"model": model_name, "image_size": scorer.image_size, "score_range": scorer.score_range,
                "lower_better": scorer.lower_better, "needs_prompt": scorer.needs_prompt}

    @app.post("/score")
    async def score(images: list[UploadFile] = File(...), prompts: list[str] | None = Form(None)) -> dict:
        if len(images) > MAX_IMAGES_PER_REQUEST:
            raise HTTPException(413, f"at most {MAX_IMAGES_PER_REQUEST} images per request, got {len(images)}")
        if prompts is not None and len(prompts) != len(images):
            raise HTTPException(422, f"got {len(images)} images but {len(prompts)} prompts")
        if prompts is None and scorer.needs_prompt:
            raise HTTPException(422, f"{model_name} compares each image with its prompt: send one `prompts` field "
                                "per image")
        names = [upload.filename or f"image {i}" for i, upload in enumerate(images)]
        # Decoded by the scorer's one rule (agiqa.data.images.decode_image), exactly as a file on disk would be.
        scored = scorer.score([await upload.read() for upload in images], prompts, names=names)
        results = [{"filename": name, "score": None if math.isnan(value) else float(value),
                    "error": None if error is None else f"{name}: {error}"}
                   for name, value, error in zip(names, scored.scores, scored.errors)]
        return {"model": model_name, "n_scored": sum(error is None for error in scored.errors),
                "n_failed": sum(error is not None for error in scored.errors), "results": results}

    return app


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve a model over HTTP (POST /score)",
                                   description="Load a model once and serve it: GET /health, GET /info, "
                                   "POST /score with multipart `images` (+ `prompts`). Needs the [serve] extra.")
    parser.add_argument("model", help="model directory or registered name (as for `agiqa score`)")
    parser.add_argument("--weights", help="weights for a registered model name")
    parser.add_argument("--encoder", help="VLM for MA-AGIQA's semantic features")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    scorer = Scorer(args.model, pretrained=args.weights or True, device=args.device, encoder=args.encoder)
    uvicorn.run(create_app(scorer, str(args.model)), host=args.host, port=args.port)
    return 0
