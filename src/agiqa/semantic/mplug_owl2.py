"""mPLUG-Owl2 features and level scores exactly as MA-AGIQA's getFeature.py and Q-Align's scorer compute them.

Matches wangpuyi/MA-AGIQA getFeature.py@11c0cda: prompt `"USER: <question>\\n<|image|> ASSISTANT:"` (no system
prompt), `<|image|>` spliced in as IMAGE_TOKEN_INDEX and expanded by the model to its 65 visual tokens, images padded
to square with the CLIP mean colour then the checkpoint's CLIP processor (448 px), `hidden_states[-1]` mean-pooled
over all positions. Q-Align (Q-Future/Q-Align q_align/evaluate/scorer.py) asks with `Q_ALIGN_TEMPLATE` and reads the
level words' logits at the last position.

Two backends give the same numbers (benchmarks/parity_mplug_owl2):
- "native" (default): `agiqa.semantic.owl2`, our implementation on current torch / transformers; loads the released
  folder (hub id or local) unchanged, no extra package, no remote code. The vision encoder and abstractor run once
  per image for all questions, and all (image, question) sequences go through the decoder in one batched forward.
- "official": the `mplug_owl2` package of the release (it pins transformers 4.31, so it lives in its own
  environment); needs `trust_remote_code=True`. One forward per question, as getFeature.py.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agiqa.runtime import cpu_has_fast_bf16, resolve_device, resolve_precision, torch_dtype
from agiqa.semantic.base import (
    PAPER_PROMPTS,
    SemanticEncoder,
    SemanticEncoderError,
    check_pooling,
    fill_prompt,
    masked_mean,
)
from agiqa.semantic.hf import local_revision, pad_to_square
from agiqa.semantic.levels import LEVEL_WORDS, answer_token_count, level_probabilities, level_token_ids, with_answer

logger = logging.getLogger(__name__)

MPLUG_OWL2_ID = "MAGAer13/mplug-owl2-llama2-7b"
MPLUG_OWL2_TEMPLATE = "USER: {question}\n<|image|> ASSISTANT:"
Q_ALIGN_TEMPLATE = "USER: {question}\n<|image|>\nASSISTANT:"  # q_align/evaluate/scorer.py (Q-Future/Q-Align)
# Q-Align's released weights: mPLUG-Owl2 models.
Q_ALIGN_IDS = frozenset({"q-future/one-align", "q-future/q-align-koniq-spaq-v0", "q-future/q-align-aesthetic",
                         "q-future/q-align-image"})
BACKENDS = ("native", "official")
CHECKPOINT_FILES = ("*.json", "tokenizer.model")
INSTALL_HINT = (
    "the official backend needs the `mplug_owl2` package (it pins transformers==4.31, so use its own environment):\n"
    '    pip install "git+https://github.com/X-PLUG/mPLUG-Owl.git#subdirectory=mPLUG-Owl2"\n'
    "The native backend (the default) needs neither the package nor --trust-remote-code."
)


def is_q_align(encoder_id: str) -> bool:
    """Q-Align's released checkpoints, by hub id or by the folder name they download as (…/one-align)."""
    lowered = str(encoder_id).lower().rstrip("/")
    return lowered in Q_ALIGN_IDS or lowered.rsplit("/", 1)[-1] in {i.split("/")[1] for i in Q_ALIGN_IDS}


