"""Import of official MA-AGIQA `.pt` files; the optional official mPLUG-Owl2 backend: clear errors, and its contract
with a stand-in package.

The `mplug_owl2` package (pinned to transformers 4.31) cannot be installed beside agiqa; the stand-in package below
checks what our code sends it (prompt text, square padding, dtype, pooling over all positions). The native backend,
the default, is tested against the released code's numbers in test_mplug_owl2_native.py.
"""
from __future__ import annotations

import os
import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from agiqa.semantic import (
    OFFICIAL_ENCODER,
    PAPER_PROMPTS,
    FeatureCache,
    MplugOwl2Encoder,
    SemanticEncoderError,
    create_encoder,
    import_official_features,
    is_mplug_owl2,
    load_features,
)


def _write_official(feature_dir, image_files, dim=4096, seed=0):
    gen = torch.Generator().manual_seed(seed)
    expected = []
    for path in image_files:
        stem = os.path.splitext(os.path.basename(path))[0]
        pair = []
        for suffix in ("semantic_content", "coherence"):
            t = torch.randn(1, dim, generator=gen).half()
            torch.save(t, os.path.join(feature_dir, f"{stem}_{suffix}.pt"))
            pair.append(t[0].float())
        expected.append(torch.stack(pair))
    return torch.stack(expected)


def test_import_official(image_files, tmp_path):
    feature_dir = tmp_path / "official"
    feature_dir.mkdir()
    expected = _write_official(feature_dir, image_files[:5])
    names = [os.path.basename(p) for p in image_files]
    root = os.path.dirname(image_files[0])
    report = import_official_features(feature_dir, names, tmp_path / "cache", root)
    assert report.done == 5 and report.n_failed == 2  # two images have no .pt files
    assert all("official feature file missing" in reason for _, reason in report.failed)
    feats = load_features(tmp_path / "cache", image_files[:5])
    assert feats.shape == (5, 2, 4096) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)  # fp16 stored losslessly; order semantic_content, coherence
    fp = FeatureCache(tmp_path / "cache").fingerprint
    assert fp["encoder"] == OFFICIAL_ENCODER == "MAGAer13/mplug-owl2-llama2-7b (official files)"
    assert fp["prompts"] == list(PAPER_PROMPTS) and fp["pooling"] == "all" and fp["dtype"] == "fp16"
    # Re-import is a no-op.
    assert import_official_features(feature_dir, names[:5], tmp_path / "cache", root).skipped == 5


def test_import_official_rejects_bad_file(image_files, tmp_path):
    feature_dir = tmp_path / "official"
    feature_dir.mkdir()
    _write_official(feature_dir, image_files[:1])
    stem = os.path.splitext(os.path.basename(image_files[0]))[0]
    torch.save({"not": "a tensor"}, feature_dir / f"{stem}_coherence.pt")
    report = import_official_features(feature_dir, [os.path.basename(image_files[0])], tmp_path / "c",
                                      os.path.dirname(image_files[0]))
    assert report.done == 0 and "bad official feature file" in report.failed[0][1]


def test_mplug_ids_are_routed():
    assert is_mplug_owl2("MAGAer13/mplug-owl2-llama2-7b") and is_mplug_owl2("/models/mplug_owl2_7b")
    assert not is_mplug_owl2("Qwen/Qwen2-VL-2B-Instruct")


def test_official_backend_requires_trust_remote_code():
    with pytest.raises(SemanticEncoderError, match="--trust-remote-code"):
        create_encoder("MAGAer13/mplug-owl2-llama2-7b", device="cpu", backend="official")


@pytest.mark.skipif("mplug_owl2" in sys.modules or __import__("importlib").util.find_spec("mplug_owl2") is not None,
                    reason="mplug_owl2 is installed")
def test_official_backend_missing_package_message():
    with pytest.raises(SemanticEncoderError) as err:
        create_encoder("MAGAer13/mplug-owl2-llama2-7b", trust_remote_code=True, device="cpu", backend="official")
    message = str(err.value)
    assert "pip install" in message and "mPLUG-Owl2" in message and "native backend" in message


# --------------------------------------------------------------------------- stand-in mplug_owl2 package
IMAGE_TOKEN_INDEX = -200
N_VISUAL = 3


