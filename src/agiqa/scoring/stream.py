"""Streaming scoring: inputs cut into numbered blocks, decoded and preprocessed by `DataLoader` workers, scored in
batches, each block written as one output shard the moment its last batch is scored.

A block is `block_size` consecutive inputs of `agiqa.scoring.sources.iter_items` (the same blocks on every run).
Block `i` belongs to slot `i % n_slots` (a slot = one data-loader worker of one rank), so ranks and workers never
share a block, and a re-run skips blocks whose shard exists (`agiqa.scoring.shards.ShardStore`).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from agiqa.data.images import DEFAULT_MAX_PIXELS, decode_image
from agiqa.errors import AgiqaError, ImageLoadError
from agiqa.scoring.heatmap import heatmap_file, write_overlay
from agiqa.scoring.sources import ScoreItem, TarMember, block_digest, iter_items

NO_PROMPT = "no prompt for this image (the model compares each image with its prompt)"
NO_FEATURES = "no semantic features for this image in the feature cache (--features), and no --encoder to compute them"


@dataclass(frozen=True)
class BlockPlan:
    """One block of the run: its number, the digest of its keys and its size."""

    index: int
    digest: str
    size: int


def blocks(items: Iterable[ScoreItem], block_size: int) -> Iterator[list[ScoreItem]]:
    """Consecutive lists of `block_size` items (the last may be shorter)."""
    iterator = iter(items)
    while block := list(itertools.islice(iterator, block_size)):
        yield block


def plan_blocks(items: Iterable[ScoreItem], block_size: int) -> list[BlockPlan]:
    """Every block of the run, from one pass over the listing (nothing decoded; memory per block, not per item)."""
    return [BlockPlan(index, block_digest(block), len(block)) for index, block in enumerate(blocks(items, block_size))]


def item_source(paths: list[str], prompts: dict[str, str] | None = None, prompt: str | None = None
                ) -> Callable[[], Iterator[ScoreItem]]:
    """A picklable callable that lists the inputs again (each data-loader worker walks them itself)."""
    return functools.partial(iter_items, list(paths), prompts, prompt)


class BlockReader:
    """Turns one block into decoded, preprocessed batches (dicts, see `batches`); runs in data-loader workers.

    `preprocess(pil_images, prompts) -> dict of tensors` is the model's own preprocessing (`Scorer.preprocess`).
    Images that cannot be decoded (or lack a prompt the model needs) become errors, never exceptions.
    """

    def __init__(self, preprocess: Callable, batch_size: int, needs_prompt: bool = False, keep_images: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, hash_images: bool = False):
        self.preprocess, self.batch_size, self.needs_prompt = preprocess, batch_size, needs_prompt
        self.keep_images, self.max_pixels, self.hash_images = keep_images, max_pixels, hash_images

    @classmethod
    def for_scorer(cls, scorer, keep_images: bool = False) -> "BlockReader":
        """The reader `scorer` needs (decoded images kept for its semantic encoder, or when `keep_images`)."""
        return cls(scorer.preprocess, scorer.batch_size, needs_prompt=scorer.needs_prompt,
                   keep_images=keep_images or scorer.encoder is not None, max_pixels=scorer.max_pixels,
                   hash_images=scorer.features is not None)

    def batches(self, index: int, digest: str, block: list[ScoreItem]) -> Iterator[dict]:
        """Per `batch_size` items: keys, prompts, errors, the decodable rows' positions and their model inputs (and,
        with `hash_images`, the sha256 of their bytes, the feature cache's key)."""
        n_batches = max(math.ceil(len(block) / self.batch_size), 1)
        for number in range(n_batches):
            part = block[number * self.batch_size:(number + 1) * self.batch_size]
            prompts = [item.read_prompt() if item.error is None else None for item in part]
            errors, images, hashes = [], [], []
            for item, prompt in zip(part, prompts):
                error, image, content_hash = self.decode(item, prompt)
                errors.append(error)
                if image is not None:
                    images.append(image)
                    hashes.append(content_hash)
            good = [i for i, error in enumerate(errors) if error is None]
            good_prompts = [prompts[i] for i in good] if self.needs_prompt else None
            yield {"block": index, "digest": digest, "last": number == n_batches - 1,
                   "keys": [item.key for item in part], "prompts": prompts, "errors": errors, "good": good,
                   "inputs": self.preprocess(images, good_prompts) if images else None,
                   "images": images if self.keep_images else None, "good_prompts": good_prompts,
                   "hashes": hashes if self.hash_images else None}

    def decode(self, item: ScoreItem, prompt: str | None):
        """(error, PIL image, sha256 of the bytes or None): error or image is None."""
        if item.error is not None:
            return item.error, None, None
        if self.needs_prompt and not prompt:
            return NO_PROMPT, None, None
        try:
            source = item.image.read() if isinstance(item.image, TarMember) else item.image
            if self.hash_images and not isinstance(source, bytes):
                source = _read_file(source, item.key)  # hashed and decoded from the same bytes
            digest = hashlib.sha256(source).hexdigest() if self.hash_images else None
            return None, decode_image(source, item.key, self.max_pixels), digest
        except (ImageLoadError, OSError) as err:
            return getattr(err, "reason", None) or f"{type(err).__name__}: {err}", None, None