def is_mplug_owl2(encoder_id: str) -> bool:
    """Hub ids / paths of mPLUG-Owl2 checkpoints (also folders whose config says model_type mplug_owl2)."""
    lowered = str(encoder_id).lower().replace("_", "-")
    if "mplug-owl2" in lowered or lowered in Q_ALIGN_IDS:
        return True
    config = os.path.join(str(encoder_id), "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as fh:
                return json.load(fh).get("model_type") == "mplug_owl2"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def default_precision(device: torch.device) -> str:
    """fp16 on GPUs (the released features are fp16), bf16 on CPUs with AVX512-BF16 / AMX, else fp32."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def checkpoint_folder(encoder_id: str, revision: str | None = None) -> Path:
    """A local folder as is; a hub id downloaded (config, weights, tokenizer, processor) into the hub cache."""
    if os.path.isdir(encoder_id):
        return Path(encoder_id)
    if os.path.exists(encoder_id) or encoder_id.startswith((".", "/", "~")) or encoder_id.count("/") != 1:
        raise SemanticEncoderError(f"{encoder_id}: no such model folder (expected a folder with config.json, the "
                                   "weights, tokenizer.model and preprocessor_config.json, or a hub id)")
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        files = list_repo_files(encoder_id, revision=revision)
        weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["*.bin"]
        return Path(snapshot_download(encoder_id, revision=revision, allow_patterns=[*CHECKPOINT_FILES, *weights]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated, ...: one line for all
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SemanticEncoderError(f"cannot download {encoder_id} ({reason}); pass a local folder of the released "
                                   "checkpoint instead") from None


class MplugOwl2Encoder(SemanticEncoder):
    """The paper's semantic experts (and Q-Align's level scores) from an mPLUG-Owl2 checkpoint.

    Output `(B, n_prompts, hidden)` float32. `pooling` "image" averages the visual tokens, "text" the tokens between
    the template's opening and the image (the question); "all" (default) is the paper's. `template` holds
    `{question}` and the `<|image|>` (or `{image}`) placeholder (default: Q-Align's `Q_ALIGN_TEMPLATE` for Q-Align's
    checkpoints, else MA-AGIQA's). With `answers` (one answer prefix per question) each vector ends with the level-word
    probabilities read from the same forward (`agiqa.semantic.levels`), as for `HFVLMEncoder`. `precision` "auto" is
    `default_precision`; `square_pad` False skips the mean-colour padding; `backend` "native" (default) or
    "official" (module docstring).
    """

    def __init__(
        self,
        encoder_id: str = MPLUG_OWL2_ID,
        prompts: Sequence[str] = PAPER_PROMPTS,
        layer: int = -1,
        pooling: str = "all",
        device: str | torch.device | None = None,
        precision: str = "auto",
        trust_remote_code: bool = False,
        revision: str | None = None,
        template: str | None = None,
        answers: Sequence[str] | None = None,
        backend: str = "native",
        square_pad: bool = True,
    ):
        if backend not in BACKENDS:
            raise SemanticEncoderError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not prompts:
            raise SemanticEncoderError("at least one prompt is required")
        self.name = str(encoder_id)
        self.revision = revision or local_revision(self.name)  # a local folder's content id keys stale caches
        self.prompts = tuple(prompts)
        if answers is not None and len(answers) != len(self.prompts):
            raise SemanticEncoderError(f"got {len(self.prompts)} questions but {len(answers)} answer prefixes")
        self.answers = tuple(answers) if answers is not None else None
        self.template = (template or (Q_ALIGN_TEMPLATE if is_q_align(self.name) else MPLUG_OWL2_TEMPLATE)).replace(
            "{image}", "<|image|>")
        if "<|image|>" not in self.template or "{question}" not in self.template:
            raise SemanticEncoderError(f"template {self.template!r} needs both {{question}} and <|image|>")
        self.layer = int(layer)
        self.pooling = check_pooling(pooling)
        self.device = resolve_device(device)
        self.precision = default_precision(self.device) if precision == "auto" else \
            resolve_precision(precision, self.device)
        self.backend = backend
        self.square_pad = bool(square_pad)
        self._load(trust_remote_code)
        self.hidden_dim = int(self.model.config.hidden_size)
        self.feature_dim = self.hidden_dim + (len(LEVEL_WORDS) if self.answers else 0)
        if self.answers:
            texts = [self.template.replace("{question}", question) for question in self.prompts]
            self.answer_lengths = [answer_token_count(self.tokenizer, text, answer)
                                   for text, answer in zip(texts, self.answers)]
            self.level_ids = level_token_ids(self.tokenizer, with_answer(texts[0], self.answers[0]))

    def _load(self, trust_remote_code: bool) -> None:
        from agiqa.semantic import owl2

        folder = checkpoint_folder(self.name, self.revision)
        owl2.Owl2Config.from_pretrained(folder)  # a folder of another model is told so first
        self.tokenizer = owl2.Owl2Tokenizer.from_pretrained(folder)
        self.image_processor = owl2.Owl2ImageProcessor.from_pretrained(folder)
        self.model = owl2.load_model(folder, device=self.device, dtype=torch_dtype(self.precision))
        self._tokenize = owl2.tokenize_with_image
        self.image_token_index = owl2.IMAGE_TOKEN_INDEX

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "mplug-owl2",
            "encoder": self.name,
            "revision": self.revision,
            "prompts": list(self.prompts),
            "prompt_names": list(self.prompt_names),
            "layer": self.layer,
            "pooling": self.pooling,
            "dtype": self.precision,
            "template": self.template,
            "square_pad": self.square_pad,
            "feature_dim": self.feature_dim,
            **({"answers": list(self.answers), "levels": list(LEVEL_WORDS)} if self.answers else {}),
        }

    def render(self, question: str, index: int) -> str:
        """The prompt text for question `index` (generation prompt already filled in), with its answer prefix."""
        text = self.template.replace("{question}", question)
        return with_answer(text, self.answers[index]) if self.answers else text

    @torch.inference_mode()
    def encode(self, images: list, generation_prompts: list[str] | None = None) -> torch.Tensor:
        if not images:
            return torch.empty(0, len(self.prompts), self.feature_dim)
        if generation_prompts is not None and len(generation_prompts) != len(images):
            raise SemanticEncoderError(f"got {len(images)} images but {len(generation_prompts)} generation prompts")
        pixels = self.image_processor(images, square_pad=self.square_pad).to(self.device, torch_dtype(self.precision))
        visual = self.model.encode_images(pixels)  # once per image, shared by every question
        p = len(self.prompts)
        # Image-major rows: row i * P + j is image i asking question j.
        texts = [self.render(fill_prompt(q, None if generation_prompts is None else generation_prompts[i]), j)
                 for i in range(len(images)) for j, q in enumerate(self.prompts)]
        ids = [self._tokenize(text, self.tokenizer) for text in texts]
        rows = self._forward_rows(ids, visual.repeat_interleave(p, dim=0), [j for _ in images for j in range(p)])
        return rows.reshape(len(images), p, self.feature_dim).float().cpu()

    def _forward_rows(self, ids: list[list[int]], visual: torch.Tensor, questions: list[int]) -> torch.Tensor:
        """One decoder forward over right-padded rows -> (rows, feature_dim) pooled features (+ level probabilities)."""
        longest = max(len(row) for row in ids)
        input_ids = torch.tensor([row + [0] * (longest - len(row)) for row in ids], device=self.device)
        embeds, is_visual = self.model.embed_multimodal(input_ids, visual)
        n_visual = visual.shape[1]
        lengths = torch.tensor([len(row) - 1 + n_visual for row in ids], device=self.device)
        layers = (self.layer, -1) if self.answers and self.layer != -1 else (self.layer,)
        states = self.model.hidden_states(embeds, is_visual, layers=layers)
        mask = self._pooling_mask(ids, is_visual, lengths, questions)
        features = masked_mean(states[0], mask)
        if not self.answers:
            return features
        logits = self.model.logits_at(states[-1], lengths - 1)[:, self.level_ids]
        return torch.cat([features, level_probabilities(logits)], dim=-1)

    def _pooling_mask(self, ids, is_visual, lengths, questions) -> torch.Tensor:
        positions = torch.arange(is_visual.shape[1], device=self.device)
        if self.pooling == "image":
            return is_visual
        if self.pooling == "all":
            ends = lengths
            if self.answers:  # the answer prefix is not part of the features
                ends = ends - torch.tensor([self.answer_lengths[j] for j in questions], device=self.device)
            return positions[None, :] < ends[:, None]
        opening = self.template[:self.template.index("{question}")]
        if "<|image|>" in opening:
            raise SemanticEncoderError("pooling 'text' needs a template with {question} before <|image|>")
        start = len(self._tokenize(opening.rstrip(), self.tokenizer)) if opening.strip() else 1
        image_at = torch.tensor([row.index(self.image_token_index) for row in ids], device=self.device)
        return (positions[None, :] >= start) & (positions[None, :] < image_at[:, None])


class OfficialMplugOwl2Encoder(MplugOwl2Encoder):
    """`MplugOwl2Encoder` through the release's own `mplug_owl2` package (its environment, `trust_remote_code`)."""

    def __init__(self, *args, _loaded: tuple | None = None, **kwargs):
        self._preloaded = _loaded
        super().__init__(*args, **kwargs, backend="official")

    def _load(self, trust_remote_code: bool) -> None:
        if not trust_remote_code:
            raise SemanticEncoderError(f"the official backend for {self.name} runs code from the mplug_owl2 package; "
                                       "pass --trust-remote-code (trust_remote_code=True) to allow it, or use the "
                                       "native backend")
        try:
            from mplug_owl2.constants import IMAGE_TOKEN_INDEX
            from mplug_owl2.mm_utils import get_model_name_from_path, tokenizer_image_token
            from mplug_owl2.model.builder import load_pretrained_model
        except ImportError as err:
            raise SemanticEncoderError(f"{INSTALL_HINT}\n(import failed: {err})") from err
        loaded = self._preloaded or load_pretrained_model(self.name, None, get_model_name_from_path(self.name),
                                                          False, False, device=str(self.device))
        self.tokenizer, model, self.image_processor, _ = loaded
        self.model = model.to(self.device, torch_dtype(self.precision)).eval().requires_grad_(False)
        self.image_token_index = IMAGE_TOKEN_INDEX
        self._tokenize = lambda text, tokenizer: tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX)

    @torch.inference_mode()
    def encode(self, images: list, generation_prompts: list[str] | None = None) -> torch.Tensor:
        if not images:
            return torch.empty(0, len(self.prompts), self.feature_dim)
        mean = self.image_processor.image_mean
        pixels = torch.cat([
            self.image_processor.preprocess(pad_to_square(im, mean) if self.square_pad else im,
                                            return_tensors="pt")["pixel_values"]
            for im in images
        ]).to(self.device, torch_dtype(self.precision))
        per_prompt = []
        for j, question in enumerate(self.prompts):
            # Distinct generation prompts give distinct sequences: one forward per image then.
            if generation_prompts is not None and "{prompt}" in question:
                groups = [[i] for i in range(len(images))]
            else:
                groups = [list(range(len(images)))]
            rows = [None] * len(images)
            for group in groups:
                q = fill_prompt(question, generation_prompts[group[0]] if generation_prompts else None)
                feats = self._encode_question(q, pixels[group], j)
                for i, f in zip(group, feats):
                    rows[i] = f
            per_prompt.append(torch.stack(rows))
        return torch.stack(per_prompt, dim=1).float().cpu()

    def _encode_question(self, question: str, pixels: torch.Tensor, index: int) -> torch.Tensor:
        ids = torch.tensor(self._tokenize(self.render(question, index), self.tokenizer), device=self.device)
        out = self.model(ids.unsqueeze(0).repeat(pixels.shape[0], 1), images=pixels, output_hidden_states=True)
        hidden = out["hidden_states"][self.layer]
        n, length = hidden.shape[:2]
        n_visual = length - (ids.numel() - 1)
        lengths = torch.full((n,), length, device=self.device)
        is_visual = torch.zeros(n, length, dtype=torch.bool, device=self.device)
        pos = int((ids == self.image_token_index).nonzero()[0, 0])
        is_visual[:, pos:pos + n_visual] = True
        mask = self._pooling_mask([ids.tolist()] * n, is_visual, lengths, [index] * n)
        if not self.answers:
            return masked_mean(hidden, mask)
        levels = level_probabilities(out["logits"][:, -1, self.level_ids])
        return torch.cat([masked_mean(hidden, mask), levels], dim=-1)


def create_mplug_owl2_encoder(encoder_id: str, backend: str = "native", **kwargs) -> MplugOwl2Encoder:
    """The encoder for an mPLUG-Owl2 checkpoint with the chosen backend."""
    if backend == "official":
        return OfficialMplugOwl2Encoder(encoder_id, **kwargs)
    return MplugOwl2Encoder(encoder_id, backend=backend, **kwargs)
