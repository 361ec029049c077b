"""mPLUG-Owl2 (`MAGAer13/mplug-owl2-llama2-7b`) features exactly as MA-AGIQA's official getFeature.py computes them.

Matches wangpuyi/MA-AGIQA getFeature.py@11c0cda: prompt `"USER: <question>\\n<|image|> ASSISTANT:"` (no system
prompt), `<|image|>` spliced in as IMAGE_TOKEN_INDEX by `tokenizer_image_token` and expanded by the model to its
visual tokens, images padded to square with the CLIP mean colour then the model's CLIP processor (448 px), fp16,
`hidden_states[-1]` mean-pooled over all positions. As in the official script, each question is one forward over
the image batch (every sequence has the same length, so there is no padding to mask).

mPLUG-Owl2 is not a transformers architecture: it needs the `mplug_owl2` package from the official repository,
which pins an old transformers (4.31); install it in its own environment, extract there, and use the resulting
cache (a directory) anywhere.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
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
from agiqa.semantic.hf import pad_to_square
from agiqa.semantic.levels import LEVEL_WORDS, answer_token_count, level_probabilities, level_token_ids, with_answer

logger = logging.getLogger(__name__)

MPLUG_OWL2_ID = "MAGAer13/mplug-owl2-llama2-7b"
MPLUG_OWL2_TEMPLATE = "USER: {question}\n<|image|> ASSISTANT:"
Q_ALIGN_TEMPLATE = "USER: {question}\n<|image|>\nASSISTANT:"  # q_align/evaluate/scorer.py (Q-Future/Q-Align)
# Q-Align's released weights: mPLUG-Owl2 models (the `mplug_owl2` package registers their class for AutoModel).
Q_ALIGN_IDS = frozenset({"q-future/one-align", "q-future/q-align-koniq-spaq-v0", "q-future/q-align-aesthetic",
                         "q-future/q-align-image"})
INSTALL_HINT = (
    "mPLUG-Owl2 needs the official `mplug_owl2` package (it is not part of transformers). Install it, ideally in a "
    "separate environment because it pins transformers==4.31:\n"
    '    pip install "git+https://github.com/X-PLUG/mPLUG-Owl.git#subdirectory=mPLUG-Owl2"\n'
    "then run `agiqa features extract --encoder MAGAer13/mplug-owl2-llama2-7b --trust-remote-code ...` there. "
    "Alternatively import the official per-image .pt files with `agiqa features import-official`, or use a "
    "transformers VLM (e.g. --encoder Qwen/Qwen2-VL-7B-Instruct)."
)


def is_mplug_owl2(encoder_id: str) -> bool:
    """Hub ids / paths of mPLUG-Owl2 checkpoints (also folders whose config says model_type mplug_owl2)."""
    import json
    import os

    lowered = str(encoder_id).lower().replace("_", "-")
    if "mplug-owl2" in lowered or lowered in Q_ALIGN_IDS:
        return True
    config = os.path.join(str(encoder_id), "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as fh:
                return json.load(fh).get("model_type") == "mplug_owl2"
        except (OSError, ValueError):
            return False
    return False


def _import_mplug_owl2():
    try:
        from mplug_owl2.constants import IMAGE_TOKEN_INDEX
        from mplug_owl2.mm_utils import get_model_name_from_path, tokenizer_image_token
        from mplug_owl2.model.builder import load_pretrained_model
    except ImportError as err:
        raise SemanticEncoderError(f"{INSTALL_HINT}\n(import failed: {err})") from err
    return IMAGE_TOKEN_INDEX, get_model_name_from_path, tokenizer_image_token, load_pretrained_model


class MplugOwl2Encoder(SemanticEncoder):
    """The paper's semantic experts from mPLUG-Owl2 (official `mplug_owl2` package; `trust_remote_code=True` required).

    Output `(B, n_prompts, 4096)` float32. `pooling` "image" averages the visual-token span, "text" the question
    tokens; "all" (default) is the paper's. `template` holds `{question}` and the `<|image|>` placeholder (default:
    Q-Align's `Q_ALIGN_TEMPLATE` for Q-Align's checkpoints, else MA-AGIQA's). With `answers` (one answer prefix per
    question) each vector ends with the level-word probabilities read from the same forward
    (`agiqa.semantic.levels`), as for `HFVLMEncoder`.
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
        _loaded: tuple | None = None,
    ):
        if not trust_remote_code:
            raise SemanticEncoderError(
                f"{encoder_id} runs code from the mplug_owl2 package, not transformers; pass --trust-remote-code "
                "(trust_remote_code=True) to allow it.\n" + INSTALL_HINT
            )
        image_token_index, get_name, self._tokenize, load = _import_mplug_owl2()
        self.image_token_index = image_token_index
        self.name = encoder_id
        self.revision = revision
        self.prompts = tuple(prompts)
        if answers is not None and len(answers) != len(self.prompts):
            raise SemanticEncoderError(f"got {len(self.prompts)} questions but {len(answers)} answer prefixes")
        self.answers = tuple(answers) if answers is not None else None
        self.template = template or (Q_ALIGN_TEMPLATE if str(encoder_id).lower() in Q_ALIGN_IDS
                                     else MPLUG_OWL2_TEMPLATE)
        self.layer = int(layer)
        self.pooling = check_pooling(pooling)
        self.device = resolve_device(device)
        # The official features are fp16; fp32 on CPU (fp16 matmuls are not supported well there).
        self.precision = ("fp16" if self.device.type == "cuda" else "fp32") if precision == "auto" else \
            resolve_precision(precision, self.device)
        if _loaded is None:
            _loaded = load(encoder_id, None, get_name(encoder_id), False, False, device=str(self.device))
        self.tokenizer, model, self.image_processor, _ = _loaded
        self.model = model.to(self.device, torch_dtype(self.precision)).eval().requires_grad_(False)
        self.hidden_dim = int(self.model.config.hidden_size)
        self.feature_dim = self.hidden_dim + (len(LEVEL_WORDS) if self.answers else 0)
        if self.answers:
            texts = [self.template.replace("{question}", question) for question in self.prompts]
            self.answer_lengths = [answer_token_count(self.tokenizer, text, answer)
                                   for text, answer in zip(texts, self.answers)]
            self.level_ids = level_token_ids(self.tokenizer, with_answer(texts[0], self.answers[0]))

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
            "square_pad": True,
            "feature_dim": self.feature_dim,
            **({"answers": list(self.answers), "levels": list(LEVEL_WORDS)} if self.answers else {}),
        }

    @torch.inference_mode()
    def encode(self, images: list, generation_prompts: list[str] | None = None) -> torch.Tensor:
        if not images:
            return torch.empty(0, len(self.prompts), self.feature_dim)
        mean = self.image_processor.image_mean
        pixels = torch.cat([
            self.image_processor.preprocess(pad_to_square(im, mean), return_tensors="pt")["pixel_values"]
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
        text = self.template.replace("{question}", question)
        if self.answers:
            text = with_answer(text, self.answers[index])
        ids = self._tokenize(text, self.tokenizer, self.image_token_index, return_tensors="pt").to(self.device)
        out = self.model(ids.unsqueeze(0).repeat(pixels.shape[0], 1), images=pixels, output_hidden_states=True)
        hidden = out["hidden_states"][self.layer]
        n, length = hidden.shape[:2]
        mask = torch.ones(n, length, dtype=torch.bool, device=hidden.device)
        if self.pooling != "all":
            # The single image placeholder at `pos` became `length - (len(ids) - 1)` visual tokens.
            pos = int((ids == self.image_token_index).nonzero()[0, 0])
            n_visual = length - (ids.numel() - 1)
            mask.zero_()
            if self.pooling == "image":
                mask[:, pos:pos + n_visual] = True
            else:
                prefix = len(self._tokenize("USER:", self.tokenizer, self.image_token_index))
                mask[:, prefix:pos] = True  # "<question>\n" between "USER:" and the image
        if not self.answers:
            return masked_mean(hidden, mask)
        mask[:, length - self.answer_lengths[index]:] = False  # the answer prefix is not part of the features
        levels = level_probabilities(out["logits"][:, -1, self.level_ids])
        return torch.cat([masked_mean(hidden, mask), levels], dim=-1)
