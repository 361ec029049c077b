"""Zero-shot level scores from any VLM: the Q-Align inference rule.

Q-Align (Wu et al., ICML 2024, https://github.com/Q-Future/Q-Align) asks a VLM "How would you rate the quality of
this image?", opens the answer with "The quality of the image is" and reads the next-token logits of the five level
words. A softmax over those five logits gives a distribution over the levels, and its expectation over the level
values 5..1 is the score (Q-Align weights them 1, 0.75, 0.5, 0.25, 0: the same score on a 0..1 scale).

Every level word must be ONE token of the VLM's tokenizer where the answer continues (after the answer prefix and a
space); a tokenizer that splits one is refused by name rather than scored on a token fragment.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from agiqa.semantic.base import SemanticEncoderError

LEVEL_WORDS: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
LEVEL_VALUES: tuple[float, ...] = (5.0, 4.0, 3.0, 2.0, 1.0)
LEVEL_COUNT = len(LEVEL_WORDS)

QUALITY_QUESTION = "How would you rate the quality of this image?"
QUALITY_ANSWER = "The quality of the image is"
ALIGNMENT_QUESTION = 'How well does this image match the description "{prompt}"?'
ALIGNMENT_ANSWER = "The match between the image and the description is"
LEVEL_QUESTIONS: dict[str, tuple[str, str]] = {
    "quality": (QUALITY_QUESTION, QUALITY_ANSWER),
    "alignment": (ALIGNMENT_QUESTION, ALIGNMENT_ANSWER),
}
"""The questions a zero-shot level model can ask, by name: (question, answer prefix). `{prompt}` is the image's
generation prompt."""


def with_answer(text: str, answer: str) -> str:
    """The rendered question with the answer opened: a space between them unless the text ends in whitespace."""
    return text + answer if not text or text[-1].isspace() else f"{text} {answer}"


def answer_token_count(tokenizer, text: str, answer: str) -> int:
    """Tokens the answer prefix adds after `text`; refused when the tokenizer merges across the boundary (the
    features of the question's own tokens would then change)."""
    base = _ids(tokenizer, text)
    full = _ids(tokenizer, with_answer(text, answer))
    if full[:len(base)] != base:
        raise SemanticEncoderError(f"the tokenizer merges the answer prefix {answer!r} into the question's last "
                                   "tokens; end the template or question with whitespace or punctuation")
    return len(full) - len(base)


def level_token_ids(tokenizer, context: str, words: Sequence[str] = LEVEL_WORDS) -> list[int]:
    """Token id of each level word as the next token after `context` (a space between them).

    Raises `SemanticEncoderError` naming every word the tokenizer splits into several tokens.
    """
    base = _ids(tokenizer, context)
    ids, split = [], []
    for word in words:
        full = _ids(tokenizer, f"{context} {word}")
        extra = full[len(base):] if full[:len(base)] == base else None
        if extra is None or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(extra if extra is not None else full)
            split.append(f"{word!r} -> {pieces}")
        else:
            ids.append(extra[0])
    if split:
        raise SemanticEncoderError(
            "level scores read one next-token logit per level word, but this tokenizer splits "
            + "; ".join(split) + " (use a VLM whose tokenizer has each of " + ", ".join(words) + " as one token)")
    if len(set(ids)) != len(ids):
        raise SemanticEncoderError(f"level words share token ids {ids}: the tokenizer cannot tell them apart")
    return ids


def level_probabilities(level_logits: torch.Tensor) -> torch.Tensor:
    """(..., 5) next-token logits of the level words -> (..., 5) probabilities (softmax over those five only)."""
    return torch.softmax(level_logits.float(), dim=-1)


def expected_level(probabilities: torch.Tensor) -> torch.Tensor:
    """(..., 5) level probabilities -> (...) expected level on the 1 (bad) .. 5 (excellent) scale, in float32 (also
    under autocast)."""
    values = torch.tensor(LEVEL_VALUES, device=probabilities.device)
    return (probabilities.float() * values).sum(dim=-1)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
