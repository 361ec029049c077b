"""Import the per-image feature files written by MA-AGIQA's official getFeature.py into a `FeatureCache`.

The official script saves, for each image `<stem>.jpg|png` (stem may contain sub-folders), `<stem>_semantic_content.pt`
and `<stem>_coherence.pt`: fp16 tensors of shape (1, 4096) (mPLUG-Owl2 last layer, mean over all positions).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch

from agiqa._files import torch_load_weights_only
from agiqa.semantic.base import PAPER_PROMPT_NAMES, PAPER_PROMPTS
from agiqa.semantic.cache import FeatureCache
from agiqa.semantic.extract import ExtractionReport
from agiqa.semantic.mplug_owl2 import MPLUG_OWL2_ID, MPLUG_OWL2_TEMPLATE

logger = logging.getLogger(__name__)

OFFICIAL_ENCODER = f"{MPLUG_OWL2_ID} (official files)"
OFFICIAL_SUFFIXES = tuple(f"_{name}.pt" for name in PAPER_PROMPT_NAMES)  # order = PAPER_PROMPTS


def official_fingerprint(feature_dim: int = 4096) -> dict:
    """Fingerprint of features produced by the official getFeature.py (mPLUG-Owl2, fp16, all-token mean)."""
    return {
        "backend": "official-import",
        "encoder": OFFICIAL_ENCODER,
        "revision": None,
        "prompts": list(PAPER_PROMPTS),
        "prompt_names": list(PAPER_PROMPT_NAMES),
        "layer": -1,
        "pooling": "all",
        "dtype": "fp16",
        "template": MPLUG_OWL2_TEMPLATE,
        "square_pad": True,
        "feature_dim": feature_dim,
    }


def official_feature_paths(feature_dir: str | os.PathLike, image_name: str) -> tuple[str, ...]:
    stem = os.path.splitext(image_name)[0]
    return tuple(os.path.join(str(feature_dir), stem + suffix) for suffix in OFFICIAL_SUFFIXES)


def _load_vector(path: str) -> torch.Tensor:
    tensor = torch_load_weights_only(path)
    if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0 or (tensor.ndim == 2 and tensor.shape[0] != 1) \
            or tensor.ndim > 2:
        raise ValueError(f"expected a (1, D) tensor, got {type(tensor).__name__} {getattr(tensor, 'shape', '')}")
    return tensor.reshape(-1)


def import_official_features(
    feature_dir: str | os.PathLike,
    image_names: Sequence[str],
    cache_dir: str | os.PathLike,
    image_root: str | os.PathLike,
    overwrite: bool = False,
    shard_size: int = 1024,
    image_paths: Sequence[str] | None = None,
) -> ExtractionReport:
    """Copy official `<stem>_semantic_content.pt` / `<stem>_coherence.pt` files into a cache keyed by the content
    hash of `image_root/<name>` (or of `image_paths`, aligned with the names). Images or feature files that are
    missing/unreadable are reported, not fatal."""
    start = time.perf_counter()
    report = ExtractionReport(cache_dir=str(cache_dir), total=len(image_names))
    cache: FeatureCache | None = None
    keys: list[str] = []
    names: list[str] = []
    feats: list[torch.Tensor] = []

    def flush() -> None:
        if keys:
            cache.write_shard(keys, names, torch.stack(feats))
            keys.clear(), names.clear(), feats.clear()

    if image_paths is not None and len(image_paths) != len(image_names):
        raise ValueError(f"{len(image_names)} names but {len(image_paths)} image paths")
    try:
        for i, name in enumerate(image_names):
            try:
                vectors = [_load_vector(p) for p in official_feature_paths(feature_dir, name)]
            except FileNotFoundError as err:
                report.failed.append((name, f"official feature file missing: {err.filename}"))
                continue
            except Exception as err:  # noqa: BLE001 - any bad file is reported with its reason
                report.failed.append((name, f"bad official feature file: {err}"))
                continue
            if vectors[0].shape != vectors[1].shape:
                report.failed.append((name, f"feature sizes differ: {vectors[0].shape} vs {vectors[1].shape}"))
                continue
            if cache is None:
                cache = FeatureCache.create_or_open(cache_dir, official_fingerprint(int(vectors[0].numel())),
                                                    overwrite=overwrite)
            try:
                path = image_paths[i] if image_paths is not None else os.path.join(str(image_root), name)
                key = cache.content_hash(path)
            except OSError as err:
                report.failed.append((name, f"image not readable for hashing ({err.strerror or err})"))
                continue
            if cache.has(key) or key in keys:
                report.skipped += 1
                continue
            keys.append(key)
            names.append(name)
            feats.append(torch.stack(vectors))
            report.done += 1
            if len(keys) >= shard_size:
                flush()
    finally:
        if cache is not None:
            flush()
            cache.save_hash_memo()
            cache.write_index()
        report.seconds = time.perf_counter() - start
    if cache is None and image_names:
        logger.warning("no official feature file could be read from %s", feature_dir)
    return report
