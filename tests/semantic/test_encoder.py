"""HFVLMEncoder on tiny random-weight Qwen2-VL and LLaVA: the same code path a real checkpoint takes."""
from __future__ import annotations

import inspect

import pytest
import torch
import transformers

from agiqa.semantic import PAPER_PROMPT_NAMES, PAPER_PROMPTS, HFVLMEncoder, SemanticEncoderError, create_encoder
from conftest import make_images


def _encoder(pair, **kw):
    model, processor = pair
    kw.setdefault("precision", "fp32")
    return HFVLMEncoder(model, processor, name="tiny", device="cpu", **kw)


def test_paper_prompts_verbatim():
    assert PAPER_PROMPT_NAMES == ("semantic_content", "coherence")
    assert PAPER_PROMPTS[0] == ("Evaluate the input image to determine if its quality is compromised due to a lack of "
                                "meaningful semantic content.")
    assert PAPER_PROMPTS[1] == "Evaluate if the image quality is compromised due to violations of coherence."


@pytest.mark.parametrize("pooling", ["all", "image", "text"])
def test_shapes_and_finite(vlm_pair, pooling):
    enc = _encoder(vlm_pair, pooling=pooling)
    feats = enc.encode(make_images(3))
    assert feats.shape == (3, 2, enc.feature_dim) == (3, 2, 32)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert torch.isfinite(feats).all()
    if pooling == "image":
        # Causal attention: image tokens placed before the question cannot see it.
        torch.testing.assert_close(feats[:, 0], feats[:, 1])
        after = _encoder(vlm_pair, pooling=pooling, image_first=False).encode(make_images(3))
        assert not torch.allclose(after[:, 0], after[:, 1])
    else:
        assert not torch.allclose(feats[:, 0], feats[:, 1])  # different questions -> different features


def test_pooling_variants_differ_and_match_manual(vlm_pair):
    model, processor = vlm_pair
    images = make_images(1, seed=3)
    feats = {p: _encoder(vlm_pair, pooling=p).encode(images)[0, 0] for p in ("all", "image", "text")}
    assert not torch.allclose(feats["all"], feats["image"])
    assert not torch.allclose(feats["all"], feats["text"])
    assert not torch.allclose(feats["image"], feats["text"])

    # Manual: render the chat, run the plain model (one sequence, no padding), pool by hand.
    enc = _encoder(vlm_pair)
    text = enc.render(PAPER_PROMPTS[0])
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state[0]
    ids = inputs["input_ids"][0].tolist()
    torch.testing.assert_close(feats["all"], hidden.mean(0), rtol=1e-5, atol=1e-5)
    image_rows = [i for i, t in enumerate(ids) if t == enc.image_token_id]
    assert len(image_rows) >= 4
    torch.testing.assert_close(feats["image"], hidden[image_rows].mean(0), rtol=1e-5, atol=1e-5)
    q_ids = processor.tokenizer(PAPER_PROMPTS[0], add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(q_ids)] == q_ids)
    torch.testing.assert_close(feats["text"], hidden[start:start + len(q_ids)].mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["all", "image", "text"])
def test_batching_invariance(vlm_pair, pooling):
    """B images at once == one by one: right padding + attention mask keep pad tokens out of every feature."""
    enc = _encoder(vlm_pair, pooling=pooling)
    images = make_images(4, seed=5)
    batched = enc.encode(images)
    single = torch.cat([enc.encode([im]) for im in images])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_shared_vision_equals_plain_forward(vlm_pair):
    images = make_images(3, seed=7)
    shared = _encoder(vlm_pair)
    plain = _encoder(vlm_pair, reuse_vision=False)
    a, b = shared.encode(images), plain.encode(images)
    expected = _accepts_vision_outputs(vlm_pair[0])
    assert shared._reuse_state is expected, f"vision outputs shared: expected {expected} with this transformers"
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _accepts_vision_outputs(model) -> bool:
    """Whether this transformers version's model takes precomputed vision outputs (``mm_encoder_outputs``)."""
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters


def test_vision_tower_runs_once_per_image(qwen_pair):
    model, _ = qwen_pair
    if not _accepts_vision_outputs(model):
        pytest.skip(f"transformers {transformers.__version__}: "
                    f"{type(model).__name__}.forward has no mm_encoder_outputs")
    enc = _encoder(qwen_pair)
    seen = []
    hook = model.model.visual.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        enc.encode(make_images(2, seed=1))
    finally:
        hook.remove()
    assert len(seen) == 1
    patches_per_image = 16  # 56x56 -> 4x4 patches of 14 (temporal 2 folded)
    assert seen[0] <= 2 * patches_per_image * 2  # n images' patches, not n x P


def test_determinism(vlm_pair):
    enc = _encoder(vlm_pair)
    images = make_images(2, seed=9)
    torch.testing.assert_close(enc.encode(images), enc.encode(images), rtol=0, atol=0)


def test_layer_selection(vlm_pair):
    images = make_images(2)
    last = _encoder(vlm_pair, layer=-1).encode(images)
    explicit_last = _encoder(vlm_pair, layer=2).encode(images)
    first = _encoder(vlm_pair, layer=1).encode(images)
    torch.testing.assert_close(last, explicit_last)
    assert not torch.allclose(last, first)
    with pytest.raises(SemanticEncoderError, match="out of range"):
        _encoder(vlm_pair, layer=7)


def test_generation_prompt_placeholder(qwen_pair):
    prompts = PAPER_PROMPTS + ("Does the image match the prompt: {prompt}?",)
    enc = _encoder(qwen_pair, prompts=prompts, pooling="text")
    images = make_images(2)
    feats = enc.encode(images, ["a red car", "a cat"])
    assert feats.shape == (2, 3, 32)
    other = enc.encode(images, ["a cat", "a cat"])
    torch.testing.assert_close(feats[1], other[1])  # same image, same prompt
    assert not torch.allclose(feats[0, 2], other[0, 2])  # generation prompt changes the alignment feature
    torch.testing.assert_close(feats[0, :2], other[0, :2])  # ...and only that one
    with pytest.raises(SemanticEncoderError, match="generation prompt"):
        enc.encode(images)


def test_fingerprint_tracks_what_changes_features(qwen_pair):
    base = _encoder(qwen_pair).fingerprint()
    assert base["prompts"] == list(PAPER_PROMPTS) and base["layer"] == -1 and base["pooling"] == "all"
    assert base["dtype"] == "fp32" and "<|image_pad|>" in base["template"]
    assert _encoder(qwen_pair, prompts=("Other?",)).fingerprint()["prompts"] != base["prompts"]
    assert _encoder(qwen_pair, pooling="image").fingerprint()["pooling"] == "image"


def test_plain_template(llava_pair):
    enc = _encoder(llava_pair, template="USER: {question}\n{image} ASSISTANT:")
    assert enc.render("Q?") == "USER: Q?\n<image> ASSISTANT:"
    assert enc.encode(make_images(2)).shape == (2, 2, 32)


def test_bf16_runs(qwen_pair):
    from _tiny import tiny_qwen2_vl

    model, processor = tiny_qwen2_vl(seed=0)
    enc = HFVLMEncoder(model, processor, name="tiny", device="cpu", precision="bf16")
    ref = _encoder(qwen_pair).encode(make_images(2))
    feats = enc.encode(make_images(2))
    assert feats.dtype == torch.float32 and next(model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(feats, ref, rtol=0.1, atol=0.1)


def test_create_encoder_from_pair_and_local_folder(qwen_pair, tmp_path):
    from _tiny import tiny_qwen2_vl

    enc = create_encoder(qwen_pair, precision="fp32", device="cpu", name="pair")
    assert isinstance(enc, HFVLMEncoder) and enc.name == "pair"
    model, processor = tiny_qwen2_vl(seed=0)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    loaded = create_encoder(str(tmp_path / "m"), precision="fp32", device="cpu")
    assert loaded.fingerprint()["revision"].startswith("local-")
    torch.testing.assert_close(loaded.encode(make_images(2)), enc.encode(make_images(2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(SemanticEncoderError, match="cannot load"):
        create_encoder(str(tmp_path / "nothing-here"), device="cpu")
