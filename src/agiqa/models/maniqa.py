"""MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment.

Paper: Yang et al., CVPR-W 2022, https://arxiv.org/abs/2204.08958 — official code: https://github.com/IIGROUP/MANIQA
(behaviour matched against commit f573d86; the code here is our own).

Pipeline for one 224 x 224 crop (default config)::

    ViT-B/8 blocks 6..9 (CLS dropped, concatenated)  (B, 784, 3072)
    -> 2 x TAB over the 784 patch axis  -> conv1 1x1 3072->768 -> Swin stage (768)
    -> 2 x TAB                           -> conv2 1x1 768->384  -> Swin stage (384)
    -> per patch: score = fc_score(t) >= 0, weight = fc_weight(t) in (0, 1)
    -> image score = sum(score * weight) / sum(weight)

The parameter names and shapes equal the official state dict (316 keys, 135,747,530 parameters) so official
checkpoints load strictly after :func:`checkpoint_filter_fn`. Only the ViT blocks up to the last hooked one are
executed; the later blocks, ``vit.norm`` and ``vit.head`` are kept (unused) so those checkpoints still load.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, DropPath, Mlp, trunc_normal_
from torch import nn

from agiqa.models._builder import WeightsNotFoundError, build_model_with_cfg, load_pretrained
from agiqa.models._config import ModelConfig, check_hooked_vit
from agiqa.models._hub import AgiqaHubMixin
from agiqa.models._pretrained import PretrainedCfg
from agiqa.models._registry import register_model
from agiqa.runtime import cpu_has_amx

__all__ = [
    "Maniqa",
    "ManiqaConfig",
    "ManiqaTABlock",
    "ManiqaViTAttention",
    "ManiqaSwinBlock",
    "ManiqaSwinLayer",
    "ManiqaSwinStage",
    "ManiqaWindowAttention",
    "checkpoint_filter_fn",
    "matmul_attention",
    "full_precision",
    "prefers_matmul_attention",
    "CPU_MICRO_BATCH_TOKENS",
    "CPU_MICRO_BATCH_TOKENS_AMX_BF16",
    "FUSED_CUDA_ATTENTION_MAX_HEAD_DIM",
    "FUSED_AMX_ATTENTION_MAX_HEAD_DIM",
    "load_official_checkpoint",
    "MA_AGIQA_ONLY_MODULES",
]

_logger = logging.getLogger(__name__)

# Top-level modules of the official MA-AGIQA model (wangpuyi/MA-AGIQA models/MA_AGIQA.py) that plain MANIQA lacks.
# Its first 316 keys are MANIQA's, so an MA-AGIQA checkpoint loads into `Maniqa` once these are dropped.
MA_AGIQA_ONLY_MODULES = (
    "fc39_784",
    "encoder_layer",
    "fc_output",
    "fc4096_784_a",
    "fc4096_784_b",
    "quality",
    "fc784x3_1",
    "fc4096_1024_a",
    "fc4096_1024_b",
    "fc784_784",
    "fc4096_784_a2",
    "fc4096_784_b2",
    "gating",
    "output_fc",
)


# CPU inference runs the backbone in micro-batches of at most this many ViT tokens (see Maniqa.cpu_micro_batch_size).
CPU_MICRO_BATCH_TOKENS = 1024
# ... and of this many in bf16 on an AMX CPU, whose tile GEMMs gain more from taller matrices than the cache loses.
CPU_MICRO_BATCH_TOKENS_AMX_BF16 = 4096

# Widest attention head that SDPA's fused CUDA kernels (flash, cuDNN) take; wider heads use the math fallback.
FUSED_CUDA_ATTENTION_MAX_HEAD_DIM = 256

# Widest head for which SDPA's fused CPU kernel beats matmul_attention in bf16 on an AMX CPU (1 Xeon core, 785
# tokens: 64-wide heads 1.19x faster fused; 128-wide 0.80x, 784-wide 0.78x).
FUSED_AMX_ATTENTION_MAX_HEAD_DIM = 64

# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


class ManiqaTABlock(nn.Module):
    """Transposed attention block: attention across channels, with the patch axis as the feature axis.

    Matches IIGROUP/MANIQA models/maniqa.py@f573d86 ``TABlock``, including its layout quirk: the ``(B, C, N)``
    attention output is transposed to ``(B, N, C)`` and then *reshaped* (not transposed back) to ``(B, C, N)``,
    which interleaves channels and patches. Trained weights depend on it, so it is reproduced.

    Args:
        dim: length N of the patch axis (784 for 28 x 28 patches); q/k/v are ``Linear(dim, dim)``.
        drop: dropout on the attention output before the residual add.

    Shapes: ``(B, C, N) -> (B, C, N)``.
    """

    def __init__(self, dim: int, drop: float = 0.1):
        super().__init__()
        self.dim = dim
        self.c_q = nn.Linear(dim, dim)
        self.c_k = nn.Linear(dim, dim)
        self.c_v = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, N = x.shape
        # Three GEMMs with contiguous outputs: measured as fast as one fused GEMM on (C, 3N) plus the copies that
        # the strided q/k/v slices of the fused output would need.
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        # softmax(q k^T / sqrt(N)) v: a single-head attention over C "tokens" of size N; SDPA's default scale is N^-0.5.
        if prefers_matmul_attention(q, head_dim=N):
            out = matmul_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, C, N)  # official quirk, see class docstring
        return x + self.proj_drop(out)


def prefers_matmul_attention(x: torch.Tensor, head_dim: int) -> bool:
    """True when attention on ``x`` with ``head_dim``-wide heads is faster as :func:`matmul_attention` than as SDPA:
    in bf16/fp16 (native or under autocast) on CPU (in bf16 with AMX: for heads wider than
    :data:`FUSED_AMX_ATTENTION_MAX_HEAD_DIM`; else at any width), and on CUDA for heads wider than
    :data:`FUSED_CUDA_ATTENTION_MAX_HEAD_DIM`.

    Without AMX, PyTorch's fused CPU attention kernel is slow (~150 GFLOP/s for the ViT's 64-wide heads, ~190 for the
    TAB's one 784-wide head, against a ~410 GFLOP/s bf16 matmul peak on 2 Zen 4 cores); :func:`matmul_attention`
    runs the TAB at ~330 GFLOP/s and MANIQA ~3 % faster with it in the ViT too. With AMX the fused kernel's GEMMs run
    on the tiles and its exponentials are cheaper than a separate softmax, which wins where the softmax dominates
    (64-wide heads: bf16 MANIQA 12 % faster on 2 Xeon cores). On CUDA the fused kernels take heads up to 256 wide;
    for the TAB's 784-wide head SDPA falls back to its math path, which upcasts bf16/fp16 to fp32 and runs without
    tensor cores (H100: the TABs took 60 % of a bf16 MANIQA forward). In fp32 SDPA is kept everywhere.
    """
    device = x.device.type
    if device not in ("cpu", "cuda"):
        return False
    dtype = compute_dtype(x)
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    if device == "cuda":
        return head_dim > FUSED_CUDA_ATTENTION_MAX_HEAD_DIM
    return not (head_dim <= FUSED_AMX_ATTENTION_MAX_HEAD_DIM and runs_on_amx_tiles(x))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's where it is on for ``x``'s device, else ``x``'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def runs_on_amx_tiles(x: torch.Tensor) -> bool:
    """True when matmuls on ``x`` run on AMX tiles: bf16 on a CPU with AMX."""
    return x.device.type == "cpu" and compute_dtype(x) == torch.bfloat16 and cpu_has_amx()


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for ``(batch, tokens, d)`` inputs as two batched GEMMs around a softmax, all in
    ``q``'s dtype (see :func:`prefers_matmul_attention`)."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        logits = torch.baddbmm(q.new_empty(1, 1, 1), q, k.transpose(1, 2), beta=0.0, alpha=q.shape[-1] ** -0.5)
        return torch.bmm(torch.softmax(logits, dim=-1), v)


class ManiqaViTAttention(Attention):
    """timm's ViT attention (same parameters and state-dict keys) that uses :func:`matmul_attention` where
    :func:`prefers_matmul_attention` says so; everything else goes to timm's own forward."""

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        plain = attn_mask is None and not is_causal and self.gate is None and not self.training
        if not (plain and prefers_matmul_attention(x, self.head_dim)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        out = matmul_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
        out = out.view(B, self.num_heads, N, self.head_dim).transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))


