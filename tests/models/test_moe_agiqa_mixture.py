"""MoE-AGIQA's mixture head (gate, top-k, experts) and load-balancing loss against independent computations.

REFERENCE.md: gate = Linear(512, 4) + softmax; the top 3 of 4 experts; expert = Linear(512, 512), GELU,
Linear(512, 1); output = sum of the top-k gate * expert, weights NOT renormalised (renormalising is our option);
`proj` / `proj_prior` start at inchannels ** -0.5 * randn, `weight1` / `weight2` at zero. The head is recomputed here
in float64 numpy (exact erf GELU) from the released regressor's weights in `../shared/fixtures`, and the small
functions against numbers worked out by hand. Written for the mutation testing of docs/mutation.md.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import erf

from agiqa.models.moe_agiqa import (
    MoeAgiqaConfig,
    MoeAgiqaRegressor,
    mix_top_k,
    switch_balance_loss,
    tiny_moe_agiqa_kwargs,
)

FIXTURE = Path(__file__).resolve().parents[2] / "../shared/fixtures/moe_agiqa_regressor_official.safetensors"


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def hand_head(state: dict, pooled: np.ndarray, top_k: int, renormalize: bool = False):
    """Scores (N, T) and the dense gate matrix (N, E) of the released head, in float64."""
    logits = pooled @ state["gating_network.0.weight"].T + state["gating_network.0.bias"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    num_experts = probs.shape[1]
    scores, gates = [], np.zeros_like(probs)
    for i in range(len(pooled)):
        chosen = np.argsort(-probs[i], kind="stable")[:top_k]
        weights = probs[i, chosen] / (probs[i, chosen].sum() if renormalize else 1.0)
        total = 0.0
        for weight, e in zip(weights, chosen):
            layer = f"proj_experts.{e}.project"
            hidden = pooled[i] @ state[f"{layer}.0.weight"].T + state[f"{layer}.0.bias"]
            hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))  # exact GELU
            total = total + weight * (hidden @ state[f"{layer}.2.weight"].T + state[f"{layer}.2.bias"])
            gates[i, e] = weight
        scores.append(total)
    assert gates.shape[1] == num_experts
    return np.stack(scores), gates


@pytest.fixture(scope="module")
def released():
    """The released v2 regressor (IQARegression) with the fixture's weights, in eval mode."""
    if not FIXTURE.is_file():
        pytest.skip(f"the released regressor's weights are not at {FIXTURE.resolve()} (shared/fixtures)")
    tensors = load_file(FIXTURE)
    weights = {k[len("regressor."):]: v.float() for k, v in tensors.items() if k.startswith("regressor.")}
    regressor = MoeAgiqaRegressor(MoeAgiqaConfig()).eval()
    regressor.load_state_dict(weights, strict=True)
    inputs = tuple(tensors[f"input.{name}"].float() for name in ("x", "text_features", "vit_prior"))
    with torch.no_grad():  # the released inputs' pooled features, and 4 random ones
        pooled = torch.cat([regressor.forward_features(*inputs),
                            torch.randn(4, 512, generator=torch.Generator().manual_seed(0))])
    return regressor, {k: _np(v) for k, v in weights.items()}, pooled


