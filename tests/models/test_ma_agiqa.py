"""MA-AGIQA: official checkpoint layout, AFM math, ablation variants, gate learning, save/load."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from agiqa.models import create_model
from agiqa.models.ma_agiqa import AdaptiveFusion, MaAgiqaConfig

# Official AGIQA-3K checkpoint, beyond the 316 MANIQA keys: the AFM layers it uses...
OFFICIAL_AFM_SHAPES = {
    "fc784_784.weight": (784, 784), "fc784_784.bias": (784,),
    "fc4096_784_a2.0.weight": (784, 4096), "fc4096_784_a2.0.bias": (784,),
    "fc4096_784_b2.0.weight": (784, 4096), "fc4096_784_b2.0.bias": (784,),
    "gating.weight": (3, 2352), "gating.bias": (3,),
    "output_fc.weight": (1, 784), "output_fc.bias": (1,),
}
# ... and the modules it holds but never uses (REFERENCE.md), which loading must drop and nothing else.
OFFICIAL_UNUSED_SHAPES = {
    "fc39_784.0.weight": (392, 39), "fc39_784.0.bias": (392,),
    "fc39_784.3.weight": (784, 392), "fc39_784.3.bias": (784,),
    "encoder_layer.self_attn.in_proj_weight": (2352, 784), "encoder_layer.self_attn.in_proj_bias": (2352,),
    "encoder_layer.self_attn.out_proj.weight": (784, 784), "encoder_layer.self_attn.out_proj.bias": (784,),
    "encoder_layer.linear1.weight": (2048, 784), "encoder_layer.linear1.bias": (2048,),
    "encoder_layer.linear2.weight": (784, 2048), "encoder_layer.linear2.bias": (784,),
    "encoder_layer.norm1.weight": (784,), "encoder_layer.norm1.bias": (784,),
    "encoder_layer.norm2.weight": (784,), "encoder_layer.norm2.bias": (784,),
    "fc_output.0.weight": (392, 784), "fc_output.0.bias": (392,),
    "fc_output.3.weight": (1, 392), "fc_output.3.bias": (1,),
    "fc4096_784_a.weight": (784, 4096), "fc4096_784_a.bias": (784,),
    "fc4096_784_b.weight": (784, 4096), "fc4096_784_b.bias": (784,),
    "quality.0.weight": (128, 2352), "quality.0.bias": (128,), "quality.1.weight": (1, 128), "quality.1.bias": (1,),
    "fc784x3_1.0.weight": (128, 2352), "fc784x3_1.0.bias": (128,),
    "fc784x3_1.1.weight": (1, 128), "fc784x3_1.1.bias": (1,),
    "fc4096_1024_a.weight": (1024, 4096), "fc4096_1024_a.bias": (1024,),
    "fc4096_1024_b.weight": (1024, 4096), "fc4096_1024_b.bias": (1024,),
}


def tiny_inputs(batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=generator), torch.randn(batch, 2, 32, generator=generator)


@pytest.mark.slow
def test_official_state_dict_layout_loads_and_drops_exactly_the_unused_modules():
    torch.manual_seed(0)
    model = create_model("ma_agiqa").eval()
    own = model.state_dict()
    afm_keys = {k for k in own
                if not k.startswith(("vit.", "tablock", "conv", "swintransformer", "fc_score", "fc_weight"))}
    assert {k: tuple(own[k].shape) for k in afm_keys} == OFFICIAL_AFM_SHAPES
    official = {f"module.{k}": v + 0.01 if v.is_floating_point() else v.clone() for k, v in own.items()}
    official.update({k: torch.randn(shape) for k, shape in OFFICIAL_UNUSED_SHAPES.items()})
    assert len(official) == 362
    unused_params = sum(torch.Size(shape).numel() for shape in OFFICIAL_UNUSED_SHAPES.values())
    assert sum(p.numel() for p in model.parameters()) + unused_params == 164_523_185
    loaded = create_model("ma_agiqa", pretrained={"state_dict": official}).eval()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, official[f"module.{key}"]), key
    official["gating.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="gating.extra"):
        create_model("ma_agiqa", pretrained=official)


def test_afm_matches_the_released_formula():
    model = create_model("test_ma_agiqa").eval()
    x, semantic = tiny_inputs()
    sd = model.state_dict()
    with torch.no_grad():
        key = model.patch_scores(x)[0] * model.patch_scores(x)[1]
        key = key @ sd["fc16_16.weight"].T + sd["fc16_16.bias"]
        q1 = torch.relu(semantic[:, 0] @ sd["fc32_16_a2.0.weight"].T + sd["fc32_16_a2.0.bias"])
        q2 = torch.relu(semantic[:, 1] @ sd["fc32_16_b2.0.weight"].T + sd["fc32_16_b2.0.bias"])
        gates = torch.cat([q1, q2, key], 1) @ sd["gating.weight"].T + sd["gating.bias"]  # raw, as released
        mixed = gates[:, 0:1] * q1 + gates[:, 1:2] * q2 + gates[:, 2:3] * key
        expected = (mixed @ sd["output_fc.weight"].T + sd["output_fc.bias"]).squeeze(1)
        assert torch.allclose(model(x, semantic), expected, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(semantic_experts=()),  # MANIQA only
        dict(semantic_experts=(0,), use_maniqa=False),
        dict(semantic_experts=(1,), use_maniqa=False),
        dict(semantic_experts=(0,)),
        dict(semantic_experts=(1,)),
        dict(semantic_experts=(0, 1), use_maniqa=False),
        dict(fusion="concat"),
        dict(gate_activation="sigmoid"),
        dict(gate_activation="softmax"),
    ],
)
def test_ablation_variants_build_and_train_one_step(overrides):
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", **overrides).train()
    x, semantic = tiny_inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = torch.nn.functional.mse_loss(model(x, semantic), torch.tensor([1.0, 2.0, 3.0]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    expert_layers = [n for n in ("fc16_16", "fc32_16_a2", "fc32_16_b2") if any(k.startswith(n) for k in before)]
    for layer in expert_layers:  # every expert that exists is trained
        assert any(k.startswith(layer) for k in changed), layer
    assert any(k.startswith("vit.") for k in changed) == model.config.use_maniqa
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(model.unused_parameter_names())


def test_missing_semantic_features_is_a_clear_error():
    model = create_model("test_ma_agiqa").eval()
    x, semantic = tiny_inputs()
    with pytest.raises(ValueError, match="needs semantic features"):
        model(x)
    with pytest.raises(ValueError, match=r"\(B, P, 32\)"):
        model(x, semantic[..., :8])


@pytest.mark.parametrize("overrides", [{}, {"use_maniqa": False}, {"fusion": "concat"}])
def test_scores_stay_fp32_under_bf16_autocast(overrides):
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", **overrides).eval()
    x, semantic = tiny_inputs(batch=32)
    with torch.inference_mode():
        reference = model(x, semantic)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model(x, semantic)
    assert scores.dtype == torch.float32
    assert scores.unique().numel() == 32  # not rounded to bf16 steps
    assert (scores - reference).abs().max() < 1e-2
    with pytest.raises(ValueError, match="needs semantic features"), torch.autocast("cpu", dtype=torch.bfloat16):
        create_model("test_ma_agiqa", use_maniqa=False)(None)


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="at least one expert"):
        MaAgiqaConfig(semantic_experts=(), use_maniqa=False)
    with pytest.raises(ValueError, match="gate_activation"):
        MaAgiqaConfig(gate_activation="relu")


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_gates_learn_to_favour_the_informative_expert(activation):
    """One LMM feature encodes quality, the other is noise: the gate must learn to weight the informative one."""
    torch.manual_seed(0)
    n, dim = 512, 32
    quality = torch.rand(n) * 5
    direction = torch.randn(dim)
    informative = quality[:, None] * direction + 0.1 * torch.randn(n, dim)
    noise = torch.randn(n, dim) * informative.std()
    features = torch.stack([informative, noise], dim=1)
    afm = AdaptiveFusion(MaAgiqaConfig(**_tiny_afm_kwargs(), gate_activation=activation))
    optimizer = torch.optim.Adam(afm.parameters(), lr=3e-3)
    for _ in range(300):
        batch = torch.randint(0, 384, (64,))
        loss = torch.nn.functional.mse_loss(afm(None, features[batch]), quality[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    afm.eval()
    with torch.no_grad():
        held_out = features[384:]
        experts = afm.experts(None, held_out)
        # Each expert's share of the predicted score: gate_i * (output_fc . expert_i), and how much it varies.
        score_parts = afm.gates(experts) * (experts @ afm.output_fc.weight[0])
        contribution = score_parts.std(dim=0)
        predictions = afm(None, held_out)
    assert contribution[0] > 2 * contribution[1]
    assert spearmanr(predictions.numpy(), quality[384:].numpy())[0] > 0.9


def _tiny_afm_kwargs() -> dict:
    return dict(img_size=32, patch_size=8, embed_dim=32, vit_depth=4, vit_num_heads=2, hooked_blocks=(0, 1, 2),
                semantic_dim=32, use_maniqa=False)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = create_model("test_ma_agiqa", gate_activation="sigmoid").eval()
    model.save_pretrained(tmp_path / "m")
    again = create_model("test_ma_agiqa", pretrained=str(tmp_path / "m")).eval()
    assert again.config == model.config
    x, semantic = tiny_inputs()
    assert torch.equal(again(x, semantic), model(x, semantic))


def test_explain_gives_the_forward_score_gates_and_each_experts_own_score():
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa").eval()
    image, semantic = tiny_inputs()
    with torch.no_grad():
        parts = model.explain(image, semantic)
        torch.testing.assert_close(parts["score"], model(image, semantic))
    assert model.expert_names == ["semantic0", "semantic1", "maniqa"] and parts["gate"].shape == (3, 3)
    bias = model.output_fc.bias
    recombined = (parts["gate"] * (parts["expert_score"] - bias)).sum(dim=1) + bias
    torch.testing.assert_close(recombined, parts["score"])
    concat = create_model("test_ma_agiqa", fusion="concat")
    assert concat.expert_names == []
    with torch.no_grad():
        concat_parts = concat.eval().explain(image, semantic)
        torch.testing.assert_close(concat_parts["score"], concat(image, semantic))
    assert "gate" not in concat_parts and concat_parts["patch_map"].shape == (3, *model.grid_size)


def level_features(semantic: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`semantic` (B, P, D) with 5 level probabilities appended per prompt, as an encoder with answers gives."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.softmax(torch.randn(*semantic.shape[:2], 5, generator=generator), dim=-1)
    return torch.cat([semantic, levels], dim=-1)


def test_level_expert_follows_the_afm_formula_beside_the_released_experts():
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", level_prompts=(0, 1), gate_activation="softmax").eval()
    x, semantic = tiny_inputs()
    features = level_features(semantic)
    sd = model.state_dict()
    with torch.no_grad():
        key = model.patch_scores(x)[0] * model.patch_scores(x)[1]
        key = key @ sd["fc16_16.weight"].T + sd["fc16_16.bias"]
        q1 = torch.relu(semantic[:, 0] @ sd["fc32_16_a2.0.weight"].T + sd["fc32_16_a2.0.bias"])
        q2 = torch.relu(semantic[:, 1] @ sd["fc32_16_b2.0.weight"].T + sd["fc32_16_b2.0.bias"])
        levels = torch.relu(features[:, :, 32:].flatten(1) @ sd["fc_levels.0.weight"].T + sd["fc_levels.0.bias"])
        gates = torch.softmax(torch.cat([q1, q2, levels, key], 1) @ sd["gating.weight"].T + sd["gating.bias"], 1)
        mixed = gates[:, 0:1] * q1 + gates[:, 1:2] * q2 + gates[:, 2:3] * levels + gates[:, 3:4] * key
        expected = (mixed @ sd["output_fc.weight"].T + sd["output_fc.bias"]).squeeze(1)
        torch.testing.assert_close(model(x, features), expected, atol=1e-5, rtol=1e-5)
        assert model.expert_names == ["semantic0", "semantic1", "levels", "maniqa"]
        assert model.explain(x, features)["gate"].shape == (3, 4)
    with pytest.raises(ValueError, match=r"\(B, P, 37\) \(semantic_dim \+ 5 level probabilities"):
        model(x, semantic)


def test_released_layout_has_no_level_expert():
    assert not any(key.startswith("fc_levels") for key in create_model("test_ma_agiqa").state_dict())
    only_levels = create_model("test_ma_agiqa", semantic_experts=(), level_prompts=(0,), use_maniqa=False)
    assert only_levels.expert_names == ["levels"]
    x, semantic = tiny_inputs()
    assert only_levels.eval()(None, level_features(semantic)).shape == (3,)


# --- Mutation-testing additions (docs/mutation.md): the AFM alone against the released formula computed in float64
# numpy from its own weights (REFERENCE.md: experts [q1, q2, key], gating Linear on their concatenation, raw gates as
# released, sigmoid as the paper says, or softmax; mixed = sum g_i expert_i; output_fc).


def _np(t: torch.Tensor):
    return t.detach().double().numpy()


def hand_afm(afm: AdaptiveFusion, visual, semantic, activation: str):
    import numpy as np

    sd = {k: _np(v) for k, v in afm.state_dict().items()}
    experts = []
    for name, index in zip(afm.semantic_expert_names, afm.config.semantic_experts):
        experts.append(np.maximum(_np(semantic[:, index]) @ sd[f"{name}.0.weight"].T + sd[f"{name}.0.bias"], 0))
    if afm.config.use_maniqa:
        experts.append(_np(visual) @ sd["fc16_16.weight"].T + sd["fc16_16.bias"])
    stacked = np.stack(experts, axis=1)  # (B, E, 16)
    logits = np.concatenate(experts, axis=1) @ sd["gating.weight"].T + sd["gating.bias"]
    gates = {"none": logits, "sigmoid": 1 / (1 + np.exp(-logits)),
             "softmax": np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)}[activation]
    mixed = (gates[:, :, None] * stacked).sum(axis=1)
    return mixed @ sd["output_fc.weight"].T + sd["output_fc.bias"], gates


def afm_inputs(batch=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, generator=generator), torch.randn(batch, 2, 32, generator=generator)


@pytest.mark.parametrize("activation", ["none", "sigmoid", "softmax"])
@pytest.mark.parametrize("experts", [dict(), dict(use_maniqa=False), dict(semantic_experts=(1,))])
def test_adaptive_fusion_equals_the_formula_in_float64(activation, experts):
    import numpy as np

    torch.manual_seed(0)
    config = MaAgiqaConfig(**{**_tiny_afm_kwargs(), "use_maniqa": True, **experts}, gate_activation=activation)
    afm = AdaptiveFusion(config).eval()
    visual, semantic = afm_inputs()
    expected, gates = hand_afm(afm, visual if config.use_maniqa else None, semantic, activation)
    with torch.no_grad():
        score = afm(visual if config.use_maniqa else None, semantic)
        explained = afm.explain_fusion(visual if config.use_maniqa else None, semantic)
    assert score.shape == (4,)
    np.testing.assert_allclose(_np(score), expected[:, 0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_np(explained["gate"]), gates, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_np(explained["score"]), expected[:, 0], atol=1e-5, rtol=1e-5)


def test_several_targets_widen_the_output_layer():
    import numpy as np

    torch.manual_seed(0)
    afm = AdaptiveFusion(MaAgiqaConfig(**dict(_tiny_afm_kwargs(), use_maniqa=True), targets=("quality", "align")))
    visual, semantic = afm_inputs()
    expected, _ = hand_afm(afm.eval(), visual, semantic, "none")
    with torch.no_grad():
        score = afm(visual, semantic)
    assert score.shape == (4, 2)
    np.testing.assert_allclose(_np(score), expected, atol=1e-5, rtol=1e-5)


def test_lmm_experts_are_linear_relu_dropout_as_released():
    afm = AdaptiveFusion(MaAgiqaConfig(**dict(_tiny_afm_kwargs(), use_maniqa=True), level_prompts=(0,)))
    for name in ("fc32_16_a2", "fc32_16_b2", "fc_levels"):
        layers = list(getattr(afm, name))
        assert [type(m) for m in layers] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout], name
        assert layers[2].p == 0.1
    assert isinstance(afm.fc16_16, torch.nn.Linear)


def test_semantic_feature_errors_say_what_is_expected():
    afm = AdaptiveFusion(MaAgiqaConfig(**_tiny_afm_kwargs()))
    _, semantic = afm_inputs()
    with pytest.raises(ValueError) as err:
        afm(None)
    assert str(err.value) == ("this MA-AGIQA variant needs semantic features: pass `semantic` of shape (B, P, D)")
    with pytest.raises(ValueError) as err:
        afm(None, semantic[..., :8])
    assert str(err.value) == "semantic features must be (B, P, 32), got (4, 2, 8)"
    with pytest.raises(ValueError) as err:
        afm(None, semantic[:, :1])
    assert str(err.value) == "semantic features hold 1 prompts; expert indices need 2"


@pytest.mark.parametrize("experts", [dict(use_maniqa=False), dict(use_maniqa=True, semantic_experts=())])
def test_autocast_is_switched_off_on_the_inputs_device(monkeypatch, experts):
    """`full_precision` must get a tensor of the inputs (its device names the autocast to switch off): given None it
    switches off CPU autocast only, and on a GPU the AFM would then run in bf16/fp16."""
    import agiqa.models.ma_agiqa as ma

    seen = []
    real = ma.full_precision

    def spy(x):
        seen.append(None if x is None else x.device)
        return real(x)

    monkeypatch.setattr(ma, "full_precision", spy)
    afm = AdaptiveFusion(MaAgiqaConfig(**{**_tiny_afm_kwargs(), **experts})).eval()
    visual, semantic = afm_inputs()
    visual = visual if afm.config.use_maniqa else None
    semantic = semantic if afm.config.semantic_experts else None
    with torch.no_grad():
        afm(visual, semantic)
        afm.explain_fusion(visual, semantic)
    assert len(seen) == 3 and seen == [torch.device("cpu")] * 3
