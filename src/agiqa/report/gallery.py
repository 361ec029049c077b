"""Image galleries of the report: the worst-predicted images of an evaluation (largest |prediction - MOS|) and the
lowest-scored images of a scoring run, each with MANIQA's patch heat map where the model has one."""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pandas as pd
from PIL import Image

from agiqa.data.images import decode_image
from agiqa.errors import ImageLoadError
from agiqa.report.runs import Run
from agiqa.scoring.heatmap import overlay

THUMBNAIL = 256  # longest side of a gallery image, pixels


def worst_predictions(run: Run, k: int) -> list[dict]:
    """The `k` images with the largest |prediction - MOS|: prompt, MOS, prediction, error, thumbnail, heat map."""
    table = run.table.assign(error=(run.table["prediction"] - run.table["mos"]).abs()).nlargest(k, "error")
    images = [_open(path) for path in table.get("path", pd.Series([None] * len(table)))]
    heat, why = _heat_maps(run.model_dir, images)
    tiles = []
    for (_, row), (image, problem), overlaid in zip(table.iterrows(), images, heat):
        tiles.append({"title": row["name"], "facts": {"prompt": row.get("prompt", ""), "MOS": row["mos"],
                                                      "prediction": row["prediction"], "error": row["error"]},
                      "image": _thumbnail(image), "heatmap": _thumbnail(overlaid), "note": problem or why})
    return tiles


def lowest_scores(run: Run, k: int) -> list[dict]:
    """The `k` lowest-scored images of a scoring run; heat maps from its `heatmap` column (`score --explain`)."""
    table = run.table.dropna(subset=["score"]).nsmallest(k, "score")
    tiles = []
    for _, row in table.iterrows():
        image, problem = _open(row["image"])
        drawn = row.get("heatmap")
        heat, _ = _open(drawn) if isinstance(drawn, str) and drawn else (None, None)
        tiles.append({"title": row["image"], "facts": {"prompt": row.get("prompt") or "", "score": row["score"]},
                      "image": _thumbnail(image), "heatmap": _thumbnail(heat),
                      "note": problem or ("" if heat is not None else "no heat map (score with --explain DIR)")})
    return tiles


def _open(path) -> tuple[Image.Image | None, str]:
    if not isinstance(path, str) or not path:
        return None, "no image path recorded"
    if "#" in path and not os.path.exists(path):
        return None, "inside a WebDataset shard (not shown)"
    try:
        return decode_image(path), ""
    except ImageLoadError as err:
        return None, f"image not shown: {err.reason}"


def _heat_maps(model_dir: Path | None, images: list[tuple[Image.Image | None, str]]) -> tuple[list, str]:
    """Each image with its heat map over it (None where there is no image), and why there are none, if so."""
    if model_dir is None:
        return [None] * len(images), "no heat map: the run has no saved model/"
    import torch

    from agiqa.models import create_model, saved_architecture
    from agiqa.models.maniqa import has_patch_map, patch_maps
    from agiqa.scoring.scorer import ResizeNormalize

    model = create_model(saved_architecture(model_dir), pretrained=str(model_dir)).eval()
    if not has_patch_map(model):
        return [None] * len(images), "no heat map: this model has no per-patch scores (MoE-AGIQA)"
    present = [image for image, _ in images if image is not None]
    if not present:
        return [None] * len(images), ""
    with torch.inference_mode():
        maps = iter(patch_maps(model, ResizeNormalize(model.config.img_size)(present)["image"]).float().numpy())
    return [overlay(image, next(maps)) if image is not None else None for image, _ in images], ""


def _thumbnail(image: Image.Image | None) -> str | None:
    """A JPEG data URL of `image` no larger than THUMBNAIL pixels, or None."""
    if image is None:
        return None
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
