"""Multi-target MA-AGIQA and MoE-AGIQA: one output per target from the shared trunk; one target stays as released."""
from __future__ import annotations

import hashlib

import pytest
import torch

from agiqa.models import create_model
from agiqa.models._factory import explanation_columns, model_targets, score_columns

TARGETS = ("quality", "alignment")

# sha256 of "key:shape" lines of the seeded tiny models' state dicts, taken at e8e2e1e (before multi-target heads).
SINGLE_TARGET_LAYOUTS = {
    ("test_ma_agiqa", "moe"): (230, "94d5d29d2265eb21"),
    ("test_ma_agiqa", "concat"): (230, "1110cf6c032ddad3"),
    ("test_moe_agiqa", None): (207, "42a01ad6cc82ce8e"),
}


def build(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, **overrides).eval()


def layout(model) -> tuple[int, str]:
    state = model.state_dict()
    text = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in state.items())
    return len(state), hashlib.sha256(text.encode()).hexdigest()[:16]


def ma_inputs(batch: int = 3) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.randn(batch, 3, 32, 32, generator=generator),
            "semantic": torch.randn(batch, 2, 32, generator=generator)}


def moe_inputs(batch: int = 3, crops: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"crops": torch.rand(batch, crops, 3, 32, 32, generator=generator),
            "prompt_image": torch.randn(batch, 3, 32, 32, generator=generator),
            "input_ids": torch.randint(0, 64, (batch, 16), generator=generator),
            "attention_mask": torch.ones(batch, 16, dtype=torch.long)}


@pytest.mark.parametrize("name, fusion", list(SINGLE_TARGET_LAYOUTS))
def test_one_target_keeps_the_state_dict_keys_and_shapes(name, fusion):
    model = build(name, **({"fusion": fusion} if fusion else {}))
    assert model.config.targets == ("quality",)
    assert layout(model) == SINGLE_TARGET_LAYOUTS[(name, fusion)]


@pytest.mark.parametrize("name, fusion", list(SINGLE_TARGET_LAYOUTS))
def test_several_targets_widen_only_the_final_regression_layer(name, fusion):
    options = {"fusion": fusion} if fusion else {}
    single, multi = build(name, **options).state_dict(), build(name, targets=TARGETS, **options).state_dict()
    assert list(single) == list(multi)
    widened = {key for key in single if single[key].shape != multi[key].shape}
    assert widened and all(multi[key].shape[0] == 2 and single[key].shape[0] == 1 for key in widened)
    assert widened <= {"output_fc.weight", "output_fc.bias", "concat_head.1.weight", "concat_head.1.bias"} | {
        f"regressor.proj_experts.{i}.project.2.{kind}" for i in range(4) for kind in ("weight", "bias")}


@pytest.mark.parametrize("fusion", ["moe", "concat"])
def test_ma_agiqa_gives_one_column_per_target_and_explains_each(fusion):
    model = build("test_ma_agiqa", targets=TARGETS, fusion=fusion)
    inputs = ma_inputs()
    with torch.no_grad():
        scores = model(inputs["image"], inputs["semantic"])
        parts = model.explain(inputs["image"], inputs["semantic"])
    assert scores.shape == (3, 2)
    torch.testing.assert_close(parts["score"], scores)
    if fusion == "moe":
        assert parts["expert_score"].shape == (3, 3, 2)
        bias = model.output_fc.bias
        recombined = (parts["gate"].unsqueeze(-1) * (parts["expert_score"] - bias)).sum(dim=1) + bias
        torch.testing.assert_close(recombined, scores)


def test_moe_agiqa_gives_one_column_per_target_with_shared_gates():
    model = build("test_moe_agiqa", targets=TARGETS)
    inputs = moe_inputs(crops=1)
    with torch.no_grad():
        scores = model(**inputs)
        parts = model.explain(**inputs)
    assert scores.shape == (3, 2) and parts["gate"].shape == (3, 4) and parts["expert_score"].shape == (3, 4, 2)
    torch.testing.assert_close(parts["score"], scores)
    torch.testing.assert_close((parts["gate"].unsqueeze(-1) * parts["expert_score"]).sum(dim=1), scores)


@pytest.mark.parametrize("name", ["test_ma_agiqa", "test_moe_agiqa"])
def test_save_and_load_keep_the_targets_and_the_scores(name, tmp_path):
    model = build(name, targets=TARGETS)
    model.save_pretrained(tmp_path / "m")
    again = create_model(name, pretrained=str(tmp_path / "m")).eval()
    assert again.config.targets == TARGETS and model_targets(again) == list(TARGETS)
    inputs = ma_inputs() if name == "test_ma_agiqa" else moe_inputs()
    with torch.no_grad():
        assert torch.equal(again(*inputs.values()), model(*inputs.values()))


def test_explanation_columns_name_every_target():
    model = build("test_ma_agiqa", targets=TARGETS, semantic_experts=())
    inputs = ma_inputs()
    with torch.no_grad():
        columns = explanation_columns(model, inputs, ["maniqa"])
        scores = model(inputs["image"])
    assert list(columns) == ["score", "score_quality", "score_alignment", "gate_maniqa", "expert_maniqa_quality",
                             "expert_maniqa_alignment"]
    torch.testing.assert_close(columns["score"], scores[:, 0])
    torch.testing.assert_close(columns["score_alignment"], scores[:, 1])
    assert list(score_columns(scores[:, 0], ["quality"])) == ["score"]


@pytest.mark.parametrize("targets", [(), ("quality", "quality"), ("quality", "")])
def test_bad_targets_are_refused(targets):
    with pytest.raises(ValueError, match="targets"):
        create_model("test_ma_agiqa", targets=targets)
