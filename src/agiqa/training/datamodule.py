"""Data for training and evaluation: a resolved experiment's labels and splits (`training.resolve`) → images decoded
and resized once (+ semantic features) → batches."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from agiqa.errors import DatasetValidationError, ImageLoadError
from agiqa.data.transforms import augment, normalize, resize_image
from agiqa.training.config import DataSection
from agiqa.training.resolve import Experiment, ResolvedData


def decode_images(paths: list[str], size: int, cache_dir: str | None = None) -> torch.Tensor:
    """All images decoded and resized once → uint8 (N, 3, size, size); every unreadable file is listed in one error.

    With `cache_dir`, the tensor is stored as `.npy` keyed by the size and each file's path, byte size and mtime,
    so later runs skip decoding and an edited file is decoded again.
    """
    cache_file = _image_cache_file(paths, size, cache_dir)
    if cache_file is not None and cache_file.is_file():
        return torch.from_numpy(np.load(cache_file))
    from agiqa.data.images import load_image

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    failures = []
    for index, path in enumerate(paths):
        try:
            out[index] = resize_image(load_image(path), size)
        except ImageLoadError as err:
            failures.append(str(err))
    if failures:
        shown = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise DatasetValidationError(f"{len(failures)} of {len(paths)} images could not be read:\n  {shown}{more}")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npy")  # DDP ranks decode at once: one temporary each
        np.save(tmp, out.numpy())
        tmp.replace(cache_file)
    return out


def _image_cache_file(paths: list[str], size: int, cache_dir: str | None) -> Path | None:
    """Cache file named by a hash of the size and every file's path, byte size and modification time (ns): a file
    edited, replaced or touched in place gives a new key, so stale pixels are never used (docs/robustness.md)."""
    if not cache_dir:
        return None
    digest = hashlib.sha256(f"{size}\n".encode())
    for path in paths:
        digest.update(f"{path}\0{_file_stamp(path)}\n".encode())
    return Path(cache_dir) / f"images_{size}_{digest.hexdigest()[:16]}.npy"


def _file_stamp(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "missing"  # decoding reports it; a later run with the file present gets a new key
    return f"{info.st_size}:{info.st_mtime_ns}"


class EpochShuffle(Sampler):
    """Training order: one permutation per epoch, drawn from (seed, epoch) alone, so a run resumed at an epoch
    boundary sees exactly the batches an uninterrupted run sees (Lightning calls `set_epoch` every epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class AGIQASamples(Dataset):
    """Rows of a split: normalised image (3, S, S) and semantic features (P, D) where present, MOS, row index."""

    def __init__(self, images, mos, rows, semantic=None, train_augment=False, augment_prob=0.7):
        self.images, self.mos, self.rows, self.semantic = images, mos, list(rows), semantic
        self.train_augment, self.augment_prob = train_augment, augment_prob

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict:
        row = self.rows[item]
        sample = {"mos": self.mos[row], "row": row}
        if self.images is not None:
            image = self.images[row]
            sample["image"] = normalize(augment(image, self.augment_prob) if self.train_augment else image)
        if self.semantic is not None:
            sample["semantic"] = self.semantic[row]
        return sample


class ProcessedSamples(Dataset):
    """Rows for models with their own preprocessing (`processor.sample`, e.g. MoE-AGIQA's crops of the full-size
    image + prompt image + tokens): each image is decoded when its sample is drawn, as the official code does.

    Training crops come from torch's global RNG (seeded per worker); evaluation crops are the processor's seeded
    test crops, the same as `agiqa score` takes for that image.
    """

    def __init__(self, paths, prompts, mos, rows, processor, num_crops: int, train: bool):
        self.paths, self.prompts, self.mos, self.rows = paths, prompts, mos, list(rows)
        self.processor, self.num_crops, self.train = processor, num_crops, train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> dict:
        from agiqa.data.images import load_image

        row = self.rows[item]
        sample = self.processor.sample(load_image(self.paths[row]), self.prompts[row], self.num_crops, self.train)
        return {**sample, "mos": self.mos[row], "row": row}


@dataclass
class LoadedData:
    """One dataset in memory: its label frame, split, decoded images (None when decoded per sample), MOS and
    semantic features."""

    frame: pd.DataFrame
    split: object
    images: torch.Tensor | None
    mos: torch.Tensor
    semantic: torch.Tensor | None = None


class AGIQADataModule(L.LightningDataModule):
    """An experiment's datasets (`training.resolve.Experiment`: labels, splits, MOS) with cached images (+ semantic
    features) for `IQAModule`.

    `prepare_data` extracts missing semantic features (one process); `setup` decodes images and reads features in
    every process. The split is by row index and was checked disjoint when resolved, so no test row is trained on;
    a cross-dataset experiment tests on its `test` dataset. With a `processor` (a model's own preprocessing, see
    `ProcessedSamples`) images are decoded per sample instead, with `train_crops` / `test_crops` crops per image.
    Models fed semantic features only (`needs_images=False`, a zero-shot VLM) get no decoded images.
    """

    def __init__(self, experiment: Experiment, needs_semantic: bool = False, processor=None, train_crops: int = 1,
                 test_crops: int = 1, select_on_test: bool = False, needs_images: bool = True):
        super().__init__()
        self.experiment = experiment
        self.config = experiment.data.section
        self.needs_semantic, self.needs_images = needs_semantic, needs_images
        self.official_quirks = experiment.config.official_quirks
        self.seed = experiment.config.trainer.seed
        self.processor, self.train_crops, self.test_crops = processor, train_crops, test_crops
        self.select_on_test = select_on_test  # an official quirk: "validation" runs on the test part
        self.fit_data: LoadedData | None = None
        self.test_data: LoadedData | None = None

    def prepare_data(self) -> None:
        if self.needs_semantic:
            for data in self.datasets():
                ensure_features(data.section, data.frame)

    def setup(self, stage: str | None = None) -> None:
        if self.fit_data is None:
            self.fit_data = self.load(self.experiment.data)
        if self.test_data is None:
            self.test_data = self.load(self.experiment.test) if self.experiment.cross_dataset else self.fit_data

    def datasets(self) -> list[ResolvedData]:
        """The training dataset, then the cross-dataset test set where there is one."""
        experiment = self.experiment
        return [experiment.data] + ([experiment.test] if experiment.cross_dataset else [])

    def load(self, data: ResolvedData) -> LoadedData:
        """`data` in memory: its images decoded (unless decoded per sample or not needed) and its features read."""
        frame, section = data.frame, data.section
        decode = self.processor is None and self.needs_images
        images = decode_images(list(frame["path"]), section.image_size, section.image_cache) if decode else None
        semantic = read_features(section, frame) if self.needs_semantic else None
        return LoadedData(frame, data.split, images, data.mos, semantic)

    def samples(self, part: str, train_augment: bool = False) -> Dataset:
        data = self.test_data if part == "test" else self.fit_data
        rows = getattr(data.split, part)
        if self.processor is not None:
            return ProcessedSamples(list(data.frame["path"]), list(data.frame["prompt"]), data.mos, rows,
                                    self.processor, self.train_crops if train_augment else self.test_crops,
                                    train=train_augment)
        return AGIQASamples(data.images, data.mos, rows, data.semantic, train_augment, self.config.augment_prob)

    def train_dataloader(self) -> DataLoader:
        # Processed samples always train on fresh random crops (the official augmentation).
        train_augment = self.config.augment or self.processor is not None
        samples = self.samples("train", train_augment=train_augment)
        return DataLoader(samples, batch_size=self.config.batch_size, sampler=EpochShuffle(len(samples), self.seed),
                          drop_last=True, num_workers=self.config.num_workers)

    def eval_dataloader(self, part: str) -> DataLoader:
        if self.official_quirks:
            # The released code evaluates with the training batch size, drop_last=True and a shuffled test set.
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(self.samples(part), batch_size=self.config.batch_size, drop_last=True,
                              shuffle=part == "test", generator=generator, num_workers=self.config.num_workers)
        return DataLoader(self.samples(part), batch_size=self.config.eval_batch_size, shuffle=False,
                          num_workers=self.config.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test" if self.select_on_test else "val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


def ensure_features(config: DataSection, frame: pd.DataFrame) -> None:
    """Extract semantic features for the images the cache lacks (needs `features.encoder`); a no-op when complete."""
    from agiqa.semantic import FeatureCacheError, MissingFeaturesError, create_encoder, extract_features

    features = config.features
    if not features.cache:
        raise DatasetValidationError("this model needs semantic features: "
                                     "set data.features.cache (a feature cache dir)")
    try:
        read_features(config, frame)
        return
    except (MissingFeaturesError, FeatureCacheError):
        if not features.encoder:
            raise
    questions = {"prompts": features.prompts} if features.prompts else {}
    if features.answers:
        questions["answers"] = features.answers
    encoder = create_encoder(features.encoder, trust_remote_code=features.trust_remote_code,
                             precision=features.precision, **questions)
    report = extract_features(list(frame["path"]), encoder, features.cache, batch_size=features.batch_size,
                              generation_prompts=list(frame["prompt"]))
    if report.failed:
        raise DatasetValidationError(f"feature extraction failed for {len(report.failed)} images: {report.failed[:5]}")


def read_features(config: DataSection, frame: pd.DataFrame) -> torch.Tensor:
    """Semantic features (N, P, D) aligned with the frame's rows, from the configured cache."""
    from agiqa.semantic import load_features

    return load_features(config.features.cache, list(frame["path"]), generation_prompts=list(frame["prompt"])).float()
