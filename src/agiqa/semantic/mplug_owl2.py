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

logger = logging.getLogger(__name__)

MPLUG_OWL2_ID = "MAGAer13/mplug-owl2-llama2-7b"
MPLUG_OWL2_TEMPLATE = "USER: {question}\n<|image|> ASSISTANT:"
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
    if "mplug-owl2" in lowered:
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
    tokens; "all" (default) is the paper's.
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
        self.feature_dim = int(self.model.config.hidden_size)

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
            "template": MPLUG_OWL2_TEMPLATE,
            "square_pad": True,
            "feature_dim": self.feature_dim,
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
                feats = self._encode_question(q, pixels[group])
                for i, f in zip(group, feats):
                    rows[i] = f
            per_prompt.append(torch.stack(rows))
        return torch.stack(per_prompt, dim=1).float().cpu()

    def _encode_question(self, question: str, pixels: torch.Tensor) -> torch.Tensor:
        text = MPLUG_OWL2_TEMPLATE.replace("{question}", question)
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
        return masked_mean(hidden, mask)
