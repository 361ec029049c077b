"""MANIQA: official layout, quirks, persistence and numerics (tiny configs; the full model is only built, never run)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from agiqa.errors import AgiqaError
from agiqa.models import create_model
from agiqa.models.maniqa import (
    FUSED_CUDA_ATTENTION_MAX_HEAD_DIM,
    Maniqa,
    ManiqaConfig,
    ManiqaSwinBlock,
    ManiqaTABlock,
    ManiqaViTAttention,
    _tiny_maniqa_kwargs,
    load_official_checkpoint,
    matmul_attention,
    prefers_matmul_attention,
)

pytestmark = pytest.mark.timeout(120) if hasattr(pytest.mark, "timeout") else []

TINY = _tiny_maniqa_kwargs()


def tiny_model(seed: int = 0, **overrides) -> Maniqa:
    """Tiny MANIQA whose score head is not stuck at ReLU(0): outputs vary with the input."""
    torch.manual_seed(seed)
    model = create_model("test_maniqa", **overrides)
    with torch.no_grad():
        model.fc_score[3].bias.fill_(0.5)
    return model.eval()


def tiny_input(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, TINY["img_size"], TINY["img_size"], generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------------
# Official state-dict layout, written out by hand from REFERENCE.md (independent of the module, to catch drift).
# ---------------------------------------------------------------------------------------------------------------------


def official_maniqa_shapes() -> dict[str, tuple[int, ...]]:
    D, P, N, S1, S2, MLP, HEADS, WIN = 768, 785, 784, 768, 384, 768, 4, 4
    shapes: dict[str, tuple[int, ...]] = {
        "vit.cls_token": (1, 1, D),
        "vit.pos_embed": (1, P, D),
        "vit.patch_embed.proj.weight": (D, 3, 8, 8),
        "vit.patch_embed.proj.bias": (D,),
        "vit.norm.weight": (D,),
        "vit.norm.bias": (D,),
        "vit.head.weight": (1000, D),
        "vit.head.bias": (1000,),
        "conv1.weight": (S1, 4 * D, 1, 1),
        "conv1.bias": (S1,),
        "conv2.weight": (S2, S1, 1, 1),
        "conv2.bias": (S2,),
    }
    for i in range(12):
        p = f"vit.blocks.{i}."
        shapes.update({
            p + "norm1.weight": (D,), p + "norm1.bias": (D,),
            p + "attn.qkv.weight": (3 * D, D), p + "attn.qkv.bias": (3 * D,),
            p + "attn.proj.weight": (D, D), p + "attn.proj.bias": (D,),
            p + "norm2.weight": (D,), p + "norm2.bias": (D,),
            p + "mlp.fc1.weight": (4 * D, D), p + "mlp.fc1.bias": (4 * D,),
            p + "mlp.fc2.weight": (D, 4 * D), p + "mlp.fc2.bias": (D,),
        })
    for group in ("tablock1", "tablock2"):
        for i in range(2):
            for lin in ("c_q", "c_k", "c_v"):
                shapes[f"{group}.{i}.{lin}.weight"] = (N, N)
                shapes[f"{group}.{i}.{lin}.bias"] = (N,)
    for stage, dim in (("swintransformer1", S1), ("swintransformer2", S2)):
        shapes[f"{stage}.downsample.weight"] = (dim, dim, 3, 3)
        shapes[f"{stage}.downsample.bias"] = (dim,)
        for layer in range(2):
            lp = f"{stage}.layers.{layer}."
            shapes[lp + "conv.weight"] = (dim, dim, 3, 3)
            shapes[lp + "conv.bias"] = (dim,)
            for block in range(2):
                bp = f"{lp}blocks.{block}."
                shapes.update({
                    bp + "norm1.weight": (dim,), bp + "norm1.bias": (dim,),
                    bp + "attn.relative_position_bias_table": ((2 * WIN - 1) ** 2, HEADS),
                    bp + "attn.relative_position_index": (WIN * WIN, WIN * WIN),
                    bp + "attn.qkv.weight": (3 * dim, dim), bp + "attn.qkv.bias": (3 * dim,),
                    bp + "attn.proj.weight": (dim, dim), bp + "attn.proj.bias": (dim,),
                    bp + "norm2.weight": (dim,), bp + "norm2.bias": (dim,),
                    bp + "mlp.fc1.weight": (MLP, dim), bp + "mlp.fc1.bias": (MLP,),
                    bp + "mlp.fc2.weight": (dim, MLP), bp + "mlp.fc2.bias": (dim,),
                })
                if block == 1:  # shifted block only
                    shapes[bp + "attn_mask"] = ((28 // WIN) ** 2, WIN * WIN, WIN * WIN)
    for head in ("fc_score", "fc_weight"):
        shapes.update({f"{head}.0.weight": (S2, S2), f"{head}.0.bias": (S2,), f"{head}.3.weight": (1, S2),
                       f"{head}.3.bias": (1,)})
    return shapes


def _is_buffer(key: str) -> bool:
    return key.endswith(("relative_position_index", "attn_mask"))


def test_official_table_is_self_consistent():
    shapes = official_maniqa_shapes()
    assert len(shapes) == 316
    assert sum(math.prod(s) for k, s in shapes.items() if not _is_buffer(k)) == 135_747_530


def test_full_model_matches_official_layout():
    model = Maniqa()  # built only (about 2-4 s), never run
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_maniqa_shapes()
    assert sorted(set(own) ^ set(expected)) == []
    assert {k: s for k, s in own.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in model.parameters()) == 135_747_530
    state = model.state_dict()
    assert state["swintransformer1.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    assert model.config.num_patches == 784 and model.config.hooked_blocks == (6, 7, 8, 9)
    assert model.cpu_micro_batch_size() == 1  # a 224 px crop runs alone on CPU
    assert model.cpu_micro_batch_size(amx=True) == 5  # bf16 on AMX tiles: taller GEMMs


# ---------------------------------------------------------------------------------------------------------------------
# Forward paths
# ---------------------------------------------------------------------------------------------------------------------


def test_forward_shapes_and_finite():
    model = tiny_model()
    x = tiny_input(3)
    with torch.no_grad():
        score = model(x)
        feats = model.forward_features(x)
        tokens = model.forward_patch_tokens(x)
        s, w = model.patch_scores(x)
    n = model.config.num_patches
    assert score.shape == (3,) and feats.shape == (3, n) and tokens.shape == (3, n, model.config.head_dim)
    assert s.shape == w.shape == (3, n)
    assert torch.isfinite(score).all() and torch.isfinite(feats).all()
    assert (s >= 0).all() and ((w > 0) & (w < 1)).all()


def test_forward_paths_agree():
    model = tiny_model()
    x = tiny_input()
    with torch.no_grad():
        tokens = model.forward_patch_tokens(x)
        s, w = model.patch_scores(x)
        score = model(x)
        torch.testing.assert_close(model.forward_head(tokens), score, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head((s, w)), score, rtol=0, atol=0)
        torch.testing.assert_close((s * w).sum(1) / w.sum(1), score)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), model.forward_features(x))


def test_explain_maps_each_patch_score_times_weight_on_the_grid():
    model = tiny_model()
    x = tiny_input(2)
    with torch.no_grad():
        parts = model.explain(x)
        s, w = model.patch_scores(x)
        score = model(x)
    side = model.config.img_size // model.config.patch_size
    assert parts["patch_map"].shape == (2, side, side)
    torch.testing.assert_close(parts["score"], score)
    # Row-major patch order: patch (row r, column c) is token r * side + c.
    torch.testing.assert_close(parts["patch_map"][:, 1, 0], (s * w)[:, side])
    torch.testing.assert_close(parts["patch_map"].flatten(1).sum(1) / w.sum(1), score)


def test_eval_is_deterministic_and_batch_independent():
    model = tiny_model()
    x = tiny_input(4)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(4)])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a, rtol=1e-5, atol=1e-6)


def test_cpu_inference_runs_in_micro_batches(monkeypatch):
    import agiqa.models.maniqa as maniqa_module

    model = tiny_model()
    x = tiny_input(5)
    with torch.no_grad():
        whole = model(x)
    assert model.cpu_micro_batch_size() >= 5  # tiny models keep their batches
    monkeypatch.setattr(maniqa_module, "CPU_MICRO_BATCH_TOKENS", 2 * (model.config.num_patches + 1) + 1)
    assert model.cpu_micro_batch_size() == 2
    steps = []
    run_step = model._patch_tokens
    monkeypatch.setattr(model, "_patch_tokens", lambda chunk: steps.append(len(chunk)) or run_step(chunk))
    with torch.inference_mode():
        chunked = model(x)
    assert steps == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    steps.clear()
    model(x).sum().backward()  # with gradients: one step, as the optimiser sees it
    assert steps == [5]
    monkeypatch.setattr(maniqa_module, "CPU_MICRO_BATCH_TOKENS_AMX_BF16", 4 * (model.config.num_patches + 1))
    for flags, expected in (({"avx512_bf16"}, [2, 2, 1]), ({"avx512_bf16", "amx_bf16"}, [4, 1])):
        monkeypatch.setattr("agiqa.runtime.cpu_flags", lambda flags=flags: frozenset(flags))
        steps.clear()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
        assert steps == expected  # bf16 on AMX tiles: taller steps
    steps.clear()
    with torch.inference_mode():
        model(x)
    assert steps == [2, 2, 1]  # fp32 does not run on the tiles


@pytest.fixture()
def fresh_dynamo():
    """Compiled code of one test does not linger in dynamo's caches (nor count towards its recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_cpu_inference_traces_one_micro_batch_for_all_batch_sizes(monkeypatch, fresh_dynamo):
    import agiqa.models.maniqa as maniqa_module

    model = tiny_model()
    monkeypatch.setattr(maniqa_module, "CPU_MICRO_BATCH_TOKENS", model.config.num_patches + 1)  # 1 image per step
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(model, backend=recording_backend, dynamic=False)
    x = tiny_input(3)
    with torch.inference_mode():
        outputs = [compiled(x), compiled(x[:2]), compiled(x[:1])]
        expected = [model(x), model(x[:2]), model(x[:1])]
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref)

    def placeholders(graph):
        return [n for n in graph.graph.nodes if n.op == "placeholder"]

    backbone = [g for g in graphs if any("_vit_" in n.name for n in placeholders(g))]
    assert len(backbone) == 1  # traced once, for one image, and reused by every step of every batch
    data = [n for n in placeholders(backbone[0]) if "_parameters_" not in n.name and "_buffers_" not in n.name]
    size = model.config.img_size
    assert [tuple(n.meta["example_value"].shape) for n in data] == [(1, 3, size, size)]


