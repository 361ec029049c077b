"""Score images with a trained model: paths or PIL images (+ prompts) → scores, bad files reported, not fatal."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agiqa.data.images import DEFAULT_MAX_PIXELS, decode_image
from agiqa.errors import AgiqaError, ImageLoadError

_logger = logging.getLogger(__name__)

@dataclass
class ScoreResult:
    """Scores, names and errors aligned with the inputs: NaN score and a reason where an image failed."""

    scores: np.ndarray  # (n,), or (n, T) for a multi-target model (columns in `Scorer.targets` order)
    names: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    # (n,) share (0..100) of the model's training images each score (the first target's) is better than; None when
    # the model records no training labels (`agiqa.scoring.distribution`)
    percentiles: np.ndarray | None = None

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(name, reason) of every input that could not be scored."""
        return [(name, error) for name, error in zip(self.names, self.errors) if error is not None]


class Scorer:
    """Wraps a quality model for inference: preprocessing as in training, batching, precision, semantic features.

    `model` is a registered name (`"maniqa.koniq10k"`), a directory written by `save_pretrained` / a training run's
    `model/` folder, or a zero-shot VLM (`"vlm:<hub id or folder>"`, `"vlm-alignment:<...>"`: the VLM's expected
    quality level, `agiqa.models.vlm_levels`; its encoder is the VLM itself). MA-AGIQA variants with semantic
    experts need `encoder` (a VLM id or directory) to compute the features of new images; prompts fill `{prompt}`
    placeholders of the encoder's questions. `compile=True` runs the model through `torch.compile` (`compile_mode`,
    e.g. "reduce-overhead" for CUDA graphs): on a GPU the first batch of
    each size compiles (tens of seconds), which pays off on large folders; on a CPU MANIQA's backbone compiles once,
    for one image, and gains a few percent at most (docs/maniqa.md, Speed). Every input is decoded by
    `agiqa.data.images.decode_image` (one rule for paths, bytes, PIL images and arrays; `max_pixels` bounds it).
    """

    def __init__(self, model: str | os.PathLike | nn.Module, pretrained: bool | str = True, device: str = "auto",
                 precision: str = "auto", batch_size: int = 16, encoder=None, trust_remote_code: bool = False,
                 compile: bool = False, compile_mode: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 features: str | os.PathLike | None = None):
        from agiqa.models._factory import expert_names, model_targets, needs_semantic
        from agiqa.runtime import resolve_device
        from agiqa.scoring.distribution import load_distribution
        from agiqa.scoring.inference import prepare_model

        if isinstance(model, (str, os.PathLike)):
            from agiqa.scoring.resolve import resolve_model

            source = resolve_model(model)  # a mistyped path or name is one clear error, before anything loads
            if source.note:
                _logger.info(source.note)
            model = source.model
        built = _build(model, pretrained, trust_remote_code)
        # A model built here keeps its autocast weights in the scoring precision; a module passed in is not recast.
        self.model = prepare_model(built, device, compile=compile, compile_mode=compile_mode,
                                   precision=None if isinstance(model, nn.Module) else precision)
        self.targets = model_targets(built)
        # Gate weights and per-expert scores come from the eager model; a compiled forward serves scores only.
        self.expert_names = [] if compile or compile_mode else expert_names(self.model)
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.needs_semantic = needs_semantic(built)
        # Models with their own preprocessing (MoE-AGIQA: seeded crops + prompt image + tokens).
        self.processor = self.model.processor() if hasattr(self.model, "processor") else None
        self.preprocess = self.processor or (ResizeNormalize(int(self.model.config.img_size))
                                             if "image" in getattr(built, "input_names", ("image",)) else no_pixels)
        if hasattr(built, "build_encoder"):  # the model names its own encoder (a zero-shot VLM)
            self.encoder = built.build_encoder(self.device, precision)
        else:
            self.encoder = _encoder(encoder, trust_remote_code) if self.needs_semantic else None
        self.features = _feature_cache(features, self.encoder) if self.needs_semantic and features else None
        cfg = getattr(self.model, "pretrained_cfg", None)
        self.score_range = tuple(cfg.score_range) if cfg else None
        self.lower_better = bool(cfg.lower_better) if cfg else False
        # A zero-shot VLM's scores are levels 1..5 of its question; a trained model may record its training labels.
        self.level_question = getattr(built.config, "question", None) if hasattr(built, "build_encoder") else None
        self.distribution = None if self.level_question else load_distribution(model, cfg)
        # The registered range describes a model folder only when the folder says so (its training labels).
        self._range_known = not (isinstance(model, (str, os.PathLike)) and Path(model).is_dir())
        if self.distribution is not None:
            if self.distribution.lower_better is not None:
                self.lower_better = self.distribution.lower_better
            if self.distribution.mos_range is not None:
                self.score_range, self._range_known = self.distribution.mos_range, True
        if self.needs_semantic and self.encoder is None and self.features is None:
            raise AgiqaError("this model fuses semantic features: pass encoder=<VLM id or directory> (CLI: --encoder) "
                             "and/or features=<feature cache> (CLI: --features)")

    @property
    def needs_prompt(self) -> bool:
        """True when every image needs its prompt (MoE-AGIQA's semantic branch; encoder questions with `{prompt}`)."""
        from agiqa.semantic.base import prompt_needs_generation_prompt

        uses_text = self.processor is not None and bool(getattr(self.model.config, "use_text", False))
        questions = self.features.prompts if self.features is not None else getattr(self.encoder, "prompts", ())
        return uses_text or (self.needs_semantic and prompt_needs_generation_prompt(questions))

    def feature_keys(self, content_hashes: Sequence[str], prompts: Sequence[str] | None) -> list[str]:
        """Feature-cache keys of images with these content hashes (sha256 of the file bytes) and prompts."""
        from agiqa.semantic.base import prompt_needs_generation_prompt
        from agiqa.semantic.cache import feature_key

        with_prompt = prompt_needs_generation_prompt(self.features.prompts)
        return [feature_key(h, p if with_prompt else None) for h, p in zip(content_hashes, prompts or [None] * len(
            content_hashes))]

    def lacks_features(self, keys: Sequence[str]) -> list[bool]:
        """Per key: True when it is not cached and there is no encoder to compute it (the image cannot be scored)."""
        if self.encoder is not None or self.features is None:
            return [False] * len(keys)
        return [key not in self.features for key in keys]

    @property
    def has_percentile(self) -> bool:
        """True when the model records its training labels' quantiles, so every score gets a `percentile`."""
        return self.distribution is not None and self.distribution.has_percentile

    def percentiles(self, scores) -> np.ndarray | None:
        """The share (0..100) of the training images each score is better than; None without training quantiles.
        A multi-target model's (n, T) scores are placed by their first column (`score`)."""
        if not self.has_percentile:
            return None
        scores = np.asarray(scores, dtype=float)
        return self.distribution.percentile(scores[:, 0] if scores.ndim == 2 else scores, self.lower_better)

    @property
    def scale(self) -> str:
        """One line saying what the scores mean (zero-shot level scale; training range and percentile; direction)."""
        from agiqa.scoring.distribution import scale_text

        return scale_text(self.score_range if self._range_known else None, self.lower_better, self.distribution,
                          self.level_question)

    @property
    def column_names(self) -> list[str]:
        """The columns `predict_columns` gives besides `patch_map`: `score`, `percentile` (where the model records
        its training labels), `score_<target>` for several targets, then `gate_<expert>` and the expert score
        column(s) of each expert."""
        names = ["score"] + (["percentile"] if self.has_percentile else [])
        names += [f"score_{target}" for target in self.targets] if len(self.targets) > 1 else []
        suffixes = [f"_{target}" for target in self.targets] if len(self.targets) > 1 else [""]
        for expert in self.expert_names:
            names += [f"gate_{expert}"] + [f"expert_{expert}{suffix}" for suffix in suffixes]
        return names

    @property
    def image_size(self) -> int | None:
        """The model's input size; None for models that take no pixels of their own (a zero-shot VLM)."""
        size = getattr(self.model.config, "img_size", None)
        return int(size) if size is not None else None

    def score(self, images: list, prompts: list[str] | None = None, names: list[str] | None = None) -> ScoreResult:
        """Scores for image paths, encoded bytes, PIL images or arrays; a failing image gets NaN and an error.

        `names` label the inputs in errors (default: the path, a PIL image's filename, or "image <i>").
        """
        parts = list(self.iter_scores(images, prompts, names))
        if not parts:
            return ScoreResult(np.empty(0), [], [], np.empty(0) if self.has_percentile else None)
        return ScoreResult(np.concatenate([part.scores for part in parts]),
                           [name for part in parts for name in part.names],
                           [error for part in parts for error in part.errors],
                           np.concatenate([part.percentiles for part in parts]) if self.has_percentile else None)

    def iter_scores(self, images: list, prompts: list[str] | None = None,
                    names: list[str] | None = None) -> Iterator[ScoreResult]:
        """`score`, one batch at a time: a `ScoreResult` per `batch_size` consecutive inputs, so callers can write
        results as they come (and keep them when interrupted)."""
        for what, values in (("prompts", prompts), ("names", names)):
            if values is not None and len(values) != len(images):
                raise ValueError(f"got {len(images)} images but {len(values)} {what}")
        names = list(names) if names is not None else [_input_name(item, i) for i, item in enumerate(images)]
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            shape = (stop - start,) if len(self.targets) == 1 else (stop - start, len(self.targets))
            scores, errors, loaded = np.full(shape, np.nan), [None] * (stop - start), []
            for offset, index in enumerate(range(start, stop)):
                try:
                    loaded.append((offset, decode_image(images[index], names[index], self.max_pixels)))
                except ImageLoadError as err:
                    errors[offset] = err.reason
                    _logger.warning("could not score %s: %s", names[index], err.reason)
            keys = None
            if loaded and self.features is not None:
                loaded, keys = self._cached_or_computable(loaded, images[start:stop], prompts, start, errors)
            if loaded:
                offsets, pil_images = zip(*loaded)
                batch_prompts = [prompts[start + o] for o in offsets] if prompts is not None else None
                scores[list(offsets)] = self._score_batch(list(pil_images), batch_prompts, keys)
            yield ScoreResult(scores, names[start:stop], errors, self.percentiles(scores))

    def _cached_or_computable(self, loaded: list, sources: list, prompts, start: int, errors: list):
        """Feature-cache keys of the decoded images (paths and bytes are hashed; other inputs have no key), and
        the images left once those with neither cached features nor an encoder became errors."""
        from agiqa._files import sha256_file
        from agiqa.scoring.stream import NO_FEATURES

        def content_hash(source) -> str:
            if isinstance(source, (bytes, bytearray, memoryview)):
                return hashlib.sha256(source).hexdigest()
            return sha256_file(source) if isinstance(source, (str, os.PathLike)) else ""

        hashes = [content_hash(sources[offset]) for offset, _ in loaded]
        batch_prompts = [prompts[start + offset] for offset, _ in loaded] if prompts is not None else None
        keys = self.feature_keys(hashes, batch_prompts)
        kept = []
        for (offset, image), key, lacks in zip(loaded, keys, self.lacks_features(keys)):
            if lacks:
                errors[offset] = NO_FEATURES
            else:
                kept.append(((offset, image), key))
        return [pair for pair, _ in kept], [key for _, key in kept]

    def predict(self, inputs: dict, pil_images: Sequence | None = None, prompts: Sequence[str] | None = None,
                feature_keys: Sequence[str] | None = None) -> np.ndarray:
        """Scores of a batch made by `preprocess`. Semantic features, where the model fuses them, come from the
        feature cache for `feature_keys` found there, else from the encoder on the decoded images and prompts."""
        from agiqa.models import model_scores
        from agiqa.scoring.inference import inference_context

        batch = self._device_batch(inputs, pil_images, prompts, feature_keys)
        with inference_context(self.precision, self.device):
            return model_scores(self.model, batch).float().cpu().numpy()

    def predict_columns(self, inputs: dict, pil_images: Sequence | None = None,
                        prompts: Sequence[str] | None = None, feature_keys: Sequence[str] | None = None,
                        patch_maps: bool = False) -> dict[str, np.ndarray]:
        """`predict`'s scores as column `score` (for a multi-target model: the first target's, and `score_<target>`
        for each), plus `gate_<expert>` and `expert_<expert>` (the expert's own score) for every expert of a
        mixture-of-experts model (`expert_names`), from the same forward pass; `percentile` where the model records
        its training labels; with `patch_maps`, also `patch_map` (B, H, W) where the model has one (MANIQA's
        per-patch score x weight). See `column_names`."""
        from agiqa.models._factory import explanation_columns, score_columns

        if not self.expert_names and not (patch_maps and self.has_patch_map):
            columns = score_columns(self.predict(inputs, pil_images, prompts, feature_keys), self.targets)
        else:
            from agiqa.scoring.inference import inference_context

            batch = self._device_batch(inputs, pil_images, prompts, feature_keys)
            with inference_context(self.precision, self.device):
                columns = explanation_columns(self.model, batch, self.expert_names, patch_maps)
                columns = {name: value.float().cpu().numpy() for name, value in columns.items()}
        if self.has_percentile:
            columns["percentile"] = self.percentiles(columns["score"])
        return columns

    @property
    def has_patch_map(self) -> bool:
        """True when the model can say where its score comes from (MANIQA and MA-AGIQA with the MANIQA expert)."""
        from agiqa.models.maniqa import has_patch_map

        return has_patch_map(self.model)

    def _device_batch(self, inputs: dict, pil_images: Sequence | None, prompts: Sequence[str] | None,
                      feature_keys: Sequence[str] | None = None) -> dict:
        if self.needs_semantic:
            images = list(pil_images) if pil_images is not None else []  # None: all cached, no encoder
            inputs = {**inputs, "semantic": self._semantic(images, prompts, feature_keys)}
        return {key: value.to(self.device, non_blocking=True) for key, value in inputs.items()}

    def _semantic(self, pil_images: list, prompts: Sequence[str] | None, keys: Sequence[str] | None):
        """(N, P, D) features: cached rows read, the others encoded (one encoder call for all of them)."""
        cached = [self.features is not None and keys is not None and key in self.features for key in keys or []]
        if not any(cached):
            return self.encoder.encode(pil_images, prompts)
        features = self.features.get_many([key for key, hit in zip(keys, cached) if hit])
        if all(cached):
            return features
        missing = [i for i, hit in enumerate(cached) if not hit]
        encoded = self.encoder.encode([pil_images[i] for i in missing], [prompts[i] for i in missing] if prompts
                                      else None).float()
        rows = torch.empty(len(cached), *features.shape[1:])
        rows[[i for i, hit in enumerate(cached) if hit]] = features
        rows[missing] = encoded
        return rows

    def _score_batch(self, pil_images: list, prompts: list[str] | None, feature_keys: list[str] | None = None
                     ) -> np.ndarray:
        if prompts is None and self.processor is not None and self.model.config.use_text:
            raise AgiqaError("MoE-AGIQA compares each image with its prompt: pass prompts (CLI: --prompts)")
        return self.predict(self.preprocess(pil_images, prompts), pil_images, prompts, feature_keys)


