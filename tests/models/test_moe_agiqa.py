"""MoE-AGIQA: shapes, routing, freezing, official file layouts and conversion, preprocessing."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agiqa.errors import AgiqaError
from agiqa.models import create_model
from agiqa.models._builder import load_state_dict_strict
from agiqa.models.moe_agiqa import (
    MoeAgiqa,
    MoeAgiqaConfig,
    MoeAgiqaProcessor,
    MoeAgiqaPrior,
    convert_official_checkpoint,
    min_padding,
    official_trainable_names,
    tiny_moe_agiqa_kwargs,
)
from tests.models._moe_official import FULL, TINY, official_files, regressor_shapes, reward_shapes, vit_shapes

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "a", "cat", "dog", "on", "the", "red", "blue", "car", "house", "tree", "sky", "photo", "of", "painting", "in",
    "style", "green", "big", "small", "city", "night", "sun", "water", "man", "woman", "and", "with", "a", "bird",
    "flower", "field", "mountain", "river", "boat", "street", "old", "new", "dark", "light", "yellow", "white",
    "black", "portrait", "landscape", "castle", "forest", "snow", "beach", "robot", "space", "moon", "star", "fire",
    "glass", "stone", "wood", "horse",
]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    """A BERT WordPiece vocabulary of 62 entries (+ BLIP's [DEC] and [ENC] = the tiny model's 64)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    words = list(dict.fromkeys(TINY_VOCAB))
    words += [f"w{i}" for i in range(62 - len(words))]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return str(folder)


def tiny(**overrides) -> MoeAgiqa:
    """The tiny model with `weight1` / `weight2` made non-zero: as released they start at zero, so the degradation
    branch (and with it every crop) would not reach the score and crop tests could not fail."""
    torch.manual_seed(0)
    model = create_model("test_moe_agiqa", **overrides).eval()
    regressor = model.regressor
    if model.config.use_prior:
        with torch.no_grad():
            regressor.weight1.normal_(0, 0.5)
            regressor.weight2.normal_(0, 0.5)
    return model


def tiny_inputs(batch=2, crops=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (batch, 16), generator=g)
    mask = torch.ones(batch, 16, dtype=torch.long)
    mask[-1, 9:] = 0
    return dict(crops=torch.rand(batch, crops, 3, 32, 32, generator=g),
                prompt_image=torch.randn(batch, 3, 32, 32, generator=g), input_ids=ids, attention_mask=mask)


def test_shapes_through_every_branch():
    model = tiny()
    x = tiny_inputs()
    flat = x["crops"].flatten(0, 1)
    assert model.forward_degradation(flat).shape == (6, 96, 4, 4)  # 3 hooked blocks x 32
    assert model.forward_prior(flat).shape == (6, 32)
    assert model.forward_semantic(x["prompt_image"], x["input_ids"], x["attention_mask"]).shape == (2, 16, 32)
    features = model.forward_features(**x)
    assert features.shape == (2, 3, 32)
    assert model.forward_head(features).shape == (2,)
    assert model(**x).shape == (2,)
    # One crop given as (B, 3, S, S) is the K = 1 case.
    single = dict(x, crops=x["crops"][:, 0])
    assert torch.allclose(model(**single), model(**dict(x, crops=x["crops"][:, :1])))


def test_crops_are_averaged_and_prompt_features_shared():
    model = tiny()
    x = tiny_inputs()
    per_crop = torch.stack([model(**dict(x, crops=x["crops"][:, k])) for k in range(3)], dim=1)
    assert (per_crop.max(dim=1).values - per_crop.min(dim=1).values).min() > 1e-3  # each crop has its own score
    torch.testing.assert_close(model(**x), per_crop.mean(dim=1), rtol=1e-5, atol=1e-6)


def test_vits_see_raw_crops_as_released_and_centred_pixels_when_asked():
    raw, centred = tiny(), tiny(vit_input_normalize=True)
    centred.load_state_dict(raw.state_dict())
    crops = tiny_inputs()["crops"].flatten(0, 1)
    timm_input = (crops - 0.5) / 0.5
    torch.testing.assert_close(centred.forward_degradation(crops), raw.forward_degradation(timm_input))
    torch.testing.assert_close(centred.forward_prior(crops), raw.forward_prior(timm_input))
    assert not torch.allclose(centred.forward_prior(crops), raw.forward_prior(crops))
    prior_raw = create_model("test_moe_agiqa_prior").eval()
    prior_centred = create_model("test_moe_agiqa_prior", vit_input_normalize=True).eval()
    prior_centred.load_state_dict(prior_raw.state_dict())
    torch.testing.assert_close(prior_centred(crops), prior_raw(timm_input))