class _FakeTokenizer:
    bos_token_id = 1

    def __call__(self, text):
        return types.SimpleNamespace(input_ids=[1] + [2 + (ord(c) % 50) for c in text])


def _fake_tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    _fake_tokenizer_image_token.prompts.append(prompt)
    chunks = [tokenizer(c).input_ids for c in prompt.split("<|image|>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [image_token_index] + chunk[1:]
    return torch.tensor(ids) if return_tensors == "pt" else ids


class _FakeImageProcessor:
    image_mean = [0.48145466, 0.4578275, 0.40821073]

    def preprocess(self, image, return_tensors="pt"):
        _FakeImageProcessor.sizes.append(image.size)
        arr = torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)[None] / 255
        return {"pixel_values": arr}


class _FakeOwl(torch.nn.Module):
    """Expands the image placeholder to N_VISUAL tokens; hidden state = embedding + mean pixel."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=8)
        self.embed = torch.nn.Embedding(64, 8)
        self.visual = torch.nn.Linear(48, 8 * N_VISUAL)

    def forward(self, input_ids, images=None, output_hidden_states=False):
        assert output_hidden_states and images.dtype == self.embed.weight.dtype
        rows = []
        for ids, img in zip(input_ids, images):
            pos = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
            visual = self.visual(img.reshape(-1)).reshape(N_VISUAL, 8)
            rows.append(torch.cat([self.embed(ids[:pos]), visual, self.embed(ids[pos + 1:])]))
        hidden = torch.stack(rows)
        return {"hidden_states": (hidden * 0.5, hidden)}


def _install_fake_package(monkeypatch, loaded) -> None:
    """A stand-in `mplug_owl2` package whose loader returns `loaded` (tokenizer, model, image processor, context)."""
    pkg = types.ModuleType("mplug_owl2")
    constants = types.ModuleType("mplug_owl2.constants")
    constants.IMAGE_TOKEN_INDEX = IMAGE_TOKEN_INDEX
    mm_utils = types.ModuleType("mplug_owl2.mm_utils")
    mm_utils.tokenizer_image_token = _fake_tokenizer_image_token
    mm_utils.get_model_name_from_path = lambda p: p.strip("/").split("/")[-1]
    builder = types.ModuleType("mplug_owl2.model.builder")
    builder.load_pretrained_model = lambda *a, **k: loaded
    model_pkg = types.ModuleType("mplug_owl2.model")
    for name, mod in {"mplug_owl2": pkg, "mplug_owl2.constants": constants, "mplug_owl2.mm_utils": mm_utils,
                      "mplug_owl2.model": model_pkg, "mplug_owl2.model.builder": builder}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    _fake_tokenizer_image_token.prompts = []
    _FakeImageProcessor.sizes = []


@pytest.fixture
def fake_mplug_owl2(monkeypatch):
    torch.manual_seed(0)
    loaded = (_FakeTokenizer(), _FakeOwl(), _FakeImageProcessor(), 2048)
    _install_fake_package(monkeypatch, loaded)
    return loaded


def test_mplug_contract_with_stand_in(fake_mplug_owl2):
    enc = create_encoder("MAGAer13/mplug-owl2-llama2-7b", trust_remote_code=True, device="cpu", precision="fp32",
                         backend="official")
    assert isinstance(enc, MplugOwl2Encoder) and enc.feature_dim == 8
    images = [Image.new("RGB", (40, 20), (200, 10, 10)), Image.new("RGB", (16, 16), (0, 0, 255))]
    feats = enc.encode(images)
    assert feats.shape == (2, 2, 8)
    # Exactly the official prompt text, question first, one per question.
    assert _fake_tokenizer_image_token.prompts == [f"USER: {q}\n<|image|> ASSISTANT:" for q in PAPER_PROMPTS]
    assert _FakeImageProcessor.sizes == [(40, 40), (16, 16)]  # padded to square first
    # Pooling "all" = mean over every position of the last hidden state (visual tokens included).
    tok, model, proc, _ = fake_mplug_owl2
    ids = _fake_tokenizer_image_token(f"USER: {PAPER_PROMPTS[1]}\n<|image|> ASSISTANT:", tok, return_tensors="pt")
    from agiqa.semantic.hf import pad_to_square

    pix = proc.preprocess(pad_to_square(images[0], proc.image_mean))["pixel_values"]
    hidden = model(ids[None], images=pix, output_hidden_states=True)["hidden_states"][-1][0]
    assert hidden.shape[0] == ids.numel() - 1 + N_VISUAL
    torch.testing.assert_close(feats[0, 1], hidden.mean(0))
    image_only = create_encoder("mplug-owl2", trust_remote_code=True, device="cpu", precision="fp32",
                                pooling="image", backend="official").encode(images[:1])
    pos = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    torch.testing.assert_close(image_only[0, 1], hidden[pos:pos + N_VISUAL].mean(0))
    assert enc.fingerprint()["template"] == "USER: {question}\n<|image|> ASSISTANT:"


class _WordTokenizer:
    """SentencePiece-like stand-in: one token per word with its leading space, ids in order of first sight."""

    bos_token_id = 1

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(word, len(self.vocab) + 2) for word in re.findall(r"\s*\S+", text)]
        return _Encoded(input_ids=[self.bos_token_id] * add_special_tokens + ids)

    def convert_ids_to_tokens(self, ids):
        names = {i: word for word, i in self.vocab.items()}
        return [names.get(i, "<s>") for i in ids]


class _Encoded(dict):
    @property
    def input_ids(self):
        return self["input_ids"]


class _FakeOwlWithHead(_FakeOwl):
    """`_FakeOwl` with an LM head: logits = hidden @ W (all tokens), as the real model returns beside hidden states."""

    def __init__(self, vocab: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)

    def forward(self, input_ids, images=None, output_hidden_states=False):
        out = super().forward(input_ids, images, output_hidden_states)
        return {**out, "logits": self.head(out["hidden_states"][-1])}


def test_q_align_preset_reads_level_logits_after_its_template(monkeypatch):
    """`vlm:q-align` on a stand-in mPLUG-Owl2: Q-Align's prompt text, and score = softmax over the five level-word
    logits of the last position, expectation over 5..1 (computed here by hand)."""
    from agiqa.models.vlm_levels import model_from_spec
    from agiqa.scoring.scorer import Scorer
    from agiqa.semantic.levels import LEVEL_WORDS

    torch.manual_seed(0)
    tokenizer, owl = _WordTokenizer(), _FakeOwlWithHead()
    _install_fake_package(monkeypatch, (tokenizer, owl, _FakeImageProcessor(), 2048))
    model = model_from_spec("vlm:q-align", trust_remote_code=True)
    assert model.config.encoder == "q-future/one-align" and is_mplug_owl2(model.config.encoder)
    model.config.backend = "official"
    scorer = Scorer(model, device="cpu", precision="fp32")
    images = [Image.new("RGB", (40, 20), (200, 10, 10)), Image.new("RGB", (16, 16), (0, 0, 255))]
    scores = scorer.score(images).scores
    prompt = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
    assert _fake_tokenizer_image_token.prompts[-1] == prompt  # q_align/evaluate/scorer.py's text
    ids = _fake_tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    levels = [tokenizer.vocab[" " + word] for word in LEVEL_WORDS]
    from agiqa.semantic.hf import pad_to_square

    for image, score in zip(images, scores):
        pixels = _FakeImageProcessor().preprocess(pad_to_square(image, _FakeImageProcessor.image_mean))["pixel_values"]
        with torch.no_grad():
            logits = owl(ids[None], images=pixels, output_hidden_states=True)["logits"][0, -1, levels].double()
        probabilities = logits.exp() / logits.exp().sum()
        assert score == pytest.approx(sum(p * v for p, v in zip(probabilities.tolist(), (5, 4, 3, 2, 1))), abs=1e-5)
    # the answer prefix is left out of the pooled features: they equal the features of the question alone
    plain = create_encoder("q-future/one-align", prompts=scorer.encoder.prompts, template=scorer.encoder.template,
                           trust_remote_code=True, device="cpu", precision="fp32", backend="official")
    torch.testing.assert_close(scorer.encoder.encode(images)[..., :-5], plain.encode(images))