def full_precision(x: torch.Tensor | None):
    """Autocast switched off for ``x``'s device (CPU for None): score heads run in fp32 under bf16/fp16 autocast.

    They cost next to nothing, and bf16 outputs (8 mantissa bits: steps of 0.03 near a MOS of 4) would tie many
    nearby scores and distort rank metrics such as SRCC.
    """
    return torch.autocast(x.device.type if x is not None else "cpu", enabled=False)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * nW, window_size**2, C)``, windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window_size**2, C) -> (B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(ws*ws, ws*ws)`` int64 index into a ``((2ws-1)^2, heads)`` bias table (Swin's layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, mask_value: float) -> torch.Tensor:
    """``(nW, ws*ws, ws*ws)`` additive mask for shifted windows: ``mask_value`` between tokens of different regions."""
    region = torch.zeros(1, height, width, 1)
    count = 0
    for hs in (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None)):
        for ws in (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = count
            count += 1
    ids = window_partition(region, window_size).squeeze(-1)  # (nW, ws*ws)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(float(mask_value)), torch.tensor(0.0))


class ManiqaWindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias, via fused SDPA.

    Matches IIGROUP/MANIQA models/swin.py@f573d86 ``WindowAttention`` (qkv bias, scale head_dim^-0.5, table
    initialised with trunc_normal std 0.02). Shapes: ``(B * nW, ws*ws, C) -> (B * nW, ws*ws, C)``.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)  # (heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, n, n)
        if mask is not None:
            n_windows = mask.shape[0]
            bias = bias + mask.unsqueeze(1)  # (nW, heads, n, n)
            bias = bias.unsqueeze(0).expand(B_ // n_windows, -1, -1, -1, -1).reshape(B_, self.num_heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(B_, N, C))


class ManiqaSwinBlock(nn.Module):
    """Swin block on a fixed ``grid`` (no patch merging); optional cyclic shift with a registered ``attn_mask``.

    Matches IIGROUP/MANIQA models/swin.py@f573d86 ``SwinBlock``: if the grid is not larger than the window, the
    window shrinks to the grid and the shift is disabled. The ``attn_mask`` buffer exists only in shifted blocks
    (as in official checkpoints). Shapes: ``(B, H*W, C) -> (B, H*W, C)``.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        num_heads: int,
        window_size: int = 4,
        shift_size: int = 0,
        mlp_dim: int = 768,
        drop_path: float = 0.0,
        mask_value: float = -100.0,
    ):
        super().__init__()
        self.dim = dim
        self.grid = tuple(grid)
        if min(self.grid) <= window_size:
            shift_size, window_size = 0, min(self.grid)
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} for window {window_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ManiqaWindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU)
        mask = shifted_window_mask(*self.grid, window_size, shift_size, mask_value) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.grid
        B, L, C = x.shape
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        x = self.attn(window_partition(x, self.window_size), mask=self.attn_mask)
        x = window_reverse(x, self.window_size, H, W)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ManiqaSwinLayer(nn.Module):
    """Swin blocks (alternately unshifted / shifted by window//2) then ``relu(conv3x3(x))`` on the grid.

    Matches IIGROUP/MANIQA models/swin.py@f573d86 ``BasicLayer`` (no downsampling). Shapes: ``(B, H*W, C)``.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_dim: int,
        drop_path: tuple[float, ...],
        mask_value: float = -100.0,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            ManiqaSwinBlock(
                dim,
                grid,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_dim=mlp_dim,
                drop_path=drop_path[i],
                mask_value=mask_value,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        B, L, C = x.shape
        H, W = self.grid
        # (B, H, W, C) permuted to NCHW *is* channels-last memory: the conv needs no layout copy in or out.
        x = F.relu(self.conv(x.view(B, H, W, C).permute(0, 3, 1, 2)))
        return x.permute(0, 2, 3, 1).reshape(B, L, C)


class ManiqaSwinStage(nn.Module):
    """Scale Swin Transformer Block (SSTB): input dropout, then ``x = scale * layer(x) + x`` per layer.

    Matches IIGROUP/MANIQA models/swin.py@f573d86 ``SwinTransformer``. ``downsample`` is never called there either;
    it is kept only so official checkpoints load strictly. Shapes: ``(B, C, H, W) -> (B, H*W, C)`` tokens.
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        depths: tuple[int, ...] = (2, 2),
        num_heads: tuple[int, ...] = (4, 4),
        window_size: int = 4,
        mlp_dim: int = 768,
        drop: float = 0.1,
        drop_path: float = 0.1,
        scale: float = 0.8,
        mask_value: float = -100.0,
    ):
        super().__init__()
        self.scale = scale
        self.grid = tuple(grid)
        self.dropout = nn.Dropout(drop)
        self.downsample = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)  # unused, present in checkpoints
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                ManiqaSwinLayer(
                    dim, grid, depth, heads, window_size, mlp_dim, tuple(rates[start : start + depth]), mask_value
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).flatten(2).transpose(1, 2)  # (B, H*W, C)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ManiqaConfig(ModelConfig):
    """Hyper-parameters of :class:`Maniqa`; the defaults give the official model (IIGROUP/MANIQA, 224 px, ViT-B/8).

    Args:
        img_size (`int`, defaults to 224): input height = width in pixels; fixed (TAB and Swin masks depend on it).
        patch_size (`int`, defaults to 8): ViT patch size; ``(img_size // patch_size) ** 2`` patch tokens.
        embed_dim (`int`, defaults to 768): ViT width.
        vit_depth (`int`, defaults to 12): number of ViT blocks (all kept in the state dict).
        vit_num_heads (`int`, defaults to 12): ViT attention heads.
        vit_mlp_ratio (`float`, defaults to 4.0): ViT MLP hidden ratio.
        vit_num_classes (`int`, defaults to 1000): size of the unused ``vit.head`` (kept for official checkpoints).
        hooked_blocks (`tuple[int, ...]`, defaults to (6, 7, 8, 9)): 0-indexed ViT blocks whose outputs are used.
        tab_count (`int`, defaults to 2): TABs before each Swin stage.
        swin_embed_dim (`int`, defaults to 768): width of the first Swin stage (``conv1`` output); the second stage
            and the heads use ``swin_embed_dim // 2``.
        swin_depths / swin_num_heads (`tuple[int, ...]`, defaults to (2, 2) / (4, 4)): blocks and heads per layer.
        window_size (`int`, defaults to 4): Swin window (second block of each layer shifted by ``window_size // 2``).
        swin_mlp_dim (`int`, defaults to 768): Swin MLP hidden width (the same in both stages, as official).
        residual_scale (`float`, defaults to 0.8): ``x = residual_scale * layer(x) + x`` in Swin stages.
        drop (`float`, defaults to 0.1): dropout in TABs, at Swin stage inputs and in the heads.
        drop_path (`float`, defaults to 0.1): max stochastic-depth rate per Swin stage (linspace over its blocks).
        mask_value (`float`, defaults to -100.0): additive attention mask between shifted-window regions.
        num_outputs (`int`, defaults to 1): outputs of ``fc_score`` / ``fc_weight``.
        backbone_name (`str`): timm architecture of the ViT.
        backbone_pretrained (`bool`, defaults to False): load ImageNet ViT weights via timm (needs the network).
        backbone_pretrained_tag (`str`): timm ``arch.tag`` of those weights (augreg in21k -> in1k, as official).
        norm_mean / norm_std (`tuple[float, float, float]`, defaults to 0.5): input normalisation of RGB in [0, 1].
    """

    img_size: int = 224
    patch_size: int = 8
    embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    vit_mlp_ratio: float = 4.0
    vit_num_classes: int = 1000
    hooked_blocks: tuple[int, ...] = (6, 7, 8, 9)
    tab_count: int = 2
    swin_embed_dim: int = 768
    swin_depths: tuple[int, ...] = (2, 2)
    swin_num_heads: tuple[int, ...] = (4, 4)
    window_size: int = 4
    swin_mlp_dim: int = 768
    residual_scale: float = 0.8
    drop: float = 0.1
    drop_path: float = 0.1
    mask_value: float = -100.0
    num_outputs: int = 1
    backbone_name: str = "vit_base_patch8_224"
    backbone_pretrained: bool = False
    backbone_pretrained_tag: str = "vit_base_patch8_224.augreg_in21k_ft_in1k"
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_hooked_vit(self.img_size, self.patch_size, self.hooked_blocks, self.vit_depth)
        if len(self.swin_depths) != len(self.swin_num_heads):
            raise ValueError("swin_depths and swin_num_heads must have the same length")

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def feature_dim(self) -> int:
        """Channels after concatenating the hooked ViT blocks (3072 by default)."""
        return self.embed_dim * len(self.hooked_blocks)

    @property
    def head_dim(self) -> int:
        """Width of the second Swin stage and of the score/weight heads (384 by default)."""
        return self.swin_embed_dim // 2


class Maniqa(nn.Module, AgiqaHubMixin, library_name="agiqa", tags=["image-quality-assessment", "maniqa"]):
    """MANIQA no-reference IQA model on a timm ViT-B/8 (see the module docstring for the pipeline).

    Input ``x``: float tensor ``(B, 3, img_size, img_size)`` of RGB **already normalised** with
    ``(x01 - 0.5) / 0.5`` (use :meth:`normalize` on ``[0, 1]`` images). Test-time cropping of larger images is
    done outside the model (:mod:`agiqa.scoring.crops`); ``forward`` is deterministic in ``eval()`` mode.

    Output of ``forward``: ``(B,)`` scores in the units of the training labels (official releases: min-max
    normalised MOS, roughly ``[0, 1]``, higher is better).
    """

    config_class = ManiqaConfig
    input_names = ("image",)  # batch keys `forward` takes, in order (see agiqa.models.model_scores)
    # Submodules that run under autocast at bf16/fp16 (the score heads run in fp32: `full_precision`); inference
    # may keep their matmul weights in that dtype (agiqa.scoring.inference.keep_low_precision_weights).
    low_precision_modules = ("vit", "tablock1", "conv1", "swintransformer1", "tablock2", "conv2", "swintransformer2")

    def __init__(self, config: ManiqaConfig | None = None):
        super().__init__()
        config = config if config is not None else self.config_class()
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        self.config = config
        self._hub_mixin_config = config  # what save_pretrained writes as config.json
        c = config
        self.grid_size = c.grid_size
        self.num_patches = c.num_patches
        self.hooked_blocks = tuple(c.hooked_blocks)

        self.vit = self._create_backbone(c)
        self.tablock1 = nn.ModuleList(ManiqaTABlock(c.num_patches, c.drop) for _ in range(c.tab_count))
        self.conv1 = nn.Conv2d(c.feature_dim, c.swin_embed_dim, 1, 1, 0)
        swin_args = dict(
            grid=c.grid_size,
            depths=c.swin_depths,
            num_heads=c.swin_num_heads,
            window_size=c.window_size,
            mlp_dim=c.swin_mlp_dim,
            drop=c.drop,
            drop_path=c.drop_path,
            scale=c.residual_scale,
            mask_value=c.mask_value,
        )
        self.swintransformer1 = ManiqaSwinStage(c.swin_embed_dim, **swin_args)
        self.tablock2 = nn.ModuleList(ManiqaTABlock(c.num_patches, c.drop) for _ in range(c.tab_count))
        self.conv2 = nn.Conv2d(c.swin_embed_dim, c.head_dim, 1, 1, 0)
        self.swintransformer2 = ManiqaSwinStage(c.head_dim, **swin_args)
        self.fc_score = self._make_head(c, nn.ReLU())
        self.fc_weight = self._make_head(c, nn.Sigmoid())
        self.num_features = c.head_dim
        self.register_buffer("_norm_mean", torch.tensor(c.norm_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_norm_std", torch.tensor(c.norm_std).view(1, 3, 1, 1), persistent=False)
        self.freeze_unused_parameters()

    def unused_parameter_names(self) -> list[str]:
        """Parameters kept only so official checkpoints load (ViT blocks after the last hook, final norm, classifier
        head, Swin `downsample`): the forward pass never touches them."""
        after_last_hook = range(max(self.hooked_blocks) + 1, len(self.vit.blocks))
        prefixes = tuple(f"vit.blocks.{i}." for i in after_last_hook) + (
            "vit.norm.", "vit.fc_norm.", "vit.head.", "swintransformer1.downsample.", "swintransformer2.downsample.")
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def freeze_unused_parameters(self) -> None:
        """`requires_grad=False` on unused parameters: the optimiser leaves them as loaded, and DDP does not wait
        for gradients that never come (no `find_unused_parameters` needed)."""
        unused = set(self.unused_parameter_names())
        for name, param in self.named_parameters():
            if name in unused:
                param.requires_grad_(False)

    @staticmethod
    def _create_backbone(c: ManiqaConfig) -> nn.Module:
        name = c.backbone_pretrained_tag if c.backbone_pretrained else c.backbone_name
        try:
            return timm.create_model(
                name,
                pretrained=c.backbone_pretrained,
                img_size=c.img_size,
                patch_size=c.patch_size,
                embed_dim=c.embed_dim,
                depth=c.vit_depth,
                num_heads=c.vit_num_heads,
                mlp_ratio=c.vit_mlp_ratio,
                num_classes=c.vit_num_classes,
                attn_layer=ManiqaViTAttention,
            )
        except Exception as err:
            if not c.backbone_pretrained:
                raise
            raise WeightsNotFoundError(
                f"Could not load the ImageNet ViT weights '{name}' through timm ({type(err).__name__}: {err}). "
                "They are only needed to train from scratch: pass `backbone_pretrained=False` (random ViT), or load "
                "a full MANIQA checkpoint with `pretrained=PATH`, or make the timm weights reachable (HF_HUB_OFFLINE "
                "with a filled cache)."
            ) from err

    @staticmethod
    def _make_head(c: ManiqaConfig, last_act: nn.Module) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(c.head_dim, c.head_dim),
            nn.ReLU(),
            nn.Dropout(c.drop),
            nn.Linear(c.head_dim, c.num_outputs),
            last_act,
        )

    def init_weights(self) -> None:
        """Re-initialise the MANIQA modules as the official code does (PyTorch defaults, bias tables N(0, .02));
        the ViT keeps whatever timm gave it (random or ImageNet weights)."""
        for name, module in self.named_modules():
            if name.startswith("vit"):
                continue
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, ManiqaWindowAttention):
                trunc_normal_(module.relative_position_bias_table, std=0.02)

    # ----------------------------------------------------------------------------------------------------- input
    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """RGB in ``[0, 1]`` ``(B, 3, H, W)`` -> model input ``(x01 - mean) / std`` (mean = std = 0.5 officially)."""
        return (x01 - self._norm_mean.to(x01)) / self._norm_std.to(x01)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``(B, 3, img_size, img_size)`` floating point."""
        size = self.config.img_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(
                f"{type(self).__name__} expects (B, 3, {size}, {size}) input, got {tuple(x.shape)}; "
                "crop or resize first (agiqa.scoring.crops.crop_views)."
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a floating point tensor, got {x.dtype}")

    # ---------------------------------------------------------------------------------------------------- stages
    def forward_vit(self, x: torch.Tensor) -> torch.Tensor:
        """Hooked ViT block outputs, CLS dropped, concatenated on channels: ``(B, feature_dim, N)`` (channels first).

        Blocks after ``max(hooked_blocks)``, ``vit.norm`` and ``vit.head`` are not executed.
        """
        feats = self.vit.forward_intermediates(
            x, indices=list(self.hooked_blocks), stop_early=True, intermediates_only=True, output_fmt="NLC"
        )
        # Concatenate along channels directly in (B, C, N) layout: one copy, ready for the TABs.
        return torch.cat([f.transpose(1, 2) for f in feats], dim=1)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], *self.grid_size)

    def forward_patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, S, S)`` -> per-patch tokens ``(B, N, head_dim)`` (what the heads see).

        Without gradients on CPU the batch runs in micro-batches of :meth:`cpu_micro_batch_size` images.
        """
        self.check_input(x)
        if x.device.type == "cpu" and not torch.is_grad_enabled():
            return self._micro_batched_patch_tokens(x, self.cpu_micro_batch_size(runs_on_amx_tiles(x)))
        return self._patch_tokens(x)

    # Not traced by torch.compile (only this frame): a compiled model compiles `_patch_tokens` for one micro-batch
    # shape, shared by every batch size, instead of one graph per batch size with the loop unrolled in it.
    @torch.compiler.disable(recursive=False)
    def _micro_batched_patch_tokens(self, x: torch.Tensor, step: int) -> torch.Tensor:
        tokens = []
        for chunk in x.split(step):  # a loop, not a comprehension: on Python 3.11 that is a frame dynamo would trace
            tokens.append(self._patch_tokens(chunk))
        return tokens[0] if len(tokens) == 1 else torch.cat(tokens)

    def cpu_micro_batch_size(self, amx: bool = False) -> int:
        """Images per CPU inference step: as many as fit in :data:`CPU_MICRO_BATCH_TOKENS` ViT tokens
        (:data:`CPU_MICRO_BATCH_TOKENS_AMX_BF16` with ``amx``: bf16 on AMX tiles), at least 1.

        A full-size image (785 tokens) runs alone, so that its multi-MB activations stay in the CPU cache from one
        layer to the next: batch 8 in bf16 ran 16 % faster image by image on 2 Zen 4 cores, fp32 the same. On AMX
        the tile GEMMs want taller matrices: 4 images per step ran bf16 batch 8 10 % faster than 1 (2 Xeon cores).
        Tiny models keep their batches (one step per batch would cost more in Python than it saves).
        """
        budget = CPU_MICRO_BATCH_TOKENS_AMX_BF16 if amx else CPU_MICRO_BATCH_TOKENS
        return max(1, budget // (self.num_patches + self.vit.num_prefix_tokens))

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_vit(x)
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(self._grid(x)))  # (B, N, C1)
        x = x.transpose(1, 2).contiguous()  # (B, C1, N)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(self._grid(x)))  # (B, N, C2)
        return x

    def scores_from_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``(B, N, C)`` -> per-patch ``(score >= 0, weight in (0, 1))``, each ``(B, N)``, always fp32."""
        with full_precision(tokens):
            tokens = tokens.float()
            return self.fc_score(tokens).squeeze(-1), self.fc_weight(tokens).squeeze(-1)

    def patch_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> per-patch ``(score, weight)``, each ``(B, N)``."""
        return self.scores_from_tokens(self.forward_patch_tokens(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> per-patch ``score * weight`` ``(B, N)`` (MA-AGIQA's MANIQA feature, not summed)."""
        score, weight = self.patch_scores(x)
        return score * weight

    @staticmethod
    def pool_scores(score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted mean over patches: ``sum(score * weight) / sum(weight)`` -> ``(B,)``."""
        return (score * weight).sum(-1) / weight.sum(-1)

    def forward_head(
        self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False
    ) -> torch.Tensor:
        """Tokens ``(B, N, C)`` from :meth:`forward_patch_tokens`, or a ``(score, weight)`` pair from
        :meth:`patch_scores` -> ``(B,)`` image scores; with ``pre_logits=True`` the ``(B, N)`` score * weight.

        (``forward_features`` output cannot be pooled: the weight sum is gone. Use one of the two inputs above.)
        """
        score, weight = x if isinstance(x, (tuple, list)) else self.scores_from_tokens(x)
        if pre_logits:
            return score * weight
        return self.pool_scores(score, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, S, S)`` -> image scores ``(B,)``."""
        return self.forward_head(self.forward_patch_tokens(x))

    def explain(self, x: torch.Tensor) -> dict:
        """`forward`'s score ``(B,)`` with ``patch_map`` ``(B, H, W)``: each patch's score x weight on the patch grid
        (where the score comes from; the score is the map's sum over the weights' sum)."""
        score, weight = self.patch_scores(x)
        return {"score": self.pool_scores(score, weight), "patch_map": self.grid_map(score * weight)}

    def grid_map(self, per_patch: torch.Tensor) -> torch.Tensor:
        """Per-patch values ``(B, N)`` laid out on the patch grid ``(B, H, W)``."""
        return per_patch.view(per_patch.shape[0], *self.grid_size)


def has_patch_map(model: nn.Module) -> bool:
    """True when the model can say where its score comes from: MANIQA's per-patch scores (MANIQA, and MA-AGIQA
    with its MANIQA expert)."""
    model = getattr(model, "_orig_mod", model)  # under torch.compile
    return isinstance(model, Maniqa) and bool(getattr(model.config, "use_maniqa", True))


def patch_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """MANIQA's per-patch score x weight (B, H, W) of normalised images (the model's `image` input); needs
    `has_patch_map(model)`. MA-AGIQA's MANIQA expert needs no semantic features for it."""
    model = getattr(model, "_orig_mod", model)
    return model.grid_map(Maniqa.forward_features(model, images))


# --------------------------------------------------------------------------------------------------------------------
# Official checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _unwrap(state_dict: dict) -> dict:
    for key in ("model", "state_dict", "model_state_dict", "net"):
        if key in state_dict and isinstance(state_dict[key], dict):
            _logger.info("Unwrapping checkpoint entry '%s'", key)
            return _unwrap(state_dict[key])
    return state_dict


def checkpoint_filter_fn(state_dict: dict, model: nn.Module, keep_unknown: bool = False) -> dict:
    """Convert an official MANIQA (or MA-AGIQA) checkpoint to ``model``'s keys.

    Unwraps ``model`` / ``state_dict`` / ``model_state_dict`` entries, strips ``module.`` (DataParallel) prefixes,
    and drops — with one log line each — the MA-AGIQA-only modules when ``model`` has no such keys (loading an
    MA-AGIQA checkpoint into plain MANIQA). Key names are otherwise identical; anything else unexpected is kept
    so that the strict load reports it. ``keep_unknown=True`` keeps the MA-AGIQA modules too (for subclasses'
    filters that decide themselves).
    """
    state_dict = _unwrap(state_dict)
    own = set(model.state_dict())
    out = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            _logger.info("Dropping non-tensor checkpoint entry %s", key)
            continue
        while key.startswith("module."):
            key = key[len("module.") :]
        if not keep_unknown and key not in own and key.split(".", 1)[0] in MA_AGIQA_ONLY_MODULES:
            _logger.info("Dropping MA-AGIQA-only key %s (not part of %s)", key, type(model).__name__)
            continue
        out[key] = value
    return out


def load_official_checkpoint(
    checkpoint: str | os.PathLike | dict, model: Maniqa | None = None, **config_overrides
) -> Maniqa:
    """Load an official MANIQA ``.pt``/``.pth`` (or MA-AGIQA, MANIQA part) into ``model`` (built if None).

    Read with ``torch.load(weights_only=True)``; strict: any missing, unexpected (beyond the documented MA-AGIQA-only
    modules) or mis-shaped key raises RuntimeError listing them. Returns the model in ``eval()`` mode.
    """
    if model is None:
        model = Maniqa(ManiqaConfig.from_dict(config_overrides, backbone_pretrained=False))
    elif config_overrides:
        raise TypeError("pass either `model` or config overrides, not both")
    load_pretrained(model, checkpoint, filter_fn=checkpoint_filter_fn)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Pretrained configurations
# --------------------------------------------------------------------------------------------------------------------

_RELEASES = "https://github.com/IIGROUP/MANIQA/releases/download"


def _cfg(tag: str, filename: str, release: str, dataset: str, **kwargs) -> PretrainedCfg:
    return PretrainedCfg(
        tag=tag,
        url=f"{_RELEASES}/{release}/{filename}",
        hf_hub_filename=filename,
        official=True,
        train_dataset=dataset,
        score_range=(0.0, 1.0),
        lower_better=False,
        license="Apache-2.0",
        paper_ids=("arXiv:2204.08958",),
        origin_url="https://github.com/IIGROUP/MANIQA",
        **kwargs,
    )


default_cfgs = {
    "maniqa.koniq10k": _cfg(
        "koniq10k",
        "ckpt_koniq10k.pt",
        "Koniq10k",
        "koniq10k",
        notes="KonIQ-10k MOS min-max normalised to [0, 1]; official test SRCC 0.930 / PLCC 0.946.",
    ),
    "maniqa.kadid10k": _cfg(
        "kadid10k",
        "ckpt_kadid10k.pt",
        "Kadid10k",
        "kadid10k",
        notes="KADID-10k DMOS min-max normalised to [0, 1]; official test SRCC 0.939 / PLCC 0.939.",
    ),
    "maniqa.pipal22": _cfg(
        "pipal22",
        "ckpt_valid",
        "PIPAL22-VALID-CKPT",
        "pipal22",
        notes="NTIRE 2022 (PIPAL) release, MOS min-max normalised to [0, 1]; validation SRCC 0.686 / PLCC 0.707. "
        "The release file has no extension; if it is a pickled module rather than a state dict, weights_only "
        "loading refuses it (re-save its state_dict() in a trusted environment).",
    ),
}


def _create_maniqa(
    variant: str,
    pretrained: Any = False,
    pretrained_cfg: PretrainedCfg | None = None,
    cache_dir: str | None = None,
    **kwargs,
) -> Maniqa:
    return build_model_with_cfg(
        Maniqa,
        ManiqaConfig,
        pretrained,
        pretrained_cfg,
        filter_fn=checkpoint_filter_fn,
        cache_dir=cache_dir,
        **kwargs,
    )


@register_model
def maniqa(pretrained: Any = False, pretrained_cfg: PretrainedCfg | None = None, cache_dir: str | None = None,
           **kwargs):
    """MANIQA (official configuration: ViT-B/8 blocks 6-9, 2 TABs, two Swin stages 768 / 384)."""
    return _create_maniqa("maniqa", pretrained, pretrained_cfg, cache_dir, **kwargs)


def _tiny_maniqa_kwargs() -> dict:
    """Config of ``test_maniqa`` (shared with the tiny MA-AGIQA): 32 px, patch 8 -> 4 x 4 = 16 patches, ViT 32-d x 4
    blocks of which 0-2 are hooked (block 3 is never run), Swin stages 32 / 16 wide with window 2 (shift 1)."""
    return dict(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        vit_depth=4,
        vit_num_heads=2,
        vit_num_classes=10,
        hooked_blocks=(0, 1, 2),
        swin_embed_dim=32,
        swin_num_heads=(2, 2),
        window_size=2,
        swin_mlp_dim=32,
    )


@register_model
def test_maniqa(
    pretrained: Any = False, pretrained_cfg: PretrainedCfg | None = None, cache_dir: str | None = None, **kwargs
):
    """Tiny MANIQA for tests (see ``_tiny_maniqa_kwargs``); runs in milliseconds on a CPU."""
    return _create_maniqa("test_maniqa", pretrained, pretrained_cfg, cache_dir, **dict(_tiny_maniqa_kwargs(), **kwargs))