def test_degradation_vit_runs_only_to_the_last_hooked_block():
    with torch.device("meta"):
        full = MoeAgiqa(MoeAgiqaConfig())
    assert len(full.degradation_vit.blocks) == 8  # blocks 8..11 of ViT-B/16 are never built
    assert isinstance(full.degradation_vit.norm, torch.nn.Identity)


def test_top_k_routing_equals_hand_computed_mixture():
    model = tiny()
    regressor = model.regressor
    pooled = torch.randn(5, 32)
    probs = torch.softmax(regressor.gating_network[0](pooled), dim=1)
    experts = torch.stack([e.project(pooled).squeeze(-1) for e in regressor.proj_experts], dim=1)
    expected = []
    for i in range(5):
        chosen = torch.argsort(probs[i], descending=True)[:3]
        assert len(set(chosen.tolist())) == 3
        expected.append(sum(probs[i, j] * experts[i, j] for j in chosen))  # not renormalised, as released
    torch.testing.assert_close(regressor.forward_head(pooled), torch.stack(expected))
    weights, index = regressor.gates(pooled)
    assert index.shape == (5, 3) and (weights.sum(1) < 1).all()


def test_renormalised_top_k_and_other_k():
    model = tiny(top_k=2, renormalize=True)
    weights, index = model.regressor.gates(torch.randn(4, 32))
    assert index.shape == (4, 2)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="top_k"):
        MoeAgiqaConfig(**dict(tiny_moe_agiqa_kwargs(), top_k=5))


def test_balance_loss_is_off_by_default_and_on_when_asked():
    x = tiny_inputs()
    model = tiny().train()
    model(**x)
    assert model.balance_loss is None
    model = tiny(balance_loss_weight=0.01).train()
    model(**x)
    assert model.balance_loss is not None and model.balance_loss >= 1.0 - 1e-6  # 1 = perfectly balanced


def test_v1_has_no_prior_parameters():
    model = create_model("test_moe_agiqa", use_prior=False)
    names = list(model.state_dict())
    assert not any(n.startswith("prior_vit.") for n in names)
    for key in ("proj_prior", "weight1", "weight2", "fc.0.weight"):
        assert f"regressor.{key}" not in names
    with torch.device("meta"):
        v1 = create_model("moe_agiqa_v1")
    assert not hasattr(v1, "prior_vit") and v1.config.use_prior is False


def test_frozen_parts_get_no_gradient_and_trainable_parts_do():
    model = tiny().train()
    with torch.no_grad():  # released init: weight1 = weight2 = 0 silences the degradation path until they move
        model.regressor.weight1.normal_()
        model.regressor.weight2.normal_()
    x = tiny_inputs()
    model(**x).sum().backward()
    frozen = set(model.frozen_parameter_names())
    params = dict(model.named_parameters())
    assert all(params[n].grad is None and not params[n].requires_grad for n in frozen)
    trainable = official_trainable_names(model)
    assert any(n.startswith("blip.text_encoder.encoder.layer.1.") for n in trainable)
    assert any(n.startswith("regressor.") for n in trainable)
    with torch.no_grad():
        _, chosen = model.regressor.gates(model.forward_features(**x).flatten(0, 1))
    unchosen = {f"regressor.proj_experts.{e}." for e in range(4) if e not in chosen.unique().tolist()}
    silent = [n for n in trainable if params[n].grad is None or params[n].grad.abs().sum() == 0]
    # Only experts the router never picked, and embedding rows of tokens that did not occur, get no gradient.
    assert all(n.startswith(tuple(unchosen)) or "embeddings" in n for n in silent), silent
    # The first BLIP text layer's first parameter and everything before it are frozen (ratio 0.5 of 2 layers).
    assert "blip.text_encoder.encoder.layer.1.attention.self.query.weight" in frozen
    assert "blip.text_encoder.encoder.layer.1.attention.self.query.bias" not in frozen
    # The ViTs stay in eval mode when the model trains, as released.
    assert not model.degradation_vit.training and not model.prior_vit.training and model.blip.training