class ResizeNormalize:
    """The MANIQA / MA-AGIQA input: whole image resized to `size` (bicubic) and normalised, as in training."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, pil_images: Sequence, prompts: Sequence[str] | None = None) -> dict:
        from agiqa.data.transforms import normalize, resize_image

        return {"image": normalize(torch.stack([resize_image(image, self.size) for image in pil_images]))}


def no_pixels(pil_images: Sequence, prompts: Sequence[str] | None = None) -> dict:
    """The preprocessing of models fed semantic features only: the decoded images go to the encoder as they are."""
    return {}


def _input_name(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return getattr(item, "filename", None) or f"image {index}"


def _build(model, pretrained, trust_remote_code: bool = False) -> nn.Module:
    from agiqa.models import create_model
    from agiqa.models.vlm_levels import is_vlm_spec, model_from_spec

    if isinstance(model, nn.Module):
        return model
    if is_vlm_spec(model):
        return model_from_spec(model, trust_remote_code)
    if Path(model).is_dir():
        from agiqa.models import saved_architecture

        return create_model(saved_architecture(model), pretrained=str(model))
    return create_model(str(model), pretrained=pretrained)


def _feature_cache(path: str | os.PathLike, encoder):
    """The feature cache at `path`, checked against the encoder that would fill its gaps (same setup or refused)."""
    from agiqa.semantic.cache import FeatureCache, StaleFeatureCacheError, fingerprint_diff

    cache = FeatureCache(path)
    if encoder is not None and hasattr(encoder, "fingerprint"):
        diff = fingerprint_diff(cache.fingerprint, encoder.fingerprint())
        if diff:
            raise StaleFeatureCacheError(f"feature cache {path} was made by another encoder setup than --encoder:\n  "
                                         + "\n  ".join(diff))
    return cache


def _encoder(encoder, trust_remote_code: bool):
    if encoder is None or not isinstance(encoder, (str, os.PathLike)):
        return encoder
    from agiqa.semantic import create_encoder

    return create_encoder(str(encoder), trust_remote_code=trust_remote_code)


def create_scorer(model: str | os.PathLike | nn.Module, **kwargs) -> Scorer:
    """`agiqa.create_scorer("runs/x/model").score(["a.png", "b.png"]).scores`."""
    return Scorer(model, **kwargs)
