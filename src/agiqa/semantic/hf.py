"""Any Hugging Face image-text-to-text model (Qwen2-VL / Qwen2.5-VL, LLaVA(-NeXT), Idefics3 / SmolVLM, InternVL, ...)
as a `SemanticEncoder`, through `AutoProcessor` + `AutoModelForImageTextToText` and the model's chat template.

Speed: one forward per image batch covers every (image, question) pair: the B x P sequences are right-padded into one
batch. Right padding keeps every real token's position and attention identical to an unpadded run (causal attention
never looks at later pad tokens), so features do not depend on batch composition; the attention mask then excludes
the pad positions from the pooling. Where the model accepts precomputed vision outputs (`mm_encoder_outputs`,
transformers >= 5), the vision tower runs once per image and its output is reused for all P questions.

Level scores (`answers=`, see `agiqa.semantic.levels`) ride on the same forward: each question's text ends with its
answer prefix, the features pool only the positions before it (causal attention: those positions cannot see the
appended tokens, so the features are unchanged) and the final hidden state of each row's last token gives the level
words' next-token logits. The extra cost is the few answer tokens, not a second pass.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agiqa.runtime import resolve_device, resolve_precision, torch_dtype
from agiqa.semantic.base import (
    PAPER_PROMPTS,
    SemanticEncoder,
    SemanticEncoderError,
    check_pooling,
    fill_prompt,
    masked_mean,
)
from agiqa.semantic.levels import (
    LEVEL_WORDS,
    answer_token_count,
    level_probabilities,
    level_token_ids,
    with_answer,
)

logger = logging.getLogger(__name__)

# Processor outputs that describe the text; everything else is image data for `get_image_features`.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids", "position_ids"})


class _NoReuse(Exception):
    """The model's vision outputs cannot be shared between questions; fall back to the plain batched forward."""


