"""Zero-shot quality (or prompt alignment) from any local VLM by the Q-Align level rule; no training, no weights.

The VLM runs in the semantic encoder (`agiqa.semantic.HFVLMEncoder` with `answers=`): one forward per batch gives,
for the model's question, the probabilities of the five level words (excellent .. bad) after the answer prefix.
This module only turns them into the score, their expectation over 5..1, so the zero-shot model scores, streams,
serves and is evaluated through the same paths as a trained MA-AGIQA fed semantic features (feature cache included).

    model = create_model("vlm_levels", encoder="Qwen/Qwen2-VL-2B-Instruct")         # or a local folder
    agiqa score --model vlm:/path/to/vlm IMAGES...       # quality;  vlm-alignment:<id> asks about the prompt
"""
from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from agiqa.errors import ConfigError
from agiqa.models._config import ModelConfig
from agiqa.models._pretrained import PretrainedCfg
from agiqa.models._registry import register_model
from agiqa.semantic.levels import LEVEL_COUNT, LEVEL_QUESTIONS, expected_level

SPEC_PREFIXES = {"vlm:": "quality", "vlm-alignment:": "alignment"}
"""Model strings that name a zero-shot VLM model: `vlm:<hub id, folder or preset>` asks about quality,
`vlm-alignment:<...>` about how well the image matches its prompt."""
PRESETS = {"q-align": {"encoder": "q-future/one-align"}}
"""Named VLMs: `vlm:q-align` = Q-Align's released OneAlign weights (an mPLUG-Owl2, run natively by
`agiqa.semantic.owl2`), asked with Q-Align's own prompt template."""


@dataclasses.dataclass
class VlmLevelsConfig(ModelConfig):
    """encoder: the VLM (hub id or local folder); question: a name in `agiqa.semantic.levels.LEVEL_QUESTIONS`
    (`quality`, `alignment`); template: a prompt template instead of the VLM's chat template (`{question}` and the
    image placeholder, see the encoder); trust_remote_code: allow the VLM's own code; backend: for mPLUG-Owl2 VLMs,
    "native" (ours) or "official" (the `mplug_owl2` package, with trust_remote_code)."""

    encoder: str = ""
    question: str = "quality"
    template: str | None = None
    trust_remote_code: bool = False
    backend: str = "native"
    # The semantic feature the score is read from (prompt 0 of the encoder), as MA-AGIQA names its experts' inputs.
    semantic_experts: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.question not in LEVEL_QUESTIONS:
            raise ValueError(f"unknown level question {self.question!r}; known: {', '.join(LEVEL_QUESTIONS)}")


class VlmLevels(nn.Module):
    """Score = expected level (1 bad .. 5 excellent) of the VLM's answer to the config's question."""

    input_names = ("semantic",)

    def __init__(self, config: VlmLevelsConfig):
        super().__init__()
        self.config = config

    @property
    def question(self) -> tuple[str, str]:
        """(question, answer prefix) the encoder asks."""
        return LEVEL_QUESTIONS[self.config.question]

    def encoder_options(self) -> dict:
        """Keyword arguments of `agiqa.semantic.create_encoder` that make this model's features."""
        question, answer = self.question
        options = {"prompts": (question,), "answers": (answer,), "trust_remote_code": self.config.trust_remote_code}
        if self.config.backend != "native":
            options["backend"] = self.config.backend
        return {**options, "template": self.config.template} if self.config.template else options

    def build_encoder(self, device: str | torch.device | None = None, precision: str = "auto"):
        """The VLM as a level-answering semantic encoder (loads the VLM)."""
        from agiqa.semantic import create_encoder

        if not self.config.encoder:
            raise ValueError("vlm_levels needs encoder=<VLM hub id or local folder>")
        return create_encoder(self.config.encoder, device=device, precision=precision, **self.encoder_options())

    def forward(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, P, D + 5) encoder features, level probabilities last -> (B,) expected level (in float32)."""
        if semantic is None or semantic.dim() != 3 or semantic.shape[-1] <= LEVEL_COUNT:
            shape = None if semantic is None else tuple(semantic.shape)
            raise ValueError(f"vlm_levels needs level features (B, P, D + {LEVEL_COUNT}) from an encoder with "
                             f"answers=..., got {shape}")
        return expected_level(semantic[:, self.config.semantic_experts[0], -LEVEL_COUNT:])


def is_vlm_spec(model: object) -> bool:
    """True for model strings `vlm:<id>` / `vlm-alignment:<id>` (see `SPEC_PREFIXES`)."""
    return isinstance(model, str) and any(model.startswith(prefix) for prefix in SPEC_PREFIXES)


def model_from_spec(spec: str, trust_remote_code: bool = False) -> VlmLevels:
    """`vlm:<hub id or folder>` -> the zero-shot quality model; `vlm-alignment:<...>` -> the alignment one; a name in
    `PRESETS` (that is not a local folder) stands for its VLM and template."""
    prefix = next(prefix for prefix in SPEC_PREFIXES if spec.startswith(prefix))
    encoder = spec[len(prefix):]
    if not encoder:
        raise ConfigError(f"{spec!r}: name the VLM after {prefix!r} (a hub id, a local folder or one of "
                          f"{', '.join(PRESETS)})")
    preset = PRESETS.get(encoder) if not os.path.isdir(encoder) else None
    return vlm_levels(**(preset or {"encoder": encoder}), question=SPEC_PREFIXES[prefix],
                      trust_remote_code=trust_remote_code)


default_cfgs = {
    "vlm_levels.zero_shot": PretrainedCfg(
        tag="zero_shot", score_range=(1.0, 5.0), lower_better=False, paper_ids=("arXiv:2312.17090",),
        origin_url="https://github.com/Q-Future/Q-Align",
        notes="No weights of its own: the expected level (1 bad .. 5 excellent) of a VLM's answer (Q-Align rule).",
    ),
}


@register_model
def vlm_levels(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> VlmLevels:
    """Zero-shot level score of a VLM (`encoder=`, `question=quality|alignment`); there are no weights to load."""
    if pretrained:
        raise ValueError("vlm_levels has no weights of its own; the VLM is encoder=<hub id or folder>")
    model = VlmLevels(VlmLevelsConfig.from_dict(kwargs))
    model.pretrained_cfg = pretrained_cfg or default_cfgs["vlm_levels.zero_shot"]
    return model
