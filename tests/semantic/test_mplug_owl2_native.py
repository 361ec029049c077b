"""mPLUG-Owl2 without the `mplug_owl2` package (`agiqa.semantic.owl2`): released layout, parity with the released
code, the paper's features through the CLI, batching, the real-size layout, clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from _owl2 import FIXTURE, fixture_images, tiny_config_dict, write_checkpoint
from safetensors.torch import load_file

from agiqa.cli import main
from agiqa.semantic import PAPER_PROMPTS, FeatureCache, SemanticEncoderError, create_encoder, load_features
from agiqa.semantic.levels import QUALITY_ANSWER, QUALITY_QUESTION
from agiqa.semantic.mplug_owl2 import MplugOwl2Encoder
from agiqa.semantic.owl2 import (
    MplugOwl2ForCausalLM,
    Owl2Config,
    build_empty,
    load_model,
    parameter_count,
    save_pretrained,
    tokenize_with_image,
)

QUESTIONS = dict(zip(("semantic_content", "coherence"), PAPER_PROMPTS))


@pytest.fixture(scope="module")
def official():
    return load_file(FIXTURE / "official_outputs.safetensors")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The parity fixture's tiny model as a sharded `.bin` folder named like the released one."""
    return write_checkpoint(tmp_path_factory.mktemp("hub") / "mplug-owl2-tiny")


@pytest.fixture(scope="module")
def encoder(checkpoint):
    return MplugOwl2Encoder(str(checkpoint), device="cpu", precision="fp32")


def test_released_outputs_are_reproduced(encoder, official):
    """The released forward (transformers 4.31, mplug_owl2 package; numbers in the fixture) on the same weights,
    images and questions: pixels, token ids, last hidden states, logits, mean-pooled features, Q-Align score."""
    images = fixture_images()
    pixels = encoder.image_processor(images)
    torch.testing.assert_close(pixels, official["pixel_values"], rtol=0, atol=0)
    model = encoder.model
    visual = model.encode_images(pixels)
    for name, question in QUESTIONS.items():
        ids = tokenize_with_image(encoder.render(question, 0), encoder.tokenizer)
        assert ids == official[f"input_ids.{name}"].tolist()
        embeds, is_visual = model.embed_multimodal(torch.tensor([ids] * 3), visual)
        (hidden,) = model.hidden_states(embeds, is_visual)
        torch.testing.assert_close(hidden, official[f"hidden_last.{name}"], rtol=0, atol=1e-5)
        last = model.logits_at(hidden, torch.full((3,), hidden.shape[1] - 1))
        torch.testing.assert_close(last, official[f"logits_last.{name}"], rtol=0, atol=1e-5)
    features = encoder.encode(images)
    for j, name in enumerate(QUESTIONS):
        torch.testing.assert_close(features[:, j], official[f"features.{name}"], rtol=0, atol=1e-5)


def test_q_align_preset_matches_the_released_scorer(checkpoint, official):
    """`vlm:<mPLUG-Owl2 folder>` with Q-Align's template: its score on 0..1 equals q_align's scorer output."""
    from agiqa.models.vlm_levels import model_from_spec
    from agiqa.scoring.scorer import Scorer

    model = model_from_spec(f"vlm:{checkpoint}")
    model.config.template = "USER: {question}\n<|image|>\nASSISTANT:"
    scorer = Scorer(model, device="cpu", precision="fp32")
    assert scorer.encoder.render(QUALITY_QUESTION, 0) == json.loads(
        (FIXTURE / "official_outputs.json").read_text())["prompts"]["qalign"]
    assert scorer.encoder.level_ids == official["qalign.level_ids"].tolist()
    scores = torch.tensor(scorer.score(fixture_images()).scores, dtype=torch.float32)
    torch.testing.assert_close((scores - 1) / 4, official["qalign.score"], rtol=0, atol=1e-5)


def test_q_align_checkpoints_are_asked_with_q_align_s_template(tmp_path):
    """A Q-Align checkpoint (hub id or the folder it downloads as) gets Q-Align's template, others MA-AGIQA's."""
    from agiqa.semantic.mplug_owl2 import MPLUG_OWL2_TEMPLATE, Q_ALIGN_TEMPLATE

    for name, template in (("one-align", Q_ALIGN_TEMPLATE), ("mplug-owl2-llama2-7b", MPLUG_OWL2_TEMPLATE)):
        folder = write_checkpoint(tmp_path / name)
        encoder = MplugOwl2Encoder(str(folder), prompts=(QUALITY_QUESTION,), answers=(QUALITY_ANSWER,),
                                   device="cpu", precision="fp32")
        assert encoder.template == template
    assert Q_ALIGN_TEMPLATE == "USER: {question}\n<|image|>\nASSISTANT:"


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_released_layout_loads_strictly(tmp_path, fmt):
    folder = write_checkpoint(tmp_path / fmt, fmt=fmt)
    model = load_model(folder)
    reference = MplugOwl2ForCausalLM(Owl2Config.from_dict(tiny_config_dict()))
    from _owl2 import recipe_weights

    expected = recipe_weights(reference)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_layout_mistakes_are_named(tmp_path):
    name = "model.layers.1.self_attn.k_proj.multiway.1.weight"
    for kwargs, words in (({"drop": (name,)}, ["1 missing", name]),
                          ({"extra": {"model.layers.9.mlp.up_proj.weight": torch.zeros(1)}}, ["1 unexpected",
                                                                                             "layers.9"]),
                          ({"extra": {name: torch.zeros(3, 3)}}, ["wrong shape", "(3, 3)"])):
        folder = write_checkpoint(tmp_path / str(len(words[0]) + len(str(kwargs))), **kwargs)
        with pytest.raises(SemanticEncoderError) as err:
            load_model(folder)
        message = str(err.value)
        assert "\n" not in message and all(word in message for word in words), message


