"""Zero-shot level scores (the Q-Align rule) on tiny VLMs built here: checked against a hand computation."""
from __future__ import annotations

import pytest
import torch

from _tiny import hand_levels, tiny_llava, tiny_qwen2_vl
from conftest import make_images

from agiqa.semantic import HFVLMEncoder, SemanticEncoderError
from agiqa.semantic.levels import LEVEL_QUESTIONS, LEVEL_WORDS, expected_level

QUESTIONS = [LEVEL_QUESTIONS["quality"][0], LEVEL_QUESTIONS["alignment"][0]]
ANSWERS = [LEVEL_QUESTIONS["quality"][1], LEVEL_QUESTIONS["alignment"][1]]
PROMPTS = ["a red car on a street", "a painting of mountains", "a cat"]


@pytest.fixture(params=["llava", "qwen2_vl"], scope="module")
def level_pair(request):
    return {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl}[request.param](seed=3, level_words=True)


def level_encoder(pair, **kwargs):
    model, processor = pair
    return HFVLMEncoder(model, processor, name="tiny", prompts=QUESTIONS, answers=ANSWERS, precision="fp32",
                        device="cpu", **kwargs)


def test_level_scores_equal_a_hand_computation(level_pair):
    encoder = level_encoder(level_pair)
    images = make_images(3, seed=4)
    features = encoder.encode(images, PROMPTS)
    assert features.shape == (3, 2, encoder.hidden_dim + 5) and encoder.feature_dim == encoder.hidden_dim + 5
    for i, image in enumerate(images):
        for j, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS)):
            probabilities, expectation = hand_levels(level_pair, image, question.replace("{prompt}", PROMPTS[i]),
                                                     answer)
            torch.testing.assert_close(features[i, j, -5:], probabilities, atol=2e-5, rtol=1e-4)
            assert expected_level(features[i, j, -5:]).item() == pytest.approx(expectation, abs=1e-4)


def test_level_answers_leave_the_features_unchanged(level_pair):
    """Causal attention: the appended answer tokens cannot change the question's hidden states, and the pooling
    leaves them out, so the hidden part equals the features of the same questions without answers."""
    model, processor = level_pair
    plain = HFVLMEncoder(model, processor, prompts=QUESTIONS, precision="fp32", device="cpu")
    images = make_images(4, seed=5)
    prompts = PROMPTS + ["a dog"]
    with_levels = level_encoder(level_pair).encode(images, prompts)
    torch.testing.assert_close(with_levels[..., :-5], plain.encode(images, prompts), atol=1e-5, rtol=1e-4)


def test_level_scores_do_not_depend_on_the_batch(level_pair):
    encoder = level_encoder(level_pair)
    images = make_images(4, seed=6)
    prompts = ["a cat", "a red car on a street in the rain at night", "mountains", "a"]
    together = encoder.encode(images, prompts)
    alone = torch.cat([encoder.encode([image], [prompt]) for image, prompt in zip(images, prompts)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_a_tokenizer_that_splits_a_level_word_is_refused_by_name():
    model, processor = tiny_llava(seed=0)  # its tokenizer never saw the level words
    with pytest.raises(SemanticEncoderError, match=r"splits 'excellent' -> \[.*'good' -> .*one token"):
        HFVLMEncoder(model, processor, prompts=QUESTIONS[:1], answers=ANSWERS[:1], device="cpu")


def test_answers_must_pair_with_questions(level_pair):
    model, processor = level_pair
    with pytest.raises(SemanticEncoderError, match="2 questions but 1 answer"):
        HFVLMEncoder(model, processor, prompts=QUESTIONS, answers=ANSWERS[:1], device="cpu")


def test_fingerprint_records_the_answers(level_pair):
    fingerprint = level_encoder(level_pair).fingerprint()
    assert fingerprint["answers"] == ANSWERS and fingerprint["levels"] == list(LEVEL_WORDS)
    model, processor = level_pair
    assert "answers" not in HFVLMEncoder(model, processor, prompts=QUESTIONS, device="cpu").fingerprint()
