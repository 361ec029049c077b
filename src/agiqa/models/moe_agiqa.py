"""MoE-AGIQA: degradation-aware ViT + KonIQ prior injection + BLIP semantic network + cross-attention + top-k MoE.

Paper: "MoE-AGIQA: Mixture-of-Experts Boosted Visual Perception-Driven and Semantic-Aware Quality Assessment for
AI-Generated Images" (Yang et al., CVPR-W 2024). Official code: https://github.com/37s/MoE-AGIQA (scripts
``train_{1k,3k,2023}_v{1,2}.py``, ``pretrain.py``; behaviour matched, the code here is ours).

Per 224 x 224 crop (default config, the released v2)::

    degradation ViT-B/16 (frozen, ImageNet) blocks 4..7, CLS dropped  -> (B, 3072, 14, 14)
      -> down_channel 1x1 3072->768 -> conv 3x3 768->512 + ReLU         -> f (B, 512, 14, 14)
    prior ViT-B/16 (frozen, KonIQ-10k) CLS after the final norm          -> p (B, 768)
      -> p @ proj_prior -> SE gate fc (512->128, GELU, ->512, Sigmoid)  -> s (B, 512, 1, 1)
      f = f * weight1 + (f * s) * weight2                               (weight1/weight2 start at zero)
    BLIP (ImageReward-v1.0): ViT-L/16 on the CLIP-normalised prompt image, BERT text encoder with
      cross-attention to it, prompt padded/truncated to 35 tokens     -> t (B, 35, 768) @ proj -> (B, 35, 512)
    f tokens (196) -> norm1; f + CrossAttention(f, norm2(t)) (8 heads x 64, no qkv bias) -> average pool (B, 512)
    gate softmax over 4 experts, top-3: score = sum of gate * expert (Linear 512->512, GELU, Linear 512->1)
    scores averaged over crops (3 in training, 15 at test)

State-dict names follow the released files: ``regressor.*`` is ``IQARegression`` key for key, ``blip.*`` is
ImageReward's ``blip.visual_encoder`` / ``blip.text_encoder``, ``prior_vit.*`` the prior's timm ViT, and
``degradation_vit.*`` timm's ViT-B/16 up to its last hooked block (see :func:`convert_official_checkpoint`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn

from agiqa._files import torch_load_weights_only
from agiqa.errors import AgiqaError
from agiqa.models._builder import WeightsNotFoundError, build_model_with_cfg, load_state_dict_file
from agiqa.models._config import ModelConfig, check_hooked_vit, check_targets, per_target
from agiqa.models._hub import AgiqaHubMixin
from agiqa.models._registry import register_model
from agiqa.models.maniqa import ManiqaViTAttention, full_precision

__all__ = [
    "MoeAgiqa",
    "MoeAgiqaConfig",
    "MoeAgiqaRegressor",
    "BlipSemanticEncoder",
    "MoeAgiqaProcessor",
    "MoeAgiqaPrior",
    "MoeAgiqaPriorConfig",
    "convert_official_checkpoint",
    "convert_imagereward_checkpoint",
    "official_trainable_names",
    "CLIP_MEAN",
    "CLIP_STD",
]

_logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# What ImageReward's BLIP adds to bert-base-uncased (BLIP `init_tokenizer`): vocabulary 30522 -> 30524.
BLIP_BOS_TOKEN = "[DEC]"
BLIP_ENC_TOKEN = "[ENC]"


@dataclass
class MoeAgiqaConfig(ModelConfig):
    """Hyper-parameters of :class:`MoeAgiqa`; the defaults give the released v2 (with prior) at full size.

    Args:
        img_size / patch_size / embed_dim / vit_depth / vit_num_heads: the degradation and prior ViTs
            (timm ``vit_base_patch16_224``: 224 px crops, 16 px patches -> 14 x 14 tokens).
        hooked_blocks: 0-indexed degradation-ViT blocks whose outputs are used (4..7); later blocks are not built.
        backbone_name / backbone_pretrained / backbone_pretrained_tag: the degradation ViT; with
            ``backbone_pretrained`` timm loads the ImageNet weights the official code used (AugReg in21k -> in1k).
        vit_input_normalize: feed both timm ViTs ``(x - 0.5) / 0.5`` instead of the raw [0, 1] crops. The release
            feeds raw crops (although timm's ImageNet weights expect mean = std = 0.5), so False is the default
            and what official weights need; True is for ViTs trained from scratch (the tiny synthetic runs learn
            far better with centred inputs, docs/moe_agiqa.md).
        use_prior: the KonIQ-10k prior branch (v2); False gives v1 (no ``prior_vit``, no SE gate, no weight1/2).
        prior_checkpoint: a prior checkpoint (``pretrain.py`` / ``agiqa pretrain-prior`` output) loaded at build.
        use_text: the semantic branch and cross-attention; False is the text-ablated model.
        blip_*: BLIP's ViT-L/16 image encoder on the prompt image (drop-path rising 0 -> blip_drop_path).
        text_*: BLIP's BERT text encoder (cross-attention to the image tokens in every layer).
        max_prompt_tokens: prompts are padded / truncated to this many tokens (35 officially).
        tokenizer: BERT tokenizer (hub id or folder); BLIP adds ``[DEC]`` (bos) and ``[ENC]``.
        semantic_checkpoint: ImageReward's ``ImageReward.pt`` loaded into ``blip.*`` at build (training start).
        hidden_dim: width of the fused features (512).
        se_reduction: SE gate reduction (512 -> 128 -> 512).
        attn_heads / attn_head_dim: cross-attention heads (8 x 64, no qkv bias).
        num_experts / top_k: experts and how many are mixed per image (4 / 3).
        renormalize: divide the top-k gate weights by their sum (the release does not).
        balance_loss_weight: weight of a Switch-style load-balancing loss (0: none, as released).
        semantic_freeze_ratio: fraction of BLIP text layers and image blocks frozen in training (0.5).
        freeze_vits: keep the degradation and prior ViTs frozen, as released (False trains them too: for models
            trained from scratch without pretrained ViTs, such as the tiny synthetic-data runs).
        label_scale: outputs are multiplied by it: training labels are MOS / max MOS, as the official code,
            and predictions come back on the MOS scale (1.0: the official normalised scale).
        train_crops / test_crops: crops averaged per image (3 / 15).
        targets: names of the outputs; one (the default) gives the released (B,) scores and state dict, several
            widen each expert's last layer to one output per target (shared gates) and ``forward`` returns (B, T).
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    hooked_blocks: tuple[int, ...] = (4, 5, 6, 7)
    backbone_name: str = "vit_base_patch16_224"
    backbone_pretrained: bool = False
    backbone_pretrained_tag: str = "vit_base_patch16_224.augreg_in21k_ft_in1k"
    vit_input_normalize: bool = False
    use_prior: bool = True
    prior_checkpoint: str | None = None
    use_text: bool = True
    blip_image_size: int = 224
    blip_patch_size: int = 16
    blip_embed_dim: int = 1024
    blip_depth: int = 24
    blip_num_heads: int = 16
    blip_drop_path: float = 0.1
    text_vocab_size: int = 30524
    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    text_max_positions: int = 512
    text_dropout: float = 0.1
    max_prompt_tokens: int = 35
    tokenizer: str = "bert-base-uncased"
    semantic_checkpoint: str | None = None
    hidden_dim: int = 512
    se_reduction: int = 4
    attn_heads: int = 8
    attn_head_dim: int = 64
    num_experts: int = 4
    top_k: int = 3
    renormalize: bool = False
    balance_loss_weight: float = 0.0
    semantic_freeze_ratio: float = 0.5
    freeze_vits: bool = True
    label_scale: float = 1.0
    train_crops: int = 3
    test_crops: int = 15
    targets: tuple[str, ...] = ("quality",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_targets(self.targets)
        check_hooked_vit(self.img_size, self.patch_size, self.hooked_blocks, self.vit_depth)
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({self.num_experts}), got {self.top_k}")
        if self.label_scale <= 0:
            raise ValueError(f"label_scale must be positive, got {self.label_scale}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def feature_dim(self) -> int:
        """Channels of the concatenated hooked blocks (3072)."""
        return self.embed_dim * len(self.hooked_blocks)


# --------------------------------------------------------------------------------------------------------------------
# Branches
# --------------------------------------------------------------------------------------------------------------------


def _vit(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """A timm ViT without classifier (``num_classes=0``) whose attention runs the fast CPU bf16 path."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, attn_layer=ManiqaViTAttention, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        raise WeightsNotFoundError(
            f"Could not load the ImageNet ViT weights '{name}' through timm ({type(err).__name__}: {err}). Pass "
            "`backbone_pretrained=False`, load complete weights with `pretrained=PATH`, or make the timm weights "
            "reachable (HF_HUB_OFFLINE with a filled cache)."
        ) from err


def vit_input(crops: torch.Tensor, normalize: bool) -> torch.Tensor:
    """What the timm ViTs see: the [0, 1] crops as released, or ``(x - 0.5) / 0.5`` with ``vit_input_normalize``."""
    return crops * 2 - 1 if normalize else crops


def build_degradation_vit(c: MoeAgiqaConfig) -> nn.Module:
    """timm ViT-B/16 cut after its last hooked block (the later blocks, final norm and head are dead work)."""
    name = c.backbone_pretrained_tag if c.backbone_pretrained else c.backbone_name
    vit = _vit(name, c.backbone_pretrained, img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
               depth=c.vit_depth, num_heads=c.vit_num_heads)
    vit.prune_intermediate_layers(list(c.hooked_blocks), prune_norm=True, prune_head=True)
    return vit


def build_prior_vit(c: MoeAgiqaConfig) -> nn.Module:
    """The prior's timm ViT-B/16 (its own head is not part of MoE-AGIQA: only the normed CLS token is used)."""
    return _vit(c.backbone_name, img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
                depth=c.vit_depth, num_heads=c.vit_num_heads)


class BlipSemanticEncoder(nn.Module):
    """ImageReward's BLIP without its projections: ``visual_encoder`` (timm ViT-L/16, BLIP's own layout) and
    ``text_encoder`` (transformers' ``BlipTextModel``: BERT with cross-attention to the image tokens, no pooler).

    ``forward(prompt_image, input_ids, attention_mask)`` -> text ``last_hidden_state`` (B, T, text_hidden_size).
    """

    def __init__(self, c: MoeAgiqaConfig):
        super().__init__()
        from transformers import BlipTextConfig, BlipTextModel

        self.visual_encoder = _vit(
            "vit_large_patch16_224", img_size=c.blip_image_size, patch_size=c.blip_patch_size,
            embed_dim=c.blip_embed_dim, depth=c.blip_depth, num_heads=c.blip_num_heads,
            drop_path_rate=c.blip_drop_path,
        )
        text_config = BlipTextConfig(
            vocab_size=c.text_vocab_size, hidden_size=c.text_hidden_size, encoder_hidden_size=c.blip_embed_dim,
            intermediate_size=c.text_intermediate_size, num_hidden_layers=c.text_layers,
            num_attention_heads=c.text_heads, max_position_embeddings=c.text_max_positions,
            hidden_dropout_prob=c.text_dropout, attention_probs_dropout_prob=c.text_dropout,
            layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0, bos_token_id=None, eos_token_id=None,
            sep_token_id=None, is_decoder=True,  # is_decoder builds the cross-attention layers
        )
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)

    def forward(self, prompt_image: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.visual_encoder.forward_features(prompt_image)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=image_atts, is_decoder=False, return_dict=True)
        return out.last_hidden_state


class CrossAttention(nn.Module):
    """Multi-head attention from ``x`` (queries) to ``context`` (keys / values): no qkv bias, output Linear.

    Names as released (``to_q``, ``to_k``, ``to_v``, ``to_out.0``); no mask, so padded prompt tokens are attended
    to as in the official code.
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class Expert(nn.Module):
    """One expert: Linear(d, d), GELU, Linear(d, T) under the released name ``project``; (N, T) scores."""

    def __init__(self, dim: int, num_targets: int = 1):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_targets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x)


class MoeAgiqaRegressor(nn.Module):
    """The official ``IQARegression`` (same names and shapes): fuse degradation features with the prior and the
    prompt features, pool, and mix the top-k experts.

    ``forward_features(degradation (N, feature_dim, g, g), text (N, T, text_hidden) or None, prior (N, embed_dim)
    or None)`` -> pooled (N, hidden); ``forward_head(pooled)`` -> (N,) scores.
    """

    def __init__(self, c: MoeAgiqaConfig):
        super().__init__()
        self.config = c
        hidden, grid = c.hidden_dim, c.grid_size
        self.down_channel = nn.Conv2d(c.feature_dim, c.embed_dim, kernel_size=1)
        self.conv = nn.Sequential(nn.Conv2d(c.embed_dim, hidden, kernel_size=3, padding=1), nn.ReLU())
        if c.use_text:
            self.cross_attention = CrossAttention(hidden, c.attn_heads, c.attn_head_dim)
            self.norm2 = nn.LayerNorm(hidden)
            self.proj = nn.Parameter(c.text_hidden_size ** -0.5 * torch.randn(c.text_hidden_size, hidden))
        self.norm1 = nn.LayerNorm(hidden)
        if c.use_prior:
            # The release scales both projections by inchannels ** -0.5 (768: the ViT and BERT widths agree).
            self.proj_prior = nn.Parameter(c.embed_dim ** -0.5 * torch.randn(c.embed_dim, hidden))
            self.fc = nn.Sequential(nn.Linear(hidden, hidden // c.se_reduction), nn.GELU(),
                                    nn.Linear(hidden // c.se_reduction, hidden), nn.Sigmoid())
            self.weight1 = nn.Parameter(torch.zeros(1, hidden, grid, grid))
            self.weight2 = nn.Parameter(torch.zeros(1, hidden, grid, grid))
        self.gating_network = nn.Sequential(nn.Linear(hidden, c.num_experts), nn.Softmax(dim=1))
        self.proj_experts = nn.ModuleList(Expert(hidden, len(c.targets)) for _ in range(c.num_experts))
        self.balance_loss: torch.Tensor | None = None

    def inject_prior(self, f: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """``f * weight1 + (f * SE(prior @ proj_prior)) * weight2``."""
        gate = self.fc(prior @ self.proj_prior)[:, :, None, None]
        return f * self.weight1 + (f * gate) * self.weight2

    def forward_features(self, degradation: torch.Tensor, text: torch.Tensor | None = None,
                         prior: torch.Tensor | None = None) -> torch.Tensor:
        f = self.conv(self.down_channel(degradation))
        if self.config.use_prior:
            f = self.inject_prior(f, prior)
        tokens = self.norm1(f.flatten(2).transpose(1, 2))  # (N, g*g, hidden)
        if self.config.use_text:
            tokens = tokens + self.cross_attention(tokens, self.norm2(text @ self.proj))
        return tokens.mean(dim=1)

    def gates(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k gate weights and expert indices, each (N, k); weights renormalised only if configured."""
        probs = self.gating_network(pooled)
        weights, index = torch.topk(probs, k=self.config.top_k, dim=1)
        if self.config.renormalize:
            weights = weights / weights.sum(dim=1, keepdim=True)
        if self.training and self.config.balance_loss_weight > 0:
            self.balance_loss = switch_balance_loss(probs, index)
        return weights, index

    def expert_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """Every expert on the batch (4 tiny MLPs) -> (N, E, T)."""
        return torch.stack([expert(pooled) for expert in self.proj_experts], dim=1)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Top-k mixture: the chosen k experts summed with their gates -> (N,), or (N, T) for several targets."""
        weights, index = self.gates(pooled)
        return per_target(mix_top_k(weights, index, self.expert_scores(pooled)), len(self.config.targets))

    def forward(self, degradation, text=None, prior=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(degradation, text, prior))

    def explain_head(self, pooled: torch.Tensor) -> dict:
        """`forward_head`'s score (N,) with the gate weight of every expert (N, E; 0 where not among the top k) and
        every expert's own score (N, E): score = sum_e gate_e * expert_e. Several targets add a last dimension T
        to the score and the expert scores (the gates are shared)."""
        weights, index = self.gates(pooled)
        experts = self.expert_scores(pooled)
        gate = torch.zeros_like(experts[..., 0]).scatter(1, index, weights)
        num_targets = len(self.config.targets)
        return {"score": per_target(mix_top_k(weights, index, experts), num_targets), "gate": gate,
                "expert_score": per_target(experts, num_targets)}


def mix_top_k(weights: torch.Tensor, index: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Sum of the chosen experts' scores (N, E, T) at `index` (N, k) weighted by their gates (N, k) -> (N, T)."""
    chosen = experts.gather(1, index.unsqueeze(-1).expand(-1, -1, experts.shape[-1]))
    return (weights.unsqueeze(-1) * chosen).sum(dim=1)


def switch_balance_loss(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Load-balancing loss of Switch Transformers: ``E * sum_e(share of top-k slots to e * mean gate prob of e)``;
    1 when experts are used evenly."""
    num_experts = probs.shape[1]
    dispatch = F.one_hot(index, num_experts).float().sum(dim=1).mean(dim=0) / index.shape[1]
    return num_experts * (dispatch * probs.mean(dim=0)).sum()


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


class MoeAgiqa(nn.Module, AgiqaHubMixin, library_name="agiqa", tags=["image-quality-assessment", "moe-agiqa"]):
    """MoE-AGIQA (see the module docstring). Inputs as the official code feeds them:

    - ``crops`` (B, 3, S, S) or (B, K, 3, S, S): RGB in [0, 1], **not normalised**, zero-padded to >= S and cropped;
    - ``prompt_image`` (B, 3, 224, 224): the whole image resized (bicubic, shorter side) + centre-cropped, CLIP
      normalised (:data:`CLIP_MEAN` / :data:`CLIP_STD`);
    - ``input_ids`` / ``attention_mask`` (B, 35): the BLIP tokenizer's output (:meth:`MoeAgiqaProcessor`).

    ``forward`` returns (B,) scores (the mean over the K crops) times ``config.label_scale``; (B, T) with several
    ``config.targets``.
    Use :class:`MoeAgiqaProcessor` (or :meth:`score`) to go from PIL images and prompt strings to these tensors.
    """

    config_class = MoeAgiqaConfig
    input_names = ("crops", "prompt_image", "input_ids", "attention_mask")
    # Run under autocast at bf16/fp16 (the regressor runs in fp32: `full_precision`); see
    # agiqa.scoring.inference.keep_low_precision_weights.
    low_precision_modules = ("degradation_vit", "prior_vit", "blip")
    # The official scripts keep the epoch with the best *test* SRCC+PLCC (no validation split); reproduced only
    # under `--official-quirks`.
    official_selects_on_test = True

    def __init__(self, config: MoeAgiqaConfig | dict | None = None):
        super().__init__()
        config = config if config is not None else MoeAgiqaConfig()
        if isinstance(config, dict):
            config = MoeAgiqaConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config
        self._tokenizer_source = config.tokenizer
        self.degradation_vit = build_degradation_vit(config)
        if config.use_prior:
            self.prior_vit = build_prior_vit(config)
        if config.use_text:
            self.blip = BlipSemanticEncoder(config)
        self.regressor = MoeAgiqaRegressor(config)
        self.num_features = config.hidden_dim
        self._load_weight_sources(config)
        self.freeze_frozen_parameters()

    def _load_weight_sources(self, c: MoeAgiqaConfig) -> None:
        """Starting weights named in the config: a prior checkpoint and ImageReward's BLIP (training starts)."""
        if c.prior_checkpoint:
            if not c.use_prior:
                raise ValueError("prior_checkpoint is set but use_prior is False (v1 has no prior)")
            self.prior_vit.load_state_dict(read_prior_checkpoint(c.prior_checkpoint))
            _logger.info("Loaded the prior ViT from %s", c.prior_checkpoint)
        if c.semantic_checkpoint:
            if not c.use_text:
                raise ValueError("semantic_checkpoint is set but use_text is False")
            state = convert_imagereward_checkpoint(load_state_dict_file(c.semantic_checkpoint))
            self.blip.load_state_dict({key[len("blip."):]: value for key, value in state.items()})
            _logger.info("Loaded ImageReward's BLIP from %s", c.semantic_checkpoint)

    # ------------------------------------------------------------------------------------------------ training
    def frozen_parameter_names(self) -> list[str]:
        """What the released training never updates: both timm ViTs, and BLIP's text / image encoders in name
        order up to and including the first parameter of text layer ``L * ratio`` / image block ``D * ratio``
        (``encoder.layer.6.attention.self.query.weight`` and ``blocks.12.norm1.weight`` at full size)."""
        vits = ("degradation_vit.", "prior_vit.") if self.config.freeze_vits else ()
        names = [n for n, _ in self.named_parameters() if vits and n.startswith(vits)]
        if self.config.use_text and self.config.semantic_freeze_ratio > 0:
            ratio = self.config.semantic_freeze_ratio
            text_stop = f"layer.{int(self.config.text_layers * ratio)}"
            image_stop = f"blocks.{int(self.config.blip_depth * ratio)}"
            names += _names_through(self.blip.text_encoder, "blip.text_encoder.", text_stop)
            names += _names_through(self.blip.visual_encoder, "blip.visual_encoder.", image_stop)
        return names

    def freeze_frozen_parameters(self) -> None:
        frozen = set(self.frozen_parameter_names())
        for name, param in self.named_parameters():
            param.requires_grad_(name not in frozen)

    def train(self, mode: bool = True) -> "MoeAgiqa":
        """Train mode as released: BLIP and the regressor train (dropout, drop-path), the two frozen timm ViTs stay
        in eval mode."""
        super().train(mode)
        if self.config.freeze_vits:
            self.degradation_vit.eval()
            if self.config.use_prior:
                self.prior_vit.eval()
        return self

    @property
    def balance_loss(self) -> torch.Tensor | None:
        """The load-balancing loss of the last training forward (None when ``balance_loss_weight`` is 0)."""
        return self.regressor.balance_loss

    # ------------------------------------------------------------------------------------------------ branches
    def forward_degradation(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (N, 3, S, S) in [0, 1] -> hooked block outputs (N, feature_dim, g, g); later blocks are not run."""
        pixels = vit_input(crops, self.config.vit_input_normalize)
        feats = self.degradation_vit.forward_intermediates(
            pixels, indices=list(self.config.hooked_blocks), stop_early=True, intermediates_only=True, output_fmt="NLC"
        )
        g = self.config.grid_size
        return torch.cat(feats, dim=2).transpose(1, 2).unflatten(2, (g, g))

    def forward_prior(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops -> the prior ViT's CLS token after its final norm (N, embed_dim)."""
        return self.prior_vit.forward_features(vit_input(crops, self.config.vit_input_normalize))[:, 0]

    def forward_semantic(self, prompt_image: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor:
        """Prompt features (B, T, text_hidden_size): once per image, shared by all its crops."""
        return self.blip(prompt_image, input_ids, attention_mask)

    def forward_features(self, crops: torch.Tensor, prompt_image: torch.Tensor | None = None,
                         input_ids: torch.Tensor | None = None,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled fused features per crop (B, K, hidden_dim); all crops of the batch run as one batch."""
        if crops.dim() == 4:
            crops = crops.unsqueeze(1)
        self._check_crops(crops)
        B, K = crops.shape[:2]
        flat = crops.flatten(0, 1)
        text = None
        if self.config.use_text:
            if prompt_image is None or input_ids is None or attention_mask is None:
                raise ValueError("MoE-AGIQA needs prompt_image, input_ids and attention_mask (use MoeAgiqaProcessor)")
            text = self.forward_semantic(prompt_image, input_ids, attention_mask).repeat_interleave(K, dim=0)
        prior = self.forward_prior(flat) if self.config.use_prior else None
        degradation = self.forward_degradation(flat)
        with full_precision(crops):
            pooled = self.regressor.forward_features(
                degradation.float(), None if text is None else text.float(), None if prior is None else prior.float()
            )
        return pooled.unflatten(0, (B, K))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, hidden_dim) -> (B,) scores: the expert mixture per crop, averaged over crops, times label_scale."""
        with full_precision(features):
            per_crop = self.regressor.forward_head(features.float().flatten(0, 1)).unflatten(0, features.shape[:2])
            return per_crop.mean(dim=1) * self.config.label_scale

    def forward(self, crops: torch.Tensor, prompt_image: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(crops, prompt_image, input_ids, attention_mask))

    @property
    def expert_names(self) -> list[str]:
        return [f"expert{i}" for i in range(self.config.num_experts)]

    def explain(self, crops: torch.Tensor, prompt_image: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> dict:
        """`forward`'s score (B,) with the mixture's gate weights and per-expert scores (B, E), each averaged over
        the crops as the score is (expert scores times `label_scale`, on the score's scale)."""
        features = self.forward_features(crops, prompt_image, input_ids, attention_mask)
        with full_precision(features):
            parts = self.regressor.explain_head(features.float().flatten(0, 1))
        parts = {name: value.unflatten(0, features.shape[:2]).mean(dim=1) for name, value in parts.items()}
        scale = self.config.label_scale
        return {"score": parts["score"] * scale, "gate": parts["gate"], "expert_score": parts["expert_score"] * scale}

    def _check_crops(self, crops: torch.Tensor) -> None:
        size = self.config.img_size
        if crops.dim() != 5 or crops.shape[2] != 3 or crops.shape[3:] != (size, size):
            raise ValueError(f"MoE-AGIQA expects crops (B, K, 3, {size}, {size}) or (B, 3, {size}, {size}), "
                             f"got {tuple(crops.shape)}; use MoeAgiqaProcessor")

    # --------------------------------------------------------------------------------------------- convenience
    @property
    def tokenizer(self):
        """BLIP's tokenizer (loaded on first use from ``config.tokenizer``, or the folder saved with the model)."""
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = load_blip_tokenizer(self._tokenizer_source)
        return self._tokenizer

    def processor(self, num_crops: int | None = None, seed: int = 0) -> "MoeAgiqaProcessor":
        return MoeAgiqaProcessor(self.config, self.tokenizer if self.config.use_text else None,
                                 num_crops=num_crops or self.config.test_crops, seed=seed)

    @torch.inference_mode()
    def score(self, images: Sequence, prompts: Sequence[str], num_crops: int | None = None,
              seed: int = 0) -> torch.Tensor:
        """PIL images + prompt strings -> (B,) scores with the official test preprocessing (seeded crops)."""
        inputs = self.processor(num_crops, seed)(images, prompts)
        device = next(self.parameters()).device
        return self(**{key: value.to(device) for key, value in inputs.items()})

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``config.json`` + ``model.safetensors``, plus ``tokenizer/`` when the tokenizer has been loaded (so a
        converted model scores offline)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if getattr(self, "_tokenizer", None) is not None:
            self._tokenizer.save_pretrained(str(Path(save_directory) / "tokenizer"))
        return out

    def loaded_from(self, model_id: str) -> None:
        saved = Path(model_id) / "tokenizer"
        if saved.is_dir():
            self._tokenizer_source = str(saved)


def _names_through(module: nn.Module, prefix: str, stop: str) -> list[str]:
    """Parameter names of ``module`` in order, up to and including the first containing ``stop``."""
    names = []
    for name, _ in module.named_parameters():
        names.append(prefix + name)
        if stop in name:
            break
    return names


SYNTH_TOKENIZER = "synth"


def load_blip_tokenizer(source: str):
    """BERT tokenizer plus BLIP's two special tokens (``[DEC]`` as bos, ``[ENC]``), as ImageReward builds it.

    ``source`` is a hub id or folder, or ``"synth"``: the vocabulary of `agiqa synth` prompts (no download).
    """
    from transformers import BertTokenizer

    if source == SYNTH_TOKENIZER:
        from agiqa.data.synth import prompt_vocabulary

        tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(prompt_vocabulary())})
    else:
        tokenizer = BertTokenizer.from_pretrained(source)
    if tokenizer.bos_token != BLIP_BOS_TOKEN:
        tokenizer.add_special_tokens({"bos_token": BLIP_BOS_TOKEN})
        tokenizer.add_special_tokens({"additional_special_tokens": [BLIP_ENC_TOKEN]})
    return tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------------


def min_padding(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) that brings an image to at least ``size`` on each side, centred."""
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def random_crops(image01: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` crops of a (3, H, W) image after zero-padding it to >= size -> (count, 3, S, S)."""
    image01 = F.pad(image01, min_padding(image01.shape[1], image01.shape[2], size))
    height, width = image01.shape[1:]
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    return torch.stack([image01[:, t:t + size, s:s + size] for t, s in zip(tops, lefts)])


def prompt_image_tensor(image, size: int) -> torch.Tensor:
    """PIL RGB -> (3, size, size): shorter side to ``size`` (PIL bicubic), centre crop, CLIP normalisation."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = TF.center_crop(TF.resize(image, size, interpolation=InterpolationMode.BICUBIC), size)
    return TF.normalize(TF.to_tensor(image), CLIP_MEAN, CLIP_STD)


class MoeAgiqaProcessor:
    """PIL images + prompt strings -> the tensors :class:`MoeAgiqa` takes, with the official preprocessing:
    ``num_crops`` random crops of the zero-padded image (at test time from a generator seeded with ``seed`` and the
    image size, so an image always gets the same crops), the CLIP-normalised prompt image and the BLIP tokenizer
    padded / truncated to ``max_prompt_tokens``."""

    def __init__(self, config: MoeAgiqaConfig, tokenizer=None, num_crops: int = 15, seed: int = 0):
        self.config, self.tokenizer, self.num_crops, self.seed = config, tokenizer, num_crops, seed

    def text(self, prompts: Sequence[str]) -> dict:
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                                max_length=self.config.max_prompt_tokens, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def crop_generator(self, height: int, width: int) -> torch.Generator:
        """Test-time crop positions depend only on ``seed`` and the image size: one image gets the same crops
        (and score) whatever batch, row or entry point it comes through."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + height) * 100_003 + width)

    def sample(self, image, prompt: str | None, num_crops: int | None = None, train: bool = False) -> dict:
        """One image (PIL RGB) -> unbatched model inputs; training crops come from torch's global RNG, test crops
        from :meth:`crop_generator`."""
        from torchvision.transforms import functional as TF

        pixels = TF.to_tensor(image)
        generator = None if train else self.crop_generator(*pixels.shape[1:])
        out = {"crops": random_crops(pixels, self.config.img_size, num_crops or self.num_crops, generator)}
        if self.config.use_text:
            if prompt is None:
                raise ValueError("MoE-AGIQA needs the image's prompt (its semantic branch compares the two)")
            out["prompt_image"] = prompt_image_tensor(image, self.config.blip_image_size)
            out.update({key: value[0] for key, value in self.text([prompt]).items()})
        return out

    def __call__(self, images: Sequence, prompts: Sequence[str] | None = None) -> dict:
        """A batch at test time: crops (B, K, 3, S, S), prompt images, tokens."""
        images = list(images)
        if self.config.use_text and (prompts is None or len(prompts) != len(images)):
            raise ValueError(f"MoE-AGIQA needs one prompt per image: {len(images)} images, "
                             f"{'no' if prompts is None else len(prompts)} prompts")
        samples = [self.sample(image, prompts[i] if prompts is not None else None) for i, image in enumerate(images)]
        return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


# --------------------------------------------------------------------------------------------------------------------
# Official files
# --------------------------------------------------------------------------------------------------------------------

# Keys of the official files that MoE-AGIQA never uses; the converter drops exactly these and lists them.
IMAGEREWARD_UNUSED_PREFIXES = ("mlp.", "blip.vision_proj.", "blip.text_proj.")
IMAGEREWARD_UNUSED_BUFFERS = ("blip.text_encoder.embeddings.position_ids",)  # rebuilt by transformers (arange)
VIT_HEAD_PREFIXES = ("head.",)


def _read_official(path: str | os.PathLike) -> dict:
    """An official ``torch.save`` dict, read with ``weights_only=True`` (arbitrary pickles are refused)."""
    try:
        obj = torch_load_weights_only(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"official checkpoint not found: {path}") from err
    except AgiqaError:
        raise
    except Exception as err:
        raise RuntimeError(f"Could not read {path} as a weights-only PyTorch checkpoint: {err}") from err
    if not isinstance(obj, dict):
        raise RuntimeError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def _entry(obj: dict, key: str, path) -> dict:
    if key not in obj:
        found = ", ".join(sorted(obj)[:10])
        raise RuntimeError(f"{path} has no '{key}' entry (found: {found}); is it the right official file?")
    return obj[key]


def _strip_module(state: dict) -> dict:
    return {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _drop(state: dict, prefixes: tuple[str, ...], exact: tuple[str, ...], what: str) -> dict:
    dropped = sorted(k for k in state if k.startswith(prefixes) or k in exact)
    if dropped:
        groups = sorted({k if k in exact else k.rsplit(".", 1)[0] for k in dropped})
        _logger.info("%s: dropping %d keys MoE-AGIQA never uses: %s", what, len(dropped), ", ".join(groups))
    return {k: v for k, v in state.items() if k not in dropped}


def convert_imagereward_checkpoint(state: dict) -> dict:
    """ImageReward's state dict (``ImageReward.pt`` or a training checkpoint's ``reward_model_state_dict``) ->
    our ``blip.*`` keys; ``mlp.*``, ``blip.vision_proj``, ``blip.text_proj`` and the ``position_ids`` buffer are
    dropped (listed in the log). The names are otherwise the same."""
    state = _strip_module(state)
    return _drop(state, IMAGEREWARD_UNUSED_PREFIXES, IMAGEREWARD_UNUSED_BUFFERS, "ImageReward")


def _read_vit_state(source: str | os.PathLike | dict) -> dict:
    """A timm-layout ViT state dict from a file (``.safetensors`` or weights-only pickle) or a dict, unwrapping
    ``vit_model_state_dict`` (the layout of ``pretrain.py`` checkpoints)."""
    if isinstance(source, dict):
        obj = source
    elif str(source).endswith(".safetensors"):
        obj = load_state_dict_file(source)
    else:
        obj = _read_official(source)
    inner = obj.get("vit_model_state_dict")
    return _strip_module(inner if isinstance(inner, dict) else obj)


def read_prior_checkpoint(source: str | os.PathLike | dict) -> dict:
    """The prior ViT's weights (timm layout, head dropped) from a ``pretrain.py`` / ``agiqa pretrain-prior``
    checkpoint (``vit_model_state_dict``) or a plain state dict / safetensors file."""
    return _drop(_read_vit_state(source), VIT_HEAD_PREFIXES, (), "prior ViT")


def read_degradation_vit(source: str | os.PathLike | dict | None, hooked_blocks: Sequence[int]) -> dict:
    """ImageNet ViT-B/16 weights for the degradation branch: a local file (timm layout), or timm's hub weights
    (the AugReg file the official code got from ``pretrained=True``) when ``path`` is None. Blocks after the
    last hooked one, the final norm and the head are dropped (never run)."""
    state = _read_vit_state(source) if source is not None else _vit(MoeAgiqaConfig.backbone_pretrained_tag,
                                                                     pretrained=True).state_dict()
    last = max(hooked_blocks)
    dead = tuple(f"blocks.{i}." for i in range(last + 1, 64)) + ("norm.", "fc_norm.") + VIT_HEAD_PREFIXES
    return _drop(state, dead, (), "degradation ViT")


def convert_official_checkpoint(best: str | os.PathLike | dict, prior: str | os.PathLike | dict | None = None,
                                degradation_vit: str | os.PathLike | dict | None = None,
                                hooked_blocks: Sequence[int] = MoeAgiqaConfig.hooked_blocks) -> dict:
    """The official files -> one state dict in our names (load it strictly into ``MoeAgiqa``).

    - ``best``: a training checkpoint (``best.pth``: ``reward_model_state_dict`` -> ``blip.*``,
      ``regressor_model_state_dict`` -> ``regressor.*`` unchanged);
    - ``prior``: the prior checkpoint (``vit_model_state_dict`` -> ``prior_vit.*``); None for v1;
    - ``degradation_vit``: ImageNet ViT-B/16 weights (timm layout) or None for timm's hub weights.
    All files are read with ``weights_only=True``; each may also be given as an in-memory dict.
    """
    obj = best if isinstance(best, dict) else _read_official(best)
    reward = convert_imagereward_checkpoint(_entry(obj, "reward_model_state_dict", best))
    regressor = _strip_module(_entry(obj, "regressor_model_state_dict", best))
    out = dict(reward)
    out.update({f"regressor.{k}": v for k, v in regressor.items()})
    if prior is not None:
        out.update({f"prior_vit.{k}": v for k, v in read_prior_checkpoint(prior).items()})
    out.update({f"degradation_vit.{k}": v for k, v in read_degradation_vit(degradation_vit, hooked_blocks).items()})
    return out


def official_trainable_names(model: MoeAgiqa) -> list[str]:
    """Names of the parameters the released training updates (BLIP's unfrozen part + the whole regressor)."""
    frozen = set(model.frozen_parameter_names())
    return [n for n, _ in model.named_parameters() if n not in frozen]


# --------------------------------------------------------------------------------------------------------------------
# The prior network (pretrain.py)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MoeAgiqaPriorConfig(ModelConfig):
    """The prior pre-training network of the official ``pretrain.py`` (ViT-B/16 + a small regressor, KonIQ-10k).

    Args:
        img_size / patch_size / embed_dim / vit_depth / vit_num_heads / backbone_*: the timm ViT (as in
            :class:`MoeAgiqaConfig`; ``backbone_pretrained`` starts from the ImageNet weights, as released).
        vit_input_normalize: as in :class:`MoeAgiqaConfig` (a prior trained with it must be used with it).
        freeze_ratio: the ViT's parameters are frozen in name order up to and including the first one of block
            ``int(depth * freeze_ratio)`` (``blocks.8.norm1.weight`` at 0.7), as released.
        label_scale / train_crops / test_crops: as in :class:`MoeAgiqaConfig` (labels MOS / max MOS, 3 / 15 crops).
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    vit_depth: int = 12
    vit_num_heads: int = 12
    backbone_name: str = "vit_base_patch16_224"
    backbone_pretrained: bool = False
    backbone_pretrained_tag: str = "vit_base_patch16_224.augreg_in21k_ft_in1k"
    vit_input_normalize: bool = False
    freeze_ratio: float = 0.7
    label_scale: float = 1.0
    train_crops: int = 3
    test_crops: int = 15

    use_text = False  # what MoeAgiqaProcessor asks: crops only


class PriorHead(nn.Module):
    """``project`` = Linear(d, d), GELU, Linear(d, 1) on the CLS token (the release's pretrain ``IQARegression``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x).squeeze(-1)


class MoeAgiqaPrior(nn.Module, AgiqaHubMixin, library_name="agiqa", tags=["image-quality-assessment", "moe-agiqa"]):
    """The prior network: ``vit`` (timm ViT-B/16, its normed CLS token) + ``regressor`` (:class:`PriorHead`).

    Input: crops (B, 3, S, S) or (B, K, 3, S, S) in [0, 1] (fed raw as released unless ``vit_input_normalize``);
    output (B,) scores averaged over crops, times ``label_scale``. :meth:`prior_state_dict` writes the file
    MoE-AGIQA loads.
    """

    config_class = MoeAgiqaPriorConfig
    input_names = ("crops",)
    official_selects_on_test = True

    def __init__(self, config: MoeAgiqaPriorConfig | dict | None = None):
        super().__init__()
        config = config if config is not None else MoeAgiqaPriorConfig()
        if isinstance(config, dict):
            config = MoeAgiqaPriorConfig.from_dict(config)
        self.config = config
        self._hub_mixin_config = config
        name = config.backbone_pretrained_tag if config.backbone_pretrained else config.backbone_name
        self.vit = _vit(name, config.backbone_pretrained, img_size=config.img_size, patch_size=config.patch_size,
                        embed_dim=config.embed_dim, depth=config.vit_depth, num_heads=config.vit_num_heads)
        self.regressor = PriorHead(config.embed_dim)
        if config.freeze_ratio > 0:
            stop = f"blocks.{int(config.vit_depth * config.freeze_ratio)}"
            for name in _names_through(self.vit, "", stop):
                self.vit.get_parameter(name).requires_grad_(False)

    def processor(self, num_crops: int | None = None, seed: int = 0) -> "MoeAgiqaProcessor":
        return MoeAgiqaProcessor(self.config, None, num_crops=num_crops or self.config.test_crops, seed=seed)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() == 4:
            crops = crops.unsqueeze(1)
        flat = vit_input(crops.flatten(0, 1), self.config.vit_input_normalize)
        per_crop = self.regressor(self.vit.forward_features(flat)[:, 0])
        return per_crop.unflatten(0, crops.shape[:2]).mean(dim=1) * self.config.label_scale

    def prior_state_dict(self) -> dict:
        """The official prior file layout: ``vit_model_state_dict`` (timm) + ``regressor_model_state_dict``."""
        return {"vit_model_state_dict": self.vit.state_dict(),
                "regressor_model_state_dict": self.regressor.state_dict()}


def _prior_filter(state_dict: dict, model: MoeAgiqaPrior) -> dict:
    """An official (or `agiqa pretrain-prior`) prior file -> our keys (``vit.*`` without head, ``regressor.*``)."""
    if "vit_model_state_dict" not in state_dict:
        return state_dict
    out = {f"vit.{k}": v for k, v in read_prior_checkpoint(state_dict).items()}
    out.update({f"regressor.{k}": v
                for k, v in _strip_module(state_dict.get("regressor_model_state_dict", {})).items()})
    return out


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

default_cfgs: dict = {}  # the official repository releases no weights; see `agiqa models convert --model moe_agiqa`


def _create(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqa:
    return build_model_with_cfg(MoeAgiqa, MoeAgiqaConfig, pretrained, pretrained_cfg,
                                filter_fn=_official_filter, cache_dir=cache_dir, **kwargs)


def _official_filter(state_dict: dict, model: MoeAgiqa) -> dict:
    """`create_model("moe_agiqa", pretrained="best.pth")`: only possible for a checkpoint holding all parts."""
    if "reward_model_state_dict" in state_dict:
        raise RuntimeError("an official MoE-AGIQA best.pth lacks the prior and degradation ViTs: convert it with "
                           "`agiqa models convert best.pth OUT --model moe_agiqa --prior prior.pth` and load OUT")
    return state_dict


@register_model
def moe_agiqa(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqa:
    """MoE-AGIQA v2 as released: ViT-B/16 degradation branch + KonIQ-10k prior + ImageReward BLIP + top-3 of 4."""
    return _create(pretrained, pretrained_cfg, cache_dir, **kwargs)


@register_model
def moe_agiqa_v1(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqa:
    """MoE-AGIQA v1 (the official ablation without the prior branch)."""
    return _create(pretrained, pretrained_cfg, cache_dir, **dict(kwargs, use_prior=False))


def tiny_moe_agiqa_kwargs() -> dict:
    """Config of ``test_moe_agiqa``: 32 px crops, patch 8 -> 4 x 4 tokens, ViTs 32-d x 3 blocks (all hooked),
    BLIP image encoder 48-d x 2 blocks, text encoder 32-d x 2 layers over a 64-token vocabulary, 16 prompt tokens,
    fused width 32 with 2 x 16 attention heads, 4 experts / top-3 as released; the `agiqa synth` tokenizer."""
    return dict(
        img_size=32, patch_size=8, embed_dim=32, vit_depth=3, vit_num_heads=2, hooked_blocks=(0, 1, 2),
        blip_image_size=32, blip_patch_size=8, blip_embed_dim=48, blip_depth=2, blip_num_heads=2,
        text_vocab_size=64, text_hidden_size=32, text_layers=2, text_heads=2, text_intermediate_size=64,
        text_max_positions=64, max_prompt_tokens=16, hidden_dim=32, attn_heads=2, attn_head_dim=16,
        tokenizer=SYNTH_TOKENIZER,
    )


@register_model
def moe_agiqa_prior(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqaPrior:
    """The KonIQ-10k prior network of MoE-AGIQA v2 (``agiqa pretrain-prior``); loads official prior files."""
    return build_model_with_cfg(MoeAgiqaPrior, MoeAgiqaPriorConfig, pretrained, pretrained_cfg,
                                filter_fn=_prior_filter, cache_dir=cache_dir, **kwargs)


@register_model
def test_moe_agiqa_prior(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqaPrior:
    """The prior network at the size of ``test_moe_agiqa``'s ViTs (32 px, patch 8, 32-d x 3 blocks)."""
    tiny = {k: v for k, v in tiny_moe_agiqa_kwargs().items() if k in ("img_size", "patch_size", "embed_dim",
                                                                      "vit_depth", "vit_num_heads")}
    return moe_agiqa_prior(pretrained, pretrained_cfg, cache_dir, **dict(tiny, **kwargs))


@register_model
def test_moe_agiqa(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MoeAgiqa:
    """Tiny MoE-AGIQA for tests and quick experiments (see ``tiny_moe_agiqa_kwargs``); milliseconds on a CPU."""
    return _create(pretrained, pretrained_cfg, cache_dir, **dict(tiny_moe_agiqa_kwargs(), **kwargs))