@pytest.mark.parametrize("top_k, renormalize", [(3, False), (2, False), (3, True), (4, False)])
def test_released_head_equals_the_float64_mixture(released, top_k, renormalize):
    regressor, state, pooled = released
    expected, gates = hand_head(state, _np(pooled), top_k, renormalize)
    regressor.config.top_k, regressor.config.renormalize = top_k, renormalize
    try:
        with torch.no_grad():
            score = regressor.forward_head(pooled)
            parts = regressor.explain_head(pooled)
    finally:
        regressor.config.top_k, regressor.config.renormalize = 3, False
    assert score.shape == (8,)
    np.testing.assert_allclose(_np(score), expected[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(parts["gate"]), gates, rtol=1e-5, atol=1e-7)
    assert ((parts["gate"] > 0).sum(dim=1) == top_k).all()


def test_several_targets_share_the_gates():
    torch.manual_seed(0)
    regressor = MoeAgiqaRegressor(MoeAgiqaConfig(**tiny_moe_agiqa_kwargs(), targets=("quality", "alignment"))).eval()
    pooled = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    expected, _ = hand_head({k: _np(v) for k, v in regressor.state_dict().items()}, _np(pooled), top_k=3)
    with torch.no_grad():
        score = regressor.forward_head(pooled)
    assert score.shape == (5, 2)
    np.testing.assert_allclose(_np(score), expected, rtol=1e-5, atol=1e-6)


def test_mix_top_k_by_hand():
    weights = torch.tensor([[0.5, 0.2], [0.6, 0.3]])
    index = torch.tensor([[2, 0], [1, 2]])
    experts = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], [[4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]])
    # row 0: 0.5 * expert 2 + 0.2 * expert 0; row 1: 0.6 * expert 1 + 0.3 * expert 2
    expected = torch.tensor([[0.5 * 3 + 0.2 * 1, 0.5 * 30 + 0.2 * 10], [0.6 * 5 + 0.3 * 6, 0.6 * 50 + 0.3 * 60]])
    torch.testing.assert_close(mix_top_k(weights, index, experts), expected)


def test_switch_balance_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.6, 0.2, 0.1]])
    index = torch.tensor([[0, 1], [1, 2]])  # expert 3 is never chosen
    # slot shares 1/4, 2/4, 1/4, 0; mean probabilities 0.4, 0.4, 0.15, 0.05
    expected = 4 * (0.25 * 0.4 + 0.5 * 0.4 + 0.25 * 0.15 + 0.0 * 0.05)
    assert switch_balance_loss(probs, index).item() == pytest.approx(expected)  # 1.35
    even = torch.full((4, 4), 0.25)
    assert switch_balance_loss(even, torch.tensor([[0, 1], [2, 3], [0, 2], [1, 3]])).item() == pytest.approx(1.0)


def test_balance_loss_is_recorded_in_training_only():
    torch.manual_seed(0)
    regressor = MoeAgiqaRegressor(MoeAgiqaConfig(**tiny_moe_agiqa_kwargs(), balance_loss_weight=0.01))
    pooled = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    regressor.eval().forward_head(pooled)
    assert regressor.balance_loss is None
    regressor.train().forward_head(pooled)
    state = {k: _np(v) for k, v in regressor.state_dict().items()}
    logits = _np(pooled) @ state["gating_network.0.weight"].T + state["gating_network.0.bias"]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    chosen = np.argsort(-probs, axis=1)[:, :3]
    share = np.bincount(chosen.ravel(), minlength=4) / chosen.size
    assert regressor.balance_loss.item() == pytest.approx(4 * (share * probs.mean(axis=0)).sum(), rel=1e-5)


def test_released_initialisation():
    torch.manual_seed(0)
    regressor = MoeAgiqaRegressor(MoeAgiqaConfig())
    for name in ("proj", "proj_prior"):
        weight = getattr(regressor, name).detach()
        assert weight.shape == (768, 512)
        assert weight.std().item() == pytest.approx(768 ** -0.5, rel=0.01), name  # 393,216 N(0, 1/768) draws
        assert abs(weight.mean().item()) < 1e-3
    assert not regressor.weight1.any() and not regressor.weight2.any()
    assert regressor.weight1.shape == regressor.weight2.shape == (1, 512, 14, 14)


def test_forward_emits_no_warnings():
    torch.manual_seed(0)
    c = MoeAgiqaConfig(**tiny_moe_agiqa_kwargs())
    regressor = MoeAgiqaRegressor(c).eval()
    generator = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, c.feature_dim, 4, 4, generator=generator), torch.randn(2, 16, 32, generator=generator),
              torch.randn(2, 32, generator=generator))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")  # e.g. softmax without an explicit dim
        assert regressor(*inputs).shape == (2,)
