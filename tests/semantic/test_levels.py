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


# --- Mutation-testing additions (docs/mutation.md): the level rule's helpers on a word-level tokenizer written here,
# against token ids, messages and expectations worked out by hand.

from agiqa.semantic.levels import (  # noqa: E402
    answer_token_count,
    level_probabilities,
    level_token_ids,
    with_answer,
)

QUESTION = "How would you rate the quality of this image?"
CONTEXT = with_answer(QUESTION, "The quality of the image is")


class WordTokenizer:
    """Splits on spaces; ids are vocabulary positions, unknown words [UNK] (id 1); `pieces` splits a word into
    sub-words; `merges` joins two neighbouring words into one token; special tokens add [BOS] ... [EOS] (ids 2, 3)
    like BERT or T5 tokenizers do."""

    def __init__(self, words, pieces=None, merges=()):
        self.vocab = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + list(words)
        self.pieces = pieces or {}
        self.merges = set(merges)

    def __call__(self, text, add_special_tokens=True):
        tokens: list[str] = []
        for word in text.split(" "):
            if tokens and (tokens[-1], word) in self.merges:
                tokens[-1] = f"{tokens[-1]} {word}"
            else:
                tokens.append(word)
        tokens = [piece for token in tokens for piece in self.pieces.get(token, [token])]
        ids = [self.vocab.index(t) if t in self.vocab else 1 for t in tokens]
        return {"input_ids": [2] + ids + [3] if add_special_tokens else ids}

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]


CONTEXT_WORDS = CONTEXT.split(" ")
ALL_WORDS = CONTEXT_WORDS + ["excellent", "good", "fair", "poor", "bad", "excel", "##lent", "is good"]


def test_level_token_ids_are_the_next_token_after_the_context():
    tokenizer = WordTokenizer(ALL_WORDS)
    first = 4 + len(CONTEXT_WORDS)  # after the 4 special tokens and the context's words
    assert level_token_ids(tokenizer, CONTEXT) == [first, first + 1, first + 2, first + 3, first + 4]
    assert answer_token_count(tokenizer, QUESTION, "The quality of the image is") == 6


def test_split_and_merged_level_words_are_refused_by_name():
    tokenizer = WordTokenizer(ALL_WORDS, pieces={"excellent": ["excel", "##lent"]}, merges={("is", "good")})
    with pytest.raises(SemanticEncoderError) as err:
        level_token_ids(tokenizer, CONTEXT)
    context_tokens = CONTEXT_WORDS[:-1] + ["is good"]  # the merge changes the context's last token: all are listed
    assert str(err.value) == (
        "level scores read one next-token logit per level word, but this tokenizer splits "
        f"'excellent' -> ['excel', '##lent']; 'good' -> {context_tokens} "
        "(use a VLM whose tokenizer has each of excellent, good, fair, poor, bad as one token)")


def test_level_words_sharing_a_token_are_refused():
    tokenizer = WordTokenizer(CONTEXT_WORDS + ["excellent", "good", "bad"])  # fair and poor are both [UNK] (id 1)
    first = 4 + len(CONTEXT_WORDS)
    with pytest.raises(SemanticEncoderError) as err:
        level_token_ids(tokenizer, CONTEXT)
    assert str(err.value) == (f"level words share token ids [{first}, {first + 1}, 1, 1, {first + 2}]: the tokenizer "
                              "cannot tell them apart")


def test_an_answer_prefix_merging_into_the_question_is_refused():
    tokenizer = WordTokenizer(ALL_WORDS + ["image? The"], merges={("image?", "The")})
    with pytest.raises(SemanticEncoderError) as err:
        answer_token_count(tokenizer, QUESTION, "The quality of the image is")
    assert str(err.value) == ("the tokenizer merges the answer prefix 'The quality of the image is' into the "
                              "question's last tokens; end the template or question with whitespace or punctuation")


def test_level_probabilities_and_expected_level_by_hand():
    logits = torch.log(torch.tensor([[[1.0, 2.0, 3.0, 4.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
                                     [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 0.0]]]))  # (2, 2, 5)
    probabilities = level_probabilities(logits.to(torch.bfloat16))
    assert probabilities.dtype == torch.float32 and probabilities.shape == (2, 2, 5)
    expected = torch.tensor([[[1, 2, 3, 4, 1], [1, 1, 1, 1, 1]], [[1, 0, 0, 0, 0], [0, 1, 0, 1, 0]]]) / torch.tensor(
        [[[11.0], [5.0]], [[1.0], [2.0]]])
    torch.testing.assert_close(probabilities, expected, atol=1e-2, rtol=0)  # bf16 logits
    # 5, 4, 3, 2, 1 weighted: (5 + 8 + 9 + 8 + 1) / 11, 3, 5, (4 + 2) / 2
    levels = expected_level(expected)
    torch.testing.assert_close(levels, torch.tensor([[31 / 11, 3.0], [5.0, 3.0]]))
    assert expected_level(torch.empty(3, 5, device="meta")).shape == (3,)  # the level values follow the device