def test_train_mode_uses_dropout():
    model = tiny_model().train()
    x = tiny_input()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.equal(a, b)


def test_input_is_checked():
    model = tiny_model()
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_normalize_is_half_half():
    model = tiny_model()
    x01 = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x01).flatten(), torch.tensor([-1.0, 0.0, 1.0]))


def test_config_validation():
    with pytest.raises(ValueError, match="hooked_blocks"):
        ManiqaConfig(hooked_blocks=(6, 12))
    with pytest.raises(ValueError, match="multiple"):
        ManiqaConfig(img_size=100)
    with pytest.raises(TypeError, match="bogus"):
        ManiqaConfig.from_dict({"bogus": 1})
    cfg = ManiqaConfig.from_dict({"hooked_blocks": [1, 2], "swin_depths": [2, 2]})
    assert cfg.hooked_blocks == (1, 2) and isinstance(cfg.swin_depths, tuple)


# ---------------------------------------------------------------------------------------------------------------------
# Official quirks and reference math
# ---------------------------------------------------------------------------------------------------------------------


def test_tab_transpose_then_reshape_quirk():
    torch.manual_seed(0)
    C, N = 3, 4
    tab = ManiqaTABlock(N, drop=0.0).eval()
    x = torch.randn(1, C, N)
    with torch.no_grad():
        q, k, v = tab.c_q(x)[0], tab.c_k(x)[0], tab.c_v(x)[0]
        attn = torch.softmax(q @ k.T / math.sqrt(N), dim=-1)  # (C, C): attention across channels
        o = attn @ v  # (C, N)
        expected = torch.empty(C, N)
        for c in range(C):
            for n in range(N):
                flat = c * N + n  # row-major position in the (N, C) transposed tensor, read back as (C, N)
                expected[c, n] = o[flat % C, flat // C]
        expected = expected + x[0]
        out = tab(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, o + x[0], atol=1e-3)  # the quirk matters: it is not a plain residual attention


def _naive_swin_block(block: ManiqaSwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Plain-softmax window attention (the official formulation) to check the SDPA path."""
    H, W = block.grid
    B, L, C = x.shape
    ws, shift, heads = block.window_size, block.shift_size, block.attn.num_heads
    h = block.norm1(x).view(B, H, W, C)
    if shift:
        h = torch.roll(h, (-shift, -shift), (1, 2))
    win = h.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
    qkv = block.attn.qkv(win).reshape(win.shape[0], ws * ws, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (C // heads) ** -0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    table = block.attn.relative_position_bias_table
    idx = block.attn.relative_position_index.view(-1)
    attn = attn + table[idx].view(ws * ws, ws * ws, -1).permute(2, 0, 1).unsqueeze(0)
    if block.attn_mask is not None:
        nw = block.attn_mask.shape[0]
        attn = attn.view(-1, nw, heads, ws * ws, ws * ws) + block.attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, ws * ws, ws * ws)
    out = block.attn.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, ws * ws, C))
    out = out.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out.reshape(B, L, C)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_plain_softmax_reference(shift):
    torch.manual_seed(0)
    block = ManiqaSwinBlock(dim=16, grid=(8, 8), num_heads=2, window_size=4, shift_size=shift, mlp_dim=24).eval()
    x = torch.randn(2, 64, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _naive_swin_block(block, x), rtol=1e-5, atol=1e-5)
    assert (block.attn_mask is not None) == bool(shift)
    if shift:
        assert block.attn_mask.shape == (4, 16, 16)
        assert set(block.attn_mask.unique().tolist()) == {0.0, -100.0}
        assert torch.all(block.attn_mask[0] == 0)  # the top-left window holds a single region


def test_swin_block_shrinks_window_on_small_grid():
    block = ManiqaSwinBlock(dim=8, grid=(2, 2), num_heads=2, window_size=4, shift_size=2, mlp_dim=8)
    assert block.window_size == 2 and block.shift_size == 0 and block.attn_mask is None


def test_vit_blocks_after_last_hook_are_skipped_but_kept():
    model = tiny_model()
    calls = {}
    for i, block in enumerate(model.vit.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
    for name in ("norm", "head"):
        getattr(model.vit, name).register_forward_hook(lambda m, a, o, n=name: calls.__setitem__(n, 1))
    with torch.no_grad():
        model(tiny_input())
    assert calls == {0: 1, 1: 1, 2: 1}  # hooked blocks (0, 1, 2) only: block 3, norm and head never run
    keys = model.state_dict()
    assert "vit.blocks.3.mlp.fc2.weight" in keys and "vit.norm.weight" in keys and "vit.head.weight" in keys


def test_backward_reaches_every_used_parameter():
    model = tiny_model().train()
    model(tiny_input()).sum().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    unused = {
        n for n, _ in model.named_parameters()
        if n.startswith(("vit.blocks.3.", "vit.norm.", "vit.head.")) or ".downsample." in n
    }
    assert no_grad == unused
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if p.grad is not None)


def test_bf16_autocast_close_to_fp32():
    model = tiny_model()
    x = tiny_input(4)
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert (low.float() - ref).abs().max() < 1e-2


def test_attention_path_follows_precision_device_and_head_width(monkeypatch):
    monkeypatch.setattr("agiqa.runtime.cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))  # Zen 4
    x32 = torch.zeros(2, 3)
    assert not prefers_matmul_attention(x32, head_dim=64)
    assert prefers_matmul_attention(x32.bfloat16(), head_dim=64) and prefers_matmul_attention(x32.half(), head_dim=784)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert prefers_matmul_attention(x32, head_dim=64)
    assert not prefers_matmul_attention(torch.zeros(2, 3, dtype=torch.bfloat16, device="meta"), head_dim=784)


def test_amx_cpus_take_the_fused_kernel_for_narrow_bf16_heads(monkeypatch):
    monkeypatch.setattr("agiqa.runtime.cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    x16 = torch.zeros(2, 3, dtype=torch.bfloat16)
    assert not prefers_matmul_attention(x16, head_dim=64)  # ViT-B heads
    assert prefers_matmul_attention(x16, head_dim=128) and prefers_matmul_attention(x16, head_dim=784)  # TAB
    assert prefers_matmul_attention(x16.half(), head_dim=64)  # AMX-BF16 has no fp16 tiles


def test_the_fused_amx_path_gives_the_matmul_scores(monkeypatch):
    """Both attention paths compute the same bf16 scores (within bf16 rounding), whichever a CPU takes."""
    model, x = tiny_model(), tiny_input(4)
    scores = {}
    for flags in ({"avx512_bf16"}, {"avx512_bf16", "amx_bf16"}):
        monkeypatch.setattr("agiqa.runtime.cpu_flags", lambda flags=flags: frozenset(flags))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            scores[len(flags)] = model(x)
    assert not torch.equal(scores[1], scores[2])  # the two paths did run
    assert (scores[1] - scores[2]).abs().max() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attention_path_only_for_heads_wider_than_the_fused_kernels():
    x = torch.zeros(2, 3, device="cuda")
    wide = FUSED_CUDA_ATTENTION_MAX_HEAD_DIM + 1
    assert not prefers_matmul_attention(x, head_dim=wide)  # fp32: SDPA
    assert not prefers_matmul_attention(x.bfloat16(), head_dim=64)  # ViT heads: flash / cuDNN
    assert prefers_matmul_attention(x.bfloat16(), head_dim=wide)
    with torch.autocast("cuda", dtype=torch.float16):
        assert prefers_matmul_attention(x, head_dim=wide)
    q, k, v = (torch.randn(2, 96, 784, device="cuda") for _ in range(3))
    low = matmul_attention(q.bfloat16(), k, v).float()
    assert (low - F.scaled_dot_product_attention(q, k, v)).abs().max() < 5e-2


def test_matmul_attention_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 7, 5, generator=g) for _ in range(3))
    torch.testing.assert_close(matmul_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    low = matmul_attention(q.bfloat16(), k, v)  # k, v follow q's dtype
    assert low.dtype == torch.bfloat16
    assert (low.float() - F.scaled_dot_product_attention(q, k, v)).abs().max() < 5e-2


def test_vit_attention_takes_the_matmul_path_only_in_low_precision_on_cpu(monkeypatch):
    import agiqa.models.maniqa as maniqa_module
    from timm.layers import Attention

    monkeypatch.setattr("agiqa.runtime.cpu_flags", lambda: frozenset({"avx512_bf16"}))  # a CPU without AMX
    torch.manual_seed(0)
    ours = ManiqaViTAttention(16, num_heads=2, qkv_bias=True).eval()
    timm_attention = Attention(16, num_heads=2, qkv_bias=True).eval()
    timm_attention.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 16)
    calls = []
    monkeypatch.setattr(maniqa_module, "matmul_attention",
                        lambda *a: calls.append(1) or matmul_attention(*a))
    with torch.inference_mode():
        assert torch.equal(ours(x), timm_attention(x)) and not calls  # fp32: timm's own fused path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, ref_low = ours(x), timm_attention(x)
    assert calls == [1]
    torch.testing.assert_close(low.float(), ref_low.float(), rtol=0, atol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours.train()(x)
    assert calls == [1]  # training (attention dropout) stays on timm's path


def test_maniqa_vit_uses_our_attention_with_timm_keys():
    model = tiny_model()
    assert all(type(block.attn) is ManiqaViTAttention for block in model.vit.blocks)
    assert "vit.blocks.0.attn.qkv.weight" in model.state_dict()


def test_scores_stay_fp32_under_bf16_autocast():
    # bf16 scores would be rounded to 8 mantissa bits, tying nearby images; the heads run in fp32 instead.
    model = tiny_model()
    with torch.no_grad():
        model.fc_score[3].bias.fill_(4.0)  # scores near 4, where bf16 steps are 1/32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model(tiny_input(32))
        features = model.forward_features(tiny_input(2))
    assert scores.dtype == features.dtype == torch.float32
    assert scores.unique().numel() == 32


# ---------------------------------------------------------------------------------------------------------------------
# Persistence and official checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    x = tiny_input()
    loaded = Maniqa.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    via_factory = create_model("test_maniqa", pretrained=str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(via_factory(x), model(x))


def test_create_model_from_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model(seed=3)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = create_model("test_maniqa", pretrained=str(tmp_path / "w.safetensors")).eval()
    x = tiny_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _official_style_file(tmp_path, model, extra: dict | None = None, name="ckpt.pt"):
    """A checkpoint laid out like the official releases after `nn.DataParallel`: `module.` keys in a wrapper."""
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update(extra or {})
    path = tmp_path / name
    torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def test_official_checkpoint_loads_strictly(tmp_path, caplog):
    reference = tiny_model(seed=5)
    extra = {"module.gating.weight": torch.zeros(3, 48), "module.output_fc.bias": torch.zeros(1)}  # MA-AGIQA-only
    path = _official_style_file(tmp_path, reference, extra)
    x = tiny_input()
    with caplog.at_level(logging.INFO, logger="agiqa.models.maniqa"):
        loaded = load_official_checkpoint(path, **TINY)
    assert "gating.weight" in caplog.text and "output_fc.bias" in caplog.text
    via_factory = create_model("test_maniqa", pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
        assert torch.equal(via_factory(x), reference(x))


def test_official_checkpoint_shape_error_names_key(tmp_path):
    reference = tiny_model()
    state = reference.state_dict()
    state["conv1.weight"] = torch.zeros(5, 5, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"shape mismatches: conv1\.weight"):
        load_official_checkpoint(path, **TINY)


def test_official_checkpoint_unexpected_and_missing_keys(tmp_path):
    reference = tiny_model()
    state = dict(reference.state_dict())
    state["mystery.weight"] = torch.zeros(1)
    del state["fc_weight.3.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError) as err:
        create_model("test_maniqa", pretrained=str(path))
    assert "unexpected keys: mystery.weight" in str(err.value)
    assert "missing keys: fc_weight.3.bias" in str(err.value)


def test_checkpoint_file_must_be_weights_only(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module: refused by weights_only=True
    with pytest.raises(AgiqaError, match="refused to load"):
        load_official_checkpoint(path, **TINY)