def test_converted_safetensors_copy_loads_back_identical(checkpoint, tmp_path):
    model = load_model(checkpoint)
    out = save_pretrained(model, tmp_path / "converted", source=checkpoint, max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file() and not list(out.glob("*.bin"))
    again = load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert json.loads((out / "config.json").read_text())["visual_config"]["visual_abstractor"]["grid_size"] == 4


def test_cli_extracts_the_paper_features(checkpoint, official, tmp_path, capsys):
    """`agiqa features extract --encoder <mPLUG-Owl2 folder>`: no --trust-remote-code, the paper's questions,
    template and pooling by default -> the released forward's features."""
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(fixture_images()):
        image.save(images / f"img{i}.png")
    out = tmp_path / "cache"
    argv = ["features", "extract", "--images", str(images), "--encoder", str(checkpoint), "--out", str(out),
            "--device", "cpu", "--precision", "fp32", "--batch-size", "2", "--no-progress"]
    assert main(argv) == 0
    assert "3 computed" in capsys.readouterr().out
    features = load_features(out, [str(images / f"img{i}.png") for i in range(3)])
    for j, name in enumerate(QUESTIONS):
        torch.testing.assert_close(features[:, j], official[f"features.{name}"], rtol=0, atol=1e-5)
    fingerprint = FeatureCache(out).fingerprint
    assert fingerprint["template"] == "USER: {question}\n<|image|> ASSISTANT:" and fingerprint["pooling"] == "all"
    assert fingerprint["prompts"] == list(PAPER_PROMPTS) and fingerprint["backend"] == "mplug-owl2"
    assert fingerprint["revision"].startswith("local-")  # other weights in the same folder make the cache stale


def test_batch_of_four_equals_one_by_one(checkpoint):
    """Right-padded rows of different lengths ({prompt} questions) give each image the features it gets alone."""
    from conftest import make_images

    encoder = MplugOwl2Encoder(str(checkpoint), prompts=(PAPER_PROMPTS[0], "Does it show {prompt}?"),
                               answers=("The quality of the image is",) * 2, device="cpu", precision="fp32")
    images = make_images(4, seed=3)
    prompts = ["a cat", "a very long and detailed prompt about a red house by a lake", "x", "two dogs"]
    together = encoder.encode(images, prompts)
    alone = torch.cat([encoder.encode([image], [prompt]) for image, prompt in zip(images, prompts)])
    assert together.shape == (4, 2, 64 + 5)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def _released_layout(c: Owl2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of mPLUG-Owl2 as the released modules name them (modeling_mplug_owl2.py,
    visual_encoder.py, modeling_llama2.py of X-PLUG/mPLUG-Owl), written out from the config by hand."""
    d, v, f, kv = c.hidden_size, c.vocab_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    vd, vf, a = c.vision.hidden_size, c.vision.intermediate_size, c.abstractor
    layout = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        layout.update({p + "self_attn.q_proj.weight": (d, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                       p + "mlp.down_proj.weight": (d, f)})
        for way in (0, 1):
            layout[p + f"self_attn.k_proj.multiway.{way}.weight"] = (kv, d)
            layout[p + f"self_attn.v_proj.multiway.{way}.weight"] = (kv, d)
            layout[p + f"input_layernorm.multiway.{way}.weight"] = (d,)
            layout[p + f"post_attention_layernorm.multiway.{way}.weight"] = (d,)
    vm = "model.vision_model."
    patches = (c.vision.image_size // c.vision.patch_size) ** 2
    layout.update({vm + "embeddings.cls_token": (1, 1, vd), vm + "embeddings.position_embedding": (1, patches + 1, vd),
                   vm + "embeddings.patch_embed.weight": (vd, 3, c.vision.patch_size, c.vision.patch_size)})
    for norm in ("embeddings.pre_layernorm", "post_layernorm"):
        layout.update({vm + norm + ".weight": (vd,), vm + norm + ".bias": (vd,)})
    for i in range(c.vision.num_hidden_layers):
        p = vm + f"encoder.layers.{i}."
        for name, shape in (("self_attn.query_key_value", (3 * vd, vd)), ("self_attn.dense", (vd, vd)),
                            ("mlp.fc1", (vf, vd)), ("mlp.fc2", (vd, vf))):
            layout.update({p + name + ".weight": shape, p + name + ".bias": (shape[0],)})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            layout.update({p + norm + ".weight": (vd,), p + norm + ".bias": (vd,)})
    va = "model.visual_abstractor."
    ad, af = a.hidden_size, a.intermediate_size
    layout.update({va + "query_embeds": (1, a.num_learnable_queries, ad), va + "vit_eos": (1, 1, d),
                   va + "visual_fc.weight": (d, ad), va + "visual_fc.bias": (d,)})
    for i in range(a.num_hidden_layers):
        p = va + f"encoder.layers.{i}.crossattention."
        linears = {"attention.query": (ad, ad), "attention.key": (ad, ad), "attention.value": (ad, ad),
                   "output.out_proj": (ad, ad), "output.mlp.w1": (af, ad), "output.mlp.w2": (ad, af),
                   "output.mlp.w3": (af, ad)}
        for name, shape in linears.items():
            layout.update({p + name + ".weight": shape, p + name + ".bias": (shape[0],)})
        for norm, width in (("norm1", ad), ("normk", ad), ("output.norm2", ad), ("output.mlp.ffn_ln", af)):
            layout.update({p + norm + ".weight": (width,), p + norm + ".bias": (width,)})
        layout[p + "attention.q_pos_embed"] = (a.num_learnable_queries, ad)
        layout[p + "attention.k_pos_embed"] = (1 + a.grid_size ** 2, ad)
    return layout


def test_real_size_layout_without_the_weights():
    """The released 7B architecture (the official config classes' visual defaults, LLaMA-2-7B sizes), on the meta
    device: exactly the released names and shapes, and its parameter count."""
    config = Owl2Config.from_dict({"model_type": "mplug_owl2", "vocab_size": 32000, "hidden_size": 4096,
                                   "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5})
    model = build_empty(config)
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    released = _released_layout(config)
    assert set(ours) - set(released) == set() and set(released) - set(ours) == set()
    assert ours == released
    buffers = {name for name, _ in model.named_buffers()}
    by_hand = sum(torch.Size(shape).numel() for name, shape in released.items() if name not in buffers)
    assert parameter_count(model) == by_hand == 8_197_859_328
    assert all(p.device.type == "meta" for p in model.parameters())


def test_tiny_config_layout_matches_by_hand():
    config = Owl2Config.from_dict(tiny_config_dict())
    assert {n: tuple(t.shape) for n, t in build_empty(config).state_dict().items()} == _released_layout(config)


def test_missing_or_splitting_tokenizer_and_foreign_folders_get_one_line(checkpoint, tmp_path, capsys):
    import shutil

    no_tokenizer = tmp_path / "no-tokenizer-mplug-owl2"
    shutil.copytree(checkpoint, no_tokenizer)
    (no_tokenizer / "tokenizer.model").unlink()
    with pytest.raises(SemanticEncoderError, match="no tokenizer.model"):
        create_encoder(str(no_tokenizer), device="cpu", precision="fp32")

    splitting = tmp_path / "splitting-mplug-owl2"
    shutil.copytree(checkpoint, splitting)
    _train_tokenizer_without_level_words(splitting / "tokenizer.model")
    with pytest.raises(SemanticEncoderError, match="'excellent' ->"):
        create_encoder(str(splitting), prompts=(QUALITY_QUESTION,), answers=(QUALITY_ANSWER,), device="cpu",
                       precision="fp32")

    llava = tmp_path / "mplug-owl2-but-llava"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({"model_type": "llava"}))
    for folder, words in ((llava, "not 'mplug_owl2'"), (tmp_path / "missing" / "mplug-owl2", "no such model folder")):
        code = main(["features", "extract", "--images", str(FIXTURE / "images"), "--encoder", str(folder),
                     "--out", str(tmp_path / "c"), "--device", "cpu", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_hub_ids_need_no_package_and_fail_offline_in_one_line():
    """The paper's id is routed to the native backend; offline (tests) its download fails with one line."""
    with pytest.raises(SemanticEncoderError) as err:
        create_encoder("MAGAer13/mplug-owl2-llama2-7b", device="cpu")
    assert "cannot download MAGAer13/mplug-owl2-llama2-7b" in str(err.value) and "\n" not in str(err.value)


def _train_tokenizer_without_level_words(path):
    """A SentencePiece model whose vocabulary lacks 'excellent' (it splits into pieces)."""
    import io

    import sentencepiece

    text = "\n".join(["USER: How would you rate the quality of this image? ASSISTANT: The quality of the image is"
                      " good fair poor bad"] * 50 + ["e x c l n t a b c d"] * 10)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model,
                                             vocab_size=60, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
                                             pad_id=-1, byte_fallback=False, minloglevel=2)
    path.write_bytes(model.getvalue())