def pad_to_square(image, background: Sequence[float]):
    """Pad a PIL image to a square, centred, filled with `background` (RGB in [0, 1], e.g. the CLIP mean).

    Matches the `expand2square` step of MA-AGIQA getFeature.py@11c0cda (colour = int(mean * 255)).
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), tuple(int(c * 255) for c in background))
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def local_revision(path: str | os.PathLike) -> str | None:
    """A cheap content id for a local model folder: config + size and head/tail bytes of each weight file."""
    root = Path(path)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(root.iterdir()):
        if f.name == "config.json":
            digest.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            digest.update(f"{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                digest.update(fh.read(1 << 20))
                if size > 1 << 20:
                    fh.seek(max(size - (1 << 20), 1 << 20))
                    digest.update(fh.read())
    return "local-" + digest.hexdigest()[:16]


class HFVLMEncoder(SemanticEncoder):
    """Mean-pooled hidden states of a transformers VLM answering fixed questions about an image.

    Args:
        model: an image-text-to-text model (e.g. `Qwen2VLForConditionalGeneration`); moved to `device` and cast
            to the resolved precision in place, set to eval, gradients off.
        processor: its processor, with a chat template (or pass `template`). Its tokenizer is switched to right
            padding (see the module docstring).
        name: the id recorded in caches (hub id or path).
        prompts: questions, output order; `{prompt}` is replaced by the image's generation prompt.
        layer: index into the model's `hidden_states` (`-1` = last layer after the final norm, as in the paper).
        pooling: `all` (every non-pad position), `image` (image placeholder positions) or `text` (question tokens).
        device / precision: see `agiqa.runtime`; "auto" = bf16/fp16 on GPU, fp32 on CPUs without fast bf16.
        revision: the weights' commit hash when known (recorded for stale-cache detection).
        template: optional plain template with `{question}` and `{image}` instead of the chat template, e.g. the
            paper's `"USER: {question}\\n{image} ASSISTANT:"`.
        image_first: with the chat template, put the image before the question (the usual VLM order).
        square_pad: pad images to squares with the processor's mean colour first (as the paper does for mPLUG-Owl2).
        reuse_vision: run the vision tower once per image when the model allows it.
        answers: an answer prefix per question (e.g. "The quality of the image is"): each question's vector then
            ends with the probabilities of the five level words (`agiqa.semantic.levels`), so `feature_dim` is the
            hidden size + 5.
    """

    def __init__(
        self,
        model,
        processor,
        name: str | None = None,
        prompts: Sequence[str] = PAPER_PROMPTS,
        layer: int = -1,
        pooling: str = "all",
        device: str | torch.device | None = None,
        precision: str = "auto",
        revision: str | None = None,
        template: str | None = None,
        image_first: bool = True,
        square_pad: bool = False,
        reuse_vision: bool = True,
        answers: Sequence[str] | None = None,
    ):
        if not prompts:
            raise SemanticEncoderError("at least one prompt is required")
        if answers is not None and len(answers) != len(prompts):
            raise SemanticEncoderError(f"got {len(prompts)} questions but {len(answers)} answer prefixes")
        self.prompts = tuple(prompts)
        self.answers = tuple(answers) if answers is not None else None
        self.layer = int(layer)
        self.pooling = check_pooling(pooling)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.template = template
        self.image_first = image_first
        self.square_pad = square_pad
        self.reuse_vision = reuse_vision
        self._reuse_state: bool | None = None  # None: untried, True: works, False: not supported by this model

        config = model.config
        self.name = name or getattr(config, "_name_or_path", "") or type(model).__name__
        self.revision = revision or getattr(config, "_commit_hash", None) or local_revision(self.name)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.hidden_dim = int(text_config.hidden_size)
        self.feature_dim = self.hidden_dim + (len(LEVEL_WORDS) if self.answers else 0)
        self.num_layers = int(getattr(text_config, "num_hidden_layers", 0)) or None
        if self.num_layers is not None and not -(self.num_layers + 1) <= self.layer <= self.num_layers:
            raise SemanticEncoderError(
                f"layer {self.layer} out of range: the model has {self.num_layers} layers (hidden_states indices "
                f"{-(self.num_layers + 1)}..{self.num_layers})"
            )

        if self.pooling == "image" and self.image_first and self.template is None and len(self.prompts) > 1:
            logger.warning("pooling 'image' with the image before the question: under causal attention the image "
                           "tokens cannot see the question, so every question gives the same vector "
                           "(use image_first=False to let them differ)")
        self.model = model.to(device=self.device, dtype=torch_dtype(self.precision)).eval().requires_grad_(False)
        inner = getattr(model, "model", None)
        # The base model (no LM head) returns hidden states without computing B*P*L*vocab logits.
        self.backbone = inner if isinstance(inner, torch.nn.Module) and hasattr(inner, "get_image_features") else model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "right"
        self.image_token_id = self._find_image_token_id()
        if self.template is None and not getattr(processor, "chat_template", None) and not getattr(
            self.tokenizer, "chat_template", None
        ):
            raise SemanticEncoderError(
                f"{self.name}: the processor has no chat template; "
                "pass template='USER: {question}\\n{image} ASSISTANT:' "
                "(or a template suited to the model)"
            )
        self.answer_lengths, self.level_ids = self._level_setup() if self.answers else ((), ())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        encoder_id: str,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        precision: str = "auto",
        **kwargs,
    ) -> HFVLMEncoder:
        """Load a hub id or local folder with `AutoProcessor` + `AutoModelForImageTextToText` (weights in the compute
        dtype, straight onto `device`)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        common = dict(revision=revision, trust_remote_code=trust_remote_code)
        try:
            processor = AutoProcessor.from_pretrained(encoder_id, **common)
            model = AutoModelForImageTextToText.from_pretrained(encoder_id, dtype=torch_dtype(prec), **common)
        except (OSError, ValueError) as err:
            raise SemanticEncoderError(
                f"cannot load {encoder_id!r} as an image-text-to-text model: {err}. Pass a hub id or a local folder "
                "saved with save_pretrained (model + processor); models with custom code need --trust-remote-code."
            ) from err
        kwargs.setdefault("name", encoder_id)
        return cls(model, processor, revision=revision or getattr(model.config, "_commit_hash", None),
                   device=dev, precision=prec, **kwargs)

    def _find_image_token_id(self) -> int | None:
        for obj, attr in ((self.processor, "image_token_id"), (self.model.config, "image_token_id"),
                          (self.model.config, "image_token_index")):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                return value
        token = getattr(self.processor, "image_token", None)
        if token is not None:
            tid = self.tokenizer.convert_tokens_to_ids(token)
            return tid if isinstance(tid, int) else None
        return None

    def _level_setup(self) -> tuple[tuple[int, ...], list[int]]:
        """Per question: tokens of its answer prefix; and the level words' token ids (single tokens or refused)."""
        texts = [self.render(question) for question in self.prompts]
        lengths = tuple(answer_token_count(self.tokenizer, text, answer) for text, answer in zip(texts, self.answers))
        ids = {tuple(level_token_ids(self.tokenizer, with_answer(text, answer)))
               for text, answer in zip(texts, self.answers)}
        if len(ids) != 1:
            raise SemanticEncoderError(f"the level words tokenise differently after the answer prefixes {self.answers}")
        return lengths, list(ids.pop())

    # ------------------------------------------------------------------ prompts
    def render(self, question: str) -> str:
        """The full text for one question, image placeholder included, generation prompt opened."""
        if self.template is not None:
            image_token = getattr(self.processor, "image_token", "<image>")
            return self.template.replace("{question}", question).replace("{image}", image_token)
        parts = [{"type": "image"}, {"type": "text", "text": question}]
        if not self.image_first:
            parts.reverse()
        messages = [{"role": "user", "content": parts}]
        templater = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "hf",
            "encoder": self.name,
            "revision": self.revision,
            "model_class": type(self.model).__name__,
            "prompts": list(self.prompts),
            "prompt_names": list(self.prompt_names),
            "layer": self.layer,
            "pooling": self.pooling,
            "dtype": self.precision,
            "template": self.render("{question}"),
            "square_pad": self.square_pad,
            "feature_dim": self.feature_dim,
            **({"answers": list(self.answers), "levels": list(LEVEL_WORDS)} if self.answers else {}),
        }

    # ------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def encode(self, images: list, generation_prompts: list[str] | None = None) -> torch.Tensor:
        """PIL RGB images -> float32 CPU features `(B, n_prompts, feature_dim)`; one forward for all B x P pairs.

        With `answers`, each vector is [pooled hidden state (hidden_dim), level probabilities (5)]."""
        if not images:
            return torch.empty(0, len(self.prompts), self.feature_dim)
        n, p = len(images), len(self.prompts)
        if generation_prompts is not None and len(generation_prompts) != n:
            raise SemanticEncoderError(f"got {n} images but {len(generation_prompts)} generation prompts")
        if self.square_pad:
            mean = getattr(getattr(self.processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
            images = [pad_to_square(im, mean) for im in images]
        # Image-major order: row i * P + j is image i, question j.
        questions = [fill_prompt(q, None if generation_prompts is None else generation_prompts[i])
                     for i in range(n) for q in self.prompts]
        texts = [self.render(q) for q in questions]
        if self.answers:
            texts = [with_answer(text, self.answers[i % p]) for i, text in enumerate(texts)]
        inputs = self.processor(text=texts, images=[im for im in images for _ in range(p)], padding=True,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        dtype = torch_dtype(self.precision)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}

        outputs = self._forward(inputs, n, p)
        mask = self._pooling_mask(inputs, texts, questions)
        if not self.answers:
            return masked_mean(self._select(outputs), mask).view(n, p, -1).cpu()
        lengths = inputs["attention_mask"].sum(dim=1)
        answer_start = lengths - torch.tensor(self.answer_lengths, device=lengths.device).repeat(n)
        mask = mask & (torch.arange(mask.shape[1], device=mask.device) < answer_start[:, None])
        features = masked_mean(self._select(outputs), mask)
        levels = self._level_probabilities(outputs, lengths - 1)
        return torch.cat([features, levels], dim=-1).view(n, p, -1).cpu()

    def _level_probabilities(self, outputs, last: torch.Tensor) -> torch.Tensor:
        """(rows, 5) level-word probabilities from the final hidden state of each row's last real token."""
        final = getattr(outputs, "last_hidden_state", None)
        if final is None:
            final = outputs.hidden_states[-1]
        rows = torch.arange(final.shape[0], device=final.device)
        logits = self.model.get_output_embeddings()(final[rows, last])
        return level_probabilities(logits[:, self.level_ids])

    def _forward(self, inputs: dict[str, torch.Tensor], n: int, p: int):
        if self.reuse_vision and p > 1 and self._reuse_state is not False:
            try:
                out = self._forward_reusing_vision(inputs, n, p)
                self._reuse_state = True
                return out
            except _NoReuse as why:
                logger.info("%s: vision outputs not shared between prompts (%s); one batched forward instead",
                            self.name, why)
                self._reuse_state = False
            except Exception as err:  # noqa: BLE001 - any model-specific failure: the plain path is always valid
                logger.warning("%s: sharing vision outputs failed (%s: %s); using the plain batched forward",
                               self.name, type(err).__name__, err)
                self._reuse_state = False
        return self.backbone(**inputs, **self._hidden_kwargs())

    def _hidden_kwargs(self) -> dict[str, Any]:
        # -1 is `last_hidden_state` (after the final norm) and needs no per-layer outputs; a backbone without one
        # (the whole model) returns its final hidden state in `hidden_states` only.
        needs_all = self.layer != -1 or (bool(self.answers) and self.backbone is self.model)
        return {"output_hidden_states": True} if needs_all else {}

    def _select(self, outputs) -> torch.Tensor:
        if self.layer == -1 and getattr(outputs, "last_hidden_state", None) is not None:
            return outputs.last_hidden_state
        hidden_states = getattr(outputs, "hidden_states", None)
        if hidden_states is None:
            raise SemanticEncoderError(f"{self.name}: the model returned no hidden states")
        return hidden_states[self.layer]

    def _forward_reusing_vision(self, inputs: dict[str, torch.Tensor], n: int, p: int):
        """Vision tower on the n distinct images, outputs repeated for the P questions, then the language model."""
        forward_params = inspect.signature(self.backbone.forward).parameters
        if "mm_encoder_outputs" not in forward_params:
            raise _NoReuse("model.forward has no mm_encoder_outputs")
        get_features = self.backbone.get_image_features
        feature_params = inspect.signature(get_features).parameters
        rows = n * p
        image_inputs = {k: v for k, v in inputs.items() if k not in _TEXT_KEYS}
        if "pixel_values" not in image_inputs:
            raise _NoReuse("no pixel_values")
        unique: dict[str, torch.Tensor] = {}
        for key, value in image_inputs.items():
            if value.shape[0] == rows:
                unique[key] = value[::p]
            elif key == "pixel_values" and "image_grid_thw" in image_inputs:
                # Qwen2-VL style: patches of all images concatenated, split by each image's grid size.
                sizes = image_inputs["image_grid_thw"].prod(-1).tolist()
                chunks = torch.split(value, sizes)
                if len(chunks) != rows:
                    raise _NoReuse("pixel_values do not split per image")
                unique[key] = torch.cat(chunks[::p])
            else:
                raise _NoReuse(f"cannot tell the per-image layout of {key} {tuple(value.shape)}")
        call = {k: v for k, v in unique.items() if k in feature_params}
        encoded = get_features(**call, return_dict=True)
        pooled = getattr(encoded, "pooler_output", None)
        if isinstance(pooled, (tuple, list)) and len(pooled) == n:
            encoded.pooler_output = tuple(x for x in pooled for _ in range(p))
        elif isinstance(pooled, torch.Tensor) and pooled.shape[0] == n:
            encoded.pooler_output = pooled.repeat_interleave(p, dim=0)
        else:
            raise _NoReuse("vision outputs are not one entry per image")
        text_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
        return self.backbone(**text_inputs, mm_encoder_outputs={"image": encoded}, **self._hidden_kwargs())

    # ------------------------------------------------------------------ pooling
    def _pooling_mask(self, inputs: dict[str, torch.Tensor], texts: list[str], questions: list[str]) -> torch.Tensor:
        attention = inputs["attention_mask"].bool()
        if self.pooling == "all":
            return attention
        input_ids = inputs["input_ids"]
        if self.pooling == "image":
            if self.image_token_id is None:
                raise SemanticEncoderError(f"{self.name}: no image token id known; use pooling 'all' or 'text'")
            return (input_ids == self.image_token_id) & attention
        mask = torch.zeros_like(attention)
        cache: dict[tuple[str, str], list[int]] = {}
        for row, (text, question) in enumerate(zip(texts, questions)):
            key = (text, question)
            if key not in cache:
                cache[key] = self._question_token_ids(text, question)
            span = _find_last(input_ids[row][attention[row]].tolist(), cache[key])
            if span is None:
                raise SemanticEncoderError(f"{self.name}: could not locate the question tokens for pooling 'text'")
            mask[row, span[0]:span[1]] = True
        return mask

    def _question_token_ids(self, text: str, question: str) -> list[int]:
        """Token ids covering the question as tokenised in context (tokens straddling its edges included)."""
        start = text.rfind(question)
        if start < 0:
            raise SemanticEncoderError(f"{self.name}: the template dropped the question text; cannot pool 'text'")
        end = start + len(question)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [tid for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > start and s < end]
        if not ids:
            raise SemanticEncoderError(f"{self.name}: the question maps to no token")
        return ids


def _find_last(sequence: list[int], pattern: list[int]) -> tuple[int, int] | None:
    m = len(pattern)
    for i in range(len(sequence) - m, -1, -1):
        if sequence[i:i + m] == pattern:
            return i, i + m
    return None


