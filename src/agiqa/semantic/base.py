"""Backend-independent pieces of the semantic-feature subsystem: the paper's prompts, pooling, the encoder interface.

MA-AGIQA (Wang et al., "Large Multi-modality Model Assisted AI-Generated Image Quality Assessment", ACM MM 2024,
https://github.com/wangpuyi/MA-AGIQA) feeds its regressor two "semantic experts": the last-layer hidden states of a
frozen mPLUG-Owl2 answering two fixed questions about the image, mean-pooled over all sequence positions.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Any

import torch

from agiqa.errors import AgiqaError

# Matches wangpuyi/MA-AGIQA getFeature.py@11c0cda: question_type 2 (-> `_semantic_content.pt`, expert q1) and
# question_type 1 (-> `_coherence.pt`, expert q2), verbatim.
PAPER_PROMPTS: tuple[str, ...] = (
    "Evaluate the input image to determine if its quality is compromised due to a lack of meaningful semantic content.",
    "Evaluate if the image quality is compromised due to violations of coherence.",
)
PAPER_PROMPT_NAMES: tuple[str, ...] = ("semantic_content", "coherence")

POOLINGS = ("all", "image", "text")
"""`all`: mean over every non-padding position (the paper); `image`: the image placeholder positions only;
`text`: the question tokens only (not the chat template around them)."""

PROMPT_PLACEHOLDER = "{prompt}"


class SemanticEncoderError(AgiqaError):
    """The encoder cannot be built or run as asked (unknown backend, missing package, bad option)."""


def prompt_needs_generation_prompt(prompts: Sequence[str]) -> bool:
    """True when any question contains the `{prompt}` placeholder (filled with each image's generation prompt)."""
    return any(PROMPT_PLACEHOLDER in p for p in prompts)


def fill_prompt(question: str, generation_prompt: str | None) -> str:
    """Replace `{prompt}` by the image's generation prompt; other braces are left alone (no `str.format`)."""
    if PROMPT_PLACEHOLDER not in question:
        return question
    if generation_prompt is None:
        raise SemanticEncoderError(
            f"the question {question!r} contains {PROMPT_PLACEHOLDER} but no generation prompt was given for the image "
            "(pass generation_prompts=..., or use a dataset with a `prompt` column)"
        )
    return question.replace(PROMPT_PLACEHOLDER, generation_prompt)


def prompt_names(prompts: Sequence[str]) -> tuple[str, ...]:
    """Stable short names: the paper's names for the paper's questions, else `p<i>_<slug>`."""
    names = []
    for i, p in enumerate(prompts):
        if p in PAPER_PROMPTS:
            names.append(PAPER_PROMPT_NAMES[PAPER_PROMPTS.index(p)])
        else:
            slug = re.sub(r"[^a-z0-9]+", "_", p.lower()).strip("_")[:24]
            names.append(f"p{i}_{slug}")
    return tuple(names)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (N, L, D) over positions where `mask` (N, L) is true, in float32 -> (N, D).

    Rows with an empty mask raise: a silent zero vector would poison training.
    """
    mask = mask.to(device=hidden.device, dtype=torch.float32)
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise SemanticEncoderError("pooling selected no token in at least one sequence "
                                   "(wrong --pooling for this model?)")
    summed = torch.einsum("nld,nl->nd", hidden.float(), mask)
    return summed / counts


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise SemanticEncoderError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


class SemanticEncoder(abc.ABC):
    """A frozen multimodal LLM turned into a fixed-size image descriptor, one vector per question.

    Attributes:
        name: encoder id (hub id or local path) as recorded in feature caches.
        feature_dim: D, the LLM hidden size.
        prompts: the questions, in output order (may contain `{prompt}`).
        layer: index into `hidden_states` (-1 = after the final norm, as in the paper).
        pooling: one of `POOLINGS`.
    """

    name: str
    feature_dim: int
    prompts: tuple[str, ...]
    layer: int
    pooling: str

    @abc.abstractmethod
    def encode(self, images: list, generation_prompts: list[str] | None = None) -> torch.Tensor:
        """Encode PIL RGB images -> float32 CPU tensor of shape `(B, n_prompts, feature_dim)`."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the features' values: id, revision, prompts, layer, pooling, dtype, template."""

    @property
    def prompt_names(self) -> tuple[str, ...]:
        return prompt_names(self.prompts)

    @property
    def needs_generation_prompt(self) -> bool:
        return prompt_needs_generation_prompt(self.prompts)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim}, "
                f"n_prompts={len(self.prompts)}, layer={self.layer}, pooling={self.pooling!r})")