def test_full_size_trainable_set_matches_the_released_training():
    with torch.device("meta"):
        model = MoeAgiqa(MoeAgiqaConfig())
    params = dict(model.named_parameters())
    blip_trainable = [n for n in official_trainable_names(model) if n.startswith("blip.")]
    # REFERENCE.md: 300 trainable tensors / 209,635,840 parameters of ImageReward (nothing of mlp or *_proj).
    assert len(blip_trainable) == 300
    assert sum(params[n].numel() for n in blip_trainable) == 209_635_840
    assert "blip.text_encoder.encoder.layer.6.attention.self.query.weight" not in blip_trainable
    assert "blip.text_encoder.encoder.layer.6.attention.self.query.bias" in blip_trainable
    assert "blip.visual_encoder.blocks.12.norm1.weight" not in blip_trainable
    assert "blip.visual_encoder.blocks.12.norm1.bias" in blip_trainable


def test_full_size_official_layouts_convert_with_nothing_unmapped_or_missing(caplog):
    best, prior, vit = official_files(FULL, device="meta")
    reward = best["reward_model_state_dict"]
    assert len(reward) == 625 and sum(v.numel() for v in reward.values()) == 446_666_465
    assert len(best["regressor_model_state_dict"]) == 39 and len(prior["vit_model_state_dict"]) == 152
    caplog.set_level("INFO")
    state = convert_official_checkpoint(best, prior, vit)
    with torch.device("meta"):
        model = MoeAgiqa(MoeAgiqaConfig())
    own = model.state_dict()
    assert set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in own)
    # What was dropped, on purpose and listed: ImageReward's mlp and projections, the position_ids buffer, the ViT
    # heads, and the degradation ViT's never-run blocks 8..11 and final norm.
    log = caplog.text
    for dropped in ("mlp.layers.0", "blip.vision_proj", "blip.text_proj", "position_ids", "head", "blocks.11.mlp.fc2"):
        assert dropped in log


def test_tiny_official_files_convert_by_cli_and_load_strictly(tmp_path, tiny_tokenizer_dir):
    best, prior, vit = official_files(TINY, seed=3)
    paths = {name: tmp_path / f"{name}.pth" for name in ("best", "prior", "vit")}
    for name, obj in zip(paths, (best, prior, vit)):
        torch.save(obj, paths[name])
    out = tmp_path / "converted"
    cmd = [sys.executable, "-m", "agiqa.cli", "models", "convert", str(paths["best"]), str(out), "--model",
           "test_moe_agiqa", "--prior", str(paths["prior"]), "--degradation-vit", str(paths["vit"]),
           "--tokenizer", tiny_tokenizer_dir]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = create_model("test_moe_agiqa", pretrained=str(out))
    loaded = model.state_dict()
    # Every tensor sits under the documented name: blip.* unchanged, regressor.* = IQARegression, *_vit.* = timm.
    for key, value in best["reward_model_state_dict"].items():
        if key.startswith("blip.") and "_proj" not in key and "position_ids" not in key:
            torch.testing.assert_close(loaded[key], value)
    for key, value in best["regressor_model_state_dict"].items():
        torch.testing.assert_close(loaded[f"regressor.{key}"], value)
    for key, value in prior["vit_model_state_dict"].items():
        if not key.startswith("head."):
            torch.testing.assert_close(loaded[f"prior_vit.{key}"], value)
    for key in ("cls_token", "blocks.2.mlp.fc2.weight"):
        torch.testing.assert_close(loaded[f"degradation_vit.{key}"], vit[key])
    # The tokenizer travelled with the weights: the folder scores offline.
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 20, 3), dtype=np.uint8))
    assert model.score([image], ["a cat on the moon"], num_crops=2).shape == (1,)


def test_v1_files_convert_without_prior(tmp_path):
    best, _, vit = official_files(TINY, seed=4, prior=False)
    state = convert_official_checkpoint(best, None, vit, hooked_blocks=(0, 1, 2))
    model = create_model("test_moe_agiqa", use_prior=False)
    load_state_dict_strict(model, state)


