"""Streaming, resumable feature extraction into a `FeatureCache`, and aligned loading for training.

Memory stays flat in the number of images: files are hashed and decoded one batch at a time, and computed features
are flushed to a new shard every `shard_size` images. A re-run (after a crash, `kill -9`, or with more images)
skips every image whose content hash is already in the cache. Several processes (GPUs) each take a strided slice
of the image list (`rank`, `world_size`) and write their own shards; the index is the union of the shard files.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import torch

from agiqa.errors import AgiqaError, ImageLoadError
from agiqa.semantic.base import SemanticEncoder, SemanticEncoderError, prompt_needs_generation_prompt
from agiqa.semantic.cache import FeatureCache, MissingFeaturesError, feature_key

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 512
# A shard is also written after this long, so a killed run loses at most about this much work.
FLUSH_SECONDS = 120.0


@dataclasses.dataclass
class ExtractionReport:
    """What one `extract_features` call did. `failed` holds `(path, reason)` for every unreadable image."""

    cache_dir: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self, max_failures: int = 20) -> str:
        head = (f"{self.cache_dir}: {self.done} computed, {self.skipped} already cached, {self.n_failed} failed "
                f"of {self.total} images in {self.seconds:.1f}s ({self.images_per_second:.2f} img/s)")
        if self.world_size > 1:
            head += f" [rank {self.rank}/{self.world_size}]"
        if not self.failed:
            return head
        lines = [f"  {path}: {reason}" for path, reason in self.failed[:max_failures]]
        if self.n_failed > max_failures:
            lines.append(f"  ... and {self.n_failed - max_failures} more")
        return head + "\nunreadable images (not cached; fix or remove them and re-run):\n" + "\n".join(lines)


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    # unit "img" makes tqdm show img/s and the ETA.
    return tqdm(total=total, disable=not enabled, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1)


def extract_features(
    image_paths: Sequence[str | os.PathLike],
    encoder: SemanticEncoder,
    cache_dir: str | os.PathLike,
    batch_size: int = 8,
    shard_size: int = DEFAULT_SHARD_SIZE,
    generation_prompts: Sequence[str] | None = None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    names: Sequence[str] | None = None,
) -> ExtractionReport:
    """Compute the encoder's features for `image_paths` (this process's slice of them) into `cache_dir`.

    Images already in the cache (same content hash, same fingerprint) are skipped; unreadable images are listed in
    the report's `failed` and do not stop the run. `rank`/`world_size` default to torch.distributed (or the
    RANK/WORLD_SIZE environment), each rank taking images `rank::world_size`. `names` (default: the file names) are
    stored next to the hashes for humans. Raises `StaleFeatureCacheError` if the cache holds another setup's
    features (use a new directory or `overwrite=True`).
    """
    rank, world_size = _dist_info(rank, world_size)
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    paths = [str(p) for p in image_paths]
    if generation_prompts is not None and len(generation_prompts) != len(paths):
        raise ValueError(f"{len(paths)} images but {len(generation_prompts)} generation prompts")
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(paths)} images but {len(names)} names")
    templated = prompt_needs_generation_prompt(encoder.prompts)
    if templated and generation_prompts is None:
        raise SemanticEncoderError("the prompts contain {prompt}; pass the images' generation prompts")

    fingerprint = encoder.fingerprint()
    if rank == 0:
        cache = FeatureCache.create_or_open(cache_dir, fingerprint, overwrite=overwrite)
    _barrier()
    if rank != 0:
        cache = FeatureCache.create_or_open(cache_dir, fingerprint)

    mine = list(range(rank, len(paths), world_size))
    report = ExtractionReport(cache_dir=str(cache_dir), total=len(mine), rank=rank, world_size=world_size)
    start = time.perf_counter()
    buffer_keys: list[str] = []
    buffer_names: list[str] = []
    buffer_feats: list[torch.Tensor] = []
    pending: set[str] = set()

    last_flush = [time.monotonic()]

    def flush() -> None:
        last_flush[0] = time.monotonic()
        if buffer_keys:
            cache.write_shard(buffer_keys, buffer_names, torch.cat(buffer_feats), rank=rank)
            buffer_keys.clear()
            buffer_names.clear()
            buffer_feats.clear()

    def run_batch(batch: list[tuple[str, str, str | None, object]]) -> None:
        feats = encoder.encode([b[3] for b in batch], [b[2] for b in batch] if templated else None)
        buffer_keys.extend(b[0] for b in batch)
        buffer_names.extend(b[1] for b in batch)
        buffer_feats.append(feats)
        report.done += len(batch)
        bar.update(len(batch))
        if len(buffer_keys) >= shard_size or time.monotonic() - last_flush[0] > FLUSH_SECONDS:
            flush()

    from agiqa.data.images import load_image

    bar = _progress(len(mine), progress, f"features {encoder.name}" + (f" [rank {rank}]" if world_size > 1 else ""))
    batch: list[tuple[str, str, str | None, object]] = []
    try:
        for i in mine:
            path = paths[i]
            gen = generation_prompts[i] if generation_prompts is not None else None
            name = names[i] if names is not None else os.path.basename(path)
            try:
                key = feature_key(cache.content_hash(path), gen if templated else None)
                if cache.has(key) or key in pending:
                    report.skipped += 1
                    bar.update(1)
                    continue
                image = load_image(path)
            except ImageLoadError as err:
                report.failed.append((path, err.reason))
                bar.update(1)
                bar.set_postfix(failed=report.n_failed)
                continue
            except OSError as err:
                report.failed.append((path, f"unreadable ({err.strerror or err})"))
                bar.update(1)
                bar.set_postfix(failed=report.n_failed)
                continue
            pending.add(key)
            batch.append((key, name, gen, image))
            if len(batch) >= batch_size:
                run_batch(batch)
                batch = []
        if batch:
            run_batch(batch)
    finally:
        # On Ctrl-C or an encoder error, keep what was computed; a re-run continues from there.
        flush()
        cache.save_hash_memo()
        bar.close()
        report.seconds = time.perf_counter() - start
    _barrier()
    if rank == 0:
        cache.refresh()  # pick up the other ranks' shards
        cache.write_index()
    if report.failed:
        logger.warning(report.summary())
    else:
        logger.info(report.summary())
    return report


def load_features(
    cache_dir: str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    generation_prompts: Sequence[str] | None = None,
    expected_fingerprint: dict | None = None,
) -> torch.Tensor:
    """Features `(N, P, D)` float32 aligned with `image_paths` (matched by the files' content hashes).

    Raises `MissingFeaturesError` naming the images without features and the command that extracts them, and
    `StaleFeatureCacheError` when `expected_fingerprint` is given and differs from the cache's.
    """
    from agiqa.semantic.cache import StaleFeatureCacheError, fingerprint_diff

    cache = FeatureCache(cache_dir)
    if expected_fingerprint is not None:
        diff = fingerprint_diff(cache.fingerprint, expected_fingerprint)
        if diff:
            raise StaleFeatureCacheError(f"feature cache {cache_dir} was built differently:\n  " + "\n  ".join(diff))
    templated = prompt_needs_generation_prompt(cache.prompts)
    if templated and generation_prompts is None:
        raise AgiqaError(f"the prompts of {cache_dir} contain {{prompt}}; pass the images' generation prompts")
    keys: list[str] = []
    missing: list[str] = []
    for i, path in enumerate(image_paths):
        try:
            content = cache.content_hash(path)
        except OSError:
            missing.append(str(path))
            keys.append("")
            continue
        key = feature_key(content, generation_prompts[i] if templated else None)
        keys.append(key)
        if not cache.has(key):
            missing.append(str(path))
    cache.save_hash_memo()
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        encoder = cache.fingerprint.get("encoder", "ENCODER")
        raise MissingFeaturesError(
            f"{len(missing)} of {len(keys)} images have no features in {cache_dir}:\n  {shown}\n"
            f"Extract them with: agiqa features extract --images <files or folder> --encoder {encoder} "
            f"--out {cache_dir} (or --dataset NAME --root DIR); re-running only computes what is missing."
        )
    return cache.get_many(keys)