def _read_file(path: str, name: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError as err:
        raise ImageLoadError(name, "file not found") from err


class BlockDataset(IterableDataset):
    """The batches of the blocks this process owns: `todo` maps block number -> expected digest (others are
    skipped); block `i` belongs to slot `i % n_slots` of this rank's workers (`slot`, `n_slots`: rank, world)."""

    def __init__(self, items: Callable[[], Iterable[ScoreItem]], todo: dict[int, str], block_size: int,
                 reader: BlockReader, slot: int = 0, n_slots: int = 1):
        self.items, self.todo, self.block_size = items, todo, block_size
        self.reader, self.slot, self.n_slots = reader, slot, n_slots

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        n_slots, slot = self.n_slots * workers, self.slot * workers + worker
        for index, block in enumerate(blocks(self.items(), self.block_size)):
            if index % n_slots != slot or index not in self.todo:
                continue
            if block_digest(block) != self.todo[index]:
                raise AgiqaError(f"the inputs changed while scoring (block {index} lists other images than at the "
                                 "start); score them into a new output")
            yield from self.reader.batches(index, self.todo[index], block)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or `taskset`'s share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device, cpus: int | None = None) -> int:
    """Decode workers when `--workers` is not given. On a CPU the model and the decoders share the cores: with 1-2
    CPUs a worker only adds hand-over costs (measured on 2 cores: 0 workers was never slower than 1 or 2, docs/
    scoring.md), so 0; with more, half of them (at most 4) decode beside the model. On a GPU the main process
    mostly waits for the device, so min(4, CPUs - 1)."""
    import torch

    cpus = available_cpus() if cpus is None else cpus
    if torch.device(device).type == "cuda":
        return max(0, min(4, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus // 2)


def loader(dataset: BlockDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches come ready-made from the dataset; workers prefetch a few each while the model runs."""
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)


def score_blocks(scorer, batches: Iterable[dict], write_block: Callable[[int, str, dict], None],
                 on_batch: Callable[[int, int], None] = lambda scored, failed: None,
                 heatmaps: str | os.PathLike | None = None) -> None:
    """Score `batches` with `scorer` (`Scorer.predict_columns`: score (and `score_<target>` for a multi-target
    model), and gate weights and per-expert scores where the model has experts), collect each block's rows and hand
    a finished block to `write_block(index, digest, columns)`; `on_batch(n_scored, n_failed)` reports progress.
    With `heatmaps` (a folder; batches must keep their images), each scored image's heat map is drawn there and
    named in column `heatmap`."""
    names = scorer.column_names
    columns = ["image", "prompt", *names, "error"] + (["heatmap"] if heatmaps is not None else [])
    pending: dict[int, dict[str, list]] = {}
    for batch in batches:
        batch, feature_keys = _with_features(scorer, batch)
        values = {name: np.full(len(batch["keys"]), np.nan) for name in names}
        drawn: list[str | None] = [None] * len(batch["keys"])
        if batch["good"]:
            predicted = scorer.predict_columns(batch["inputs"], batch["images"], batch["good_prompts"], feature_keys,
                                               patch_maps=heatmaps is not None)
            for name in names:
                values[name][batch["good"]] = predicted[name]
            if heatmaps is not None:
                for position, image, patch_map in zip(batch["good"], batch["images"], predicted["patch_map"]):
                    drawn[position] = str(heatmap_file(heatmaps, batch["keys"][position]))
                    write_overlay(Path(drawn[position]), image, patch_map)
        rows = pending.setdefault(batch["block"], {name: [] for name in columns})
        rows["image"] += batch["keys"]
        rows["prompt"] += batch["prompts"]
        for name in names:
            rows[name] += [None if math.isnan(value) else float(value) for value in values[name]]
        rows["error"] += batch["errors"]
        if heatmaps is not None:
            rows["heatmap"] += drawn
        on_batch(len(batch["good"]), len(batch["keys"]) - len(batch["good"]))
        if batch["last"]:
            write_block(batch["block"], batch["digest"], pending.pop(batch["block"]))


def _with_features(scorer, batch: dict) -> tuple[dict, list[str] | None]:
    """The batch without the rows whose semantic features are neither cached nor computable (they become error
    rows), and the feature-cache keys of the rest (None without a cache)."""
    if batch.get("hashes") is None or not batch["good"]:
        return batch, None
    keys = scorer.feature_keys(batch["hashes"], batch["good_prompts"])
    lacking = scorer.lacks_features(keys)
    if not any(lacking):
        return batch, keys
    keep = [i for i, lacks in enumerate(lacking) if not lacks]
    errors = list(batch["errors"])
    for position, lacks in zip(batch["good"], lacking):
        if lacks:
            errors[position] = NO_FEATURES

    def pick(values):
        return None if values is None else [values[i] for i in keep]

    inputs = {name: tensor[keep] for name, tensor in batch["inputs"].items()} if keep else None
    return ({**batch, "errors": errors, "good": pick(batch["good"]), "inputs": inputs, "images": pick(batch["images"]),
             "good_prompts": pick(batch["good_prompts"]), "hashes": pick(batch["hashes"])}, pick(keys))