def test_official_files_are_read_weights_only(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "best.pth"
    path.write_bytes(pickle.dumps({"reward_model_state_dict": Evil()}))
    with pytest.raises(AgiqaError, match="refused to load"):
        convert_official_checkpoint(path)
    assert not marker.exists()


def test_wrong_file_is_named():
    with pytest.raises(RuntimeError, match="reward_model_state_dict"):
        convert_official_checkpoint({"vit_model_state_dict": {}})


def test_processor_pads_crops_deterministically_and_tokenizes(tiny_tokenizer_dir):
    model = create_model("test_moe_agiqa", tokenizer=tiny_tokenizer_dir)
    assert model.tokenizer.bos_token == "[DEC]" and model.tokenizer.convert_tokens_to_ids("[ENC]") == 63
    assert len(model.tokenizer) == 64
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (20, 50, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))]
    processor = MoeAgiqaProcessor(model.config, model.tokenizer, num_crops=4, seed=7)
    out = processor(images, ["a red car", "a photo of a cat " * 10])
    assert out["crops"].shape == (2, 4, 3, 32, 32)
    assert out["prompt_image"].shape == (2, 3, 32, 32)
    assert out["input_ids"].shape == (2, 16) and out["attention_mask"][0].sum() < 16
    assert out["attention_mask"][1].sum() == 16  # truncated to max_prompt_tokens
    # Seeded by image size: the same image gets the same crops in any batch, at any position.
    torch.testing.assert_close(processor(images[::-1], ["x", "a red car"])["crops"], out["crops"].flip(0))
    other = MoeAgiqaProcessor(model.config, model.tokenizer, num_crops=4, seed=8)(images, ["a", "b"])["crops"]
    assert not torch.equal(other[1], out["crops"][1])
    # The 20 px high image is zero-padded to 32, centred (6 rows above, 6 below): crops keep the black bands.
    assert min_padding(20, 50, 32) == (0, 0, 6, 6)
    assert (out["crops"][0, :, :, :6] == 0).all() and (out["crops"][0, :, :, 26:] == 0).all()
    with pytest.raises(ValueError, match="one prompt per image"):
        processor(images, ["only one"])


def test_bad_crop_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="MoeAgiqaProcessor"):
        tiny()(torch.rand(1, 3, 30, 30), torch.rand(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long),
               torch.ones(1, 16, dtype=torch.long))


def test_save_pretrained_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    again = create_model("test_moe_agiqa", pretrained=str(tmp_path / "m"))
    x = tiny_inputs()
    torch.testing.assert_close(again(**x), model(**x))


def test_prior_and_imagereward_files_start_training(tmp_path):
    torch.manual_seed(0)
    net = create_model("test_moe_agiqa_prior")
    torch.save(net.prior_state_dict(), tmp_path / "prior.pth")
    best, _, _ = official_files(TINY, seed=5)
    torch.save(best["reward_model_state_dict"], tmp_path / "ImageReward.pt")
    model = create_model("test_moe_agiqa", prior_checkpoint=str(tmp_path / "prior.pth"),
                         semantic_checkpoint=str(tmp_path / "ImageReward.pt"))
    torch.testing.assert_close(model.prior_vit.cls_token, net.vit.cls_token)
    torch.testing.assert_close(model.blip.text_encoder.embeddings.word_embeddings.weight,
                               best["reward_model_state_dict"]["blip.text_encoder.embeddings.word_embeddings.weight"])
    # A saved model no longer needs those files.
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "prior.pth").unlink()
    create_model("test_moe_agiqa", pretrained=str(tmp_path / "m"))


def test_prior_net_freezes_first_70_percent_in_name_order():
    with torch.device("meta"):
        net = MoeAgiqaPrior()
    frozen = [n for n, p in net.vit.named_parameters() if not p.requires_grad]
    assert frozen[-1] == "blocks.8.norm1.weight"
    assert net.vit.get_parameter("blocks.8.norm1.bias").requires_grad
    assert all(p.requires_grad for p in net.regressor.parameters())


