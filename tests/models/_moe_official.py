"""State dicts in the layouts of the official MoE-AGIQA files, written from ../shared/REFERENCE.md (not from our model).

Sizes are parameters so the same layout is built at full size (key map) and tiny (forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Sizes:
    vit_dim: int = 768          # degradation / prior ViT-B/16
    vit_depth: int = 12
    grid: int = 14
    patch: int = 16
    blip_dim: int = 1024        # BLIP ViT-L/16
    blip_depth: int = 24
    blip_grid: int = 14
    text_dim: int = 768         # BERT
    text_layers: int = 12
    text_ff: int = 3072
    vocab: int = 30524
    positions: int = 512
    hidden: int = 512           # IQARegression
    hooked: int = 4
    experts: int = 4
    heads_dim: int = 512        # 8 x 64


FULL = Sizes()
TINY = Sizes(vit_dim=32, vit_depth=3, grid=4, patch=8, blip_dim=48, blip_depth=2, blip_grid=4, text_dim=32,
             text_layers=2, text_ff=64, vocab=64, positions=64, hidden=32, hooked=3, experts=4, heads_dim=32)


def _shapes_vit(dim: int, depth: int, tokens: int, patch: int, head: int | None) -> dict:
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                       b + "attn.qkv.bias": (3 * dim,), b + "attn.proj.weight": (dim, dim),
                       b + "attn.proj.bias": (dim,),
                       b + "norm2.weight": (dim,), b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim),
                       b + "mlp.fc1.bias": (4 * dim,), b + "mlp.fc2.weight": (dim, 4 * dim),
                       b + "mlp.fc2.bias": (dim,)})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if head:
        shapes.update({"head.weight": (head, dim), "head.bias": (head,)})
    return shapes


def _shapes_text(s: Sizes) -> dict:
    d = s.text_dim
    shapes = {"embeddings.word_embeddings.weight": (s.vocab, d),
              "embeddings.position_embeddings.weight": (s.positions, d),
              "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for i in range(s.text_layers):
        b = f"encoder.layer.{i}."
        for att, kv in (("attention", d), ("crossattention", s.blip_dim)):
            shapes.update({b + f"{att}.self.query.weight": (d, d), b + f"{att}.self.query.bias": (d,),
                           b + f"{att}.self.key.weight": (d, kv), b + f"{att}.self.key.bias": (d,),
                           b + f"{att}.self.value.weight": (d, kv), b + f"{att}.self.value.bias": (d,),
                           b + f"{att}.output.dense.weight": (d, d), b + f"{att}.output.dense.bias": (d,),
                           b + f"{att}.output.LayerNorm.weight": (d,), b + f"{att}.output.LayerNorm.bias": (d,)})
        shapes.update({b + "intermediate.dense.weight": (s.text_ff, d), b + "intermediate.dense.bias": (s.text_ff,),
                       b + "output.dense.weight": (d, s.text_ff), b + "output.dense.bias": (d,),
                       b + "output.LayerNorm.weight": (d,), b + "output.LayerNorm.bias": (d,)})
    return shapes


def reward_shapes(s: Sizes) -> dict:
    """ImageReward-v1.0: blip.visual_encoder (timm ViT-L layout), blip.text_encoder (BERT + cross-attention),
    blip.vision_proj / text_proj, mlp.layers.{0,2,4,6,7}."""
    shapes = {f"blip.visual_encoder.{k}": v
              for k, v in _shapes_vit(s.blip_dim, s.blip_depth, s.blip_grid ** 2 + 1, s.patch, None).items()}
    shapes.update({f"blip.text_encoder.{k}": v for k, v in _shapes_text(s).items()})
    shapes.update({"blip.vision_proj.weight": (256, s.blip_dim), "blip.vision_proj.bias": (256,),
                   "blip.text_proj.weight": (256, s.text_dim), "blip.text_proj.bias": (256,)})
    widths = [s.text_dim, 1024, 128, 64, 16, 1]
    for index, (a, b) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        shapes.update({f"mlp.layers.{index}.weight": (b, a), f"mlp.layers.{index}.bias": (b,)})
    return shapes


def regressor_shapes(s: Sizes, prior: bool = True) -> dict:
    """IQARegression (39 keys with the prior, v2)."""
    h, v = s.hidden, s.vit_dim
    shapes = {"proj": (s.text_dim, h), "down_channel.weight": (v, v * s.hooked, 1, 1), "down_channel.bias": (v,),
              "conv.0.weight": (h, v, 3, 3), "conv.0.bias": (h,), "cross_attention.to_q.weight": (s.heads_dim, h),
              "cross_attention.to_k.weight": (s.heads_dim, h), "cross_attention.to_v.weight": (s.heads_dim, h),
              "cross_attention.to_out.0.weight": (h, s.heads_dim), "cross_attention.to_out.0.bias": (h,),
              "norm1.weight": (h,), "norm1.bias": (h,), "norm2.weight": (h,), "norm2.bias": (h,),
              "gating_network.0.weight": (s.experts, h), "gating_network.0.bias": (s.experts,)}
    if prior:
        shapes.update({"proj_prior": (v, h), "weight1": (1, h, s.grid, s.grid), "weight2": (1, h, s.grid, s.grid),
                       "fc.0.weight": (h // 4, h), "fc.0.bias": (h // 4,), "fc.2.weight": (h, h // 4),
                       "fc.2.bias": (h,)})
    for e in range(s.experts):
        shapes.update({f"proj_experts.{e}.project.0.weight": (h, h), f"proj_experts.{e}.project.0.bias": (h,),
                       f"proj_experts.{e}.project.2.weight": (1, h), f"proj_experts.{e}.project.2.bias": (1,)})
    return shapes


def vit_shapes(s: Sizes) -> dict:
    """timm vit_base_patch16_224 (152 keys incl. the 1000-class head at full size)."""
    return _shapes_vit(s.vit_dim, s.vit_depth, s.grid ** 2 + 1, s.patch, 1000 if s is FULL else 10)


def materialise(shapes: dict, seed: int, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    return {k: torch.randn(v, generator=generator) * 0.1 for k, v in shapes.items()}


def official_files(s: Sizes, seed: int = 0, device: str = "cpu", prior: bool = True) -> tuple[dict, dict, dict]:
    """(best.pth dict, prior.pth dict, ImageNet ViT state dict) in the official layouts."""
    reward = materialise(reward_shapes(s), seed, device)
    reward["blip.text_encoder.embeddings.position_ids"] = torch.arange(s.positions, device=device)[None]
    best = {"epoch": 3, "reward_model_state_dict": reward,
            "regressor_model_state_dict": materialise(regressor_shapes(s, prior), seed + 1, device),
            "optimizer_state_dict": {}, "scheduler_state_dict": {},
            "loss": np.float64(0.1)}  # as released: a numpy scalar
    prior_file = {"vit_model_state_dict": materialise(vit_shapes(s), seed + 2, device),
                  "regressor_model_state_dict": {}}
    return best, prior_file, materialise(vit_shapes(s), seed + 3, device)