def test_official_prior_file_loads_into_the_prior_network(tmp_path):
    _, prior, _ = official_files(TINY, seed=6)
    prior["regressor_model_state_dict"] = {"project.0.weight": torch.randn(32, 32), "project.0.bias": torch.randn(32),
                                           "project.2.weight": torch.randn(1, 32), "project.2.bias": torch.randn(1)}
    torch.save(prior, tmp_path / "prior.pth")
    net = create_model("test_moe_agiqa_prior", pretrained=str(tmp_path / "prior.pth"))
    torch.testing.assert_close(net.vit.pos_embed, prior["vit_model_state_dict"]["pos_embed"])
    torch.testing.assert_close(net.regressor.project[2].bias, prior["regressor_model_state_dict"]["project.2.bias"])
    assert net(torch.rand(2, 3, 3, 32, 32)).shape == (2,)


def test_text_ablation_has_no_semantic_branch():
    model = tiny(use_text=False)
    assert not hasattr(model, "blip") and not hasattr(model.regressor, "cross_attention")
    assert model(torch.rand(2, 2, 3, 32, 32)).shape == (2,)


def _count(shapes: dict) -> int:
    return sum(int(np.prod(shape)) for shape in shapes.values())


def test_documented_layouts_match_the_released_counts_and_files():
    """The official layouts written from REFERENCE.md, at full size, against independent numbers: ImageReward-v1.0
    has 625 keys / 446,666,465 parameters (REFERENCE.md), timm's vit_base_patch16_224 152 keys / 86,567,656
    parameters, and the released regressor's keys and shapes are those of the shared official fixture."""
    reward = {**reward_shapes(FULL), "blip.text_encoder.embeddings.position_ids": (1, FULL.positions)}  # + buffer
    assert (len(reward), _count(reward)) == (625, 446_666_465)
    vit = vit_shapes(FULL)
    assert (len(vit), _count(vit)) == (152, 86_567_656)
    fixture = Path(__file__).resolve().parents[2] / "../shared/fixtures/moe_agiqa_regressor_official.safetensors"
    if fixture.is_file():
        from safetensors import safe_open

        with safe_open(str(fixture), "pt") as handle:
            released = {k[len("regressor."):]: tuple(handle.get_slice(k).get_shape())
                        for k in handle.keys() if k.startswith("regressor.")}
        assert {k: tuple(v) for k, v in regressor_shapes(FULL).items()} == released
    v1_missing = set(regressor_shapes(FULL)) - set(regressor_shapes(FULL, prior=False))
    assert v1_missing == {"proj_prior", "fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias", "weight1", "weight2"}


def test_explain_gives_the_forward_score_with_top_k_gates_and_expert_scores():
    model = tiny()
    inputs = tiny_inputs(batch=3, crops=1)
    with torch.no_grad():
        parts = model.explain(**inputs)
        torch.testing.assert_close(parts["score"], model(**inputs))
    gate, experts = parts["gate"], parts["expert_score"]
    assert model.expert_names == ["expert0", "expert1", "expert2", "expert3"] and gate.shape == experts.shape == (3, 4)
    assert ((gate > 0).sum(dim=1) == 3).all()  # one crop: exactly the top 3 experts carry weight
    torch.testing.assert_close((gate * experts).sum(dim=1), parts["score"])
    with torch.no_grad():  # several crops: gates and expert scores are averaged over crops as the score is
        inputs = tiny_inputs(batch=3, crops=4)
        several = model.explain(**inputs)
        torch.testing.assert_close(several["score"], model(**inputs))
        per_crop = [model.explain(**dict(inputs, crops=inputs["crops"][:, k])) for k in range(4)]
    for name in ("gate", "expert_score"):
        torch.testing.assert_close(several[name], torch.stack([part[name] for part in per_crop]).mean(dim=0))
    assert not torch.allclose(per_crop[0]["gate"], per_crop[1]["gate"])  # the crops do route differently


def test_forward_and_explain_multiply_by_label_scale():
    """Training labels are MOS / max MOS (as released); the saved `label_scale` brings scores back to MOS units."""
    base, scaled = tiny(), tiny(label_scale=4.5)
    scaled.load_state_dict(base.state_dict())
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(scaled(**inputs), 4.5 * base(**inputs))
        explained, plain = scaled.explain(**inputs), base.explain(**inputs)
    torch.testing.assert_close(explained["score"], 4.5 * plain["score"])
    torch.testing.assert_close(explained["expert_score"], 4.5 * plain["expert_score"])
    torch.testing.assert_close(explained["gate"], plain["gate"])
