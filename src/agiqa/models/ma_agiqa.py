"""MA-AGIQA: MANIQA quality features fused with multimodal-LLM semantic features by a gated mixture of experts.

Paper: "Large Multi-modality Model Assisted AI-Generated Image Quality Assessment" (Wang et al., ACM MM 2024,
arXiv:2404.17762). Official code: https://github.com/wangpuyi/MA-AGIQA (behaviour matched at 11c0cda; code is ours).
"""
from __future__ import annotations

import logging
import string
from dataclasses import dataclass

import torch
from torch import nn

from agiqa.models._builder import build_model_with_cfg
from agiqa.models._config import check_targets, per_target
from agiqa.models._pretrained import PretrainedCfg
from agiqa.models._registry import register_model
from agiqa.models.maniqa import Maniqa, ManiqaConfig, _tiny_maniqa_kwargs, full_precision
from agiqa.models.maniqa import checkpoint_filter_fn as maniqa_checkpoint_filter_fn
from agiqa.semantic.levels import LEVEL_COUNT

_logger = logging.getLogger(__name__)

__all__ = ["MaAgiqa", "MaAgiqaConfig", "AdaptiveFusion", "OFFICIAL_UNUSED_PREFIXES"]

GATE_ACTIVATIONS = ("none", "sigmoid", "softmax")
FUSIONS = ("moe", "concat")

MANIQA_MODULE_PREFIXES = ("vit.", "tablock1.", "conv1.", "swintransformer1.", "tablock2.", "conv2.",
                          "swintransformer2.", "fc_score.", "fc_weight.")

# Modules present in the released AGIQA-3K state dict but never used by its forward pass.
OFFICIAL_UNUSED_PREFIXES = (
    "fc39_784.",
    "encoder_layer.",
    "fc_output.",
    "fc4096_784_a.",
    "fc4096_784_b.",
    "quality.",
    "fc784x3_1.",
    "fc4096_1024_a.",
    "fc4096_1024_b.",
)


@dataclass
class MaAgiqaConfig(ManiqaConfig):
    """MA-AGIQA hyper-parameters; defaults reproduce the released model (MANIQA + 2 mPLUG-Owl2 experts, raw gates).

    Args:
        semantic_dim: width of each LMM feature (4096 for mPLUG-Owl2's LLaMA-2-7B).
        semantic_experts: which prompts of the feature cache feed an expert, by index (0 = semantic content,
            1 = coherence); `()` gives the MANIQA-only ablation.
        use_maniqa: whether the MANIQA expert is on (False gives the LMM-only ablation of paper Table 3).
        level_prompts: prompts whose level-word probabilities (features extracted with answer prefixes, see
            `agiqa.semantic.levels`; each vector then ends with 5 probabilities) feed one extra expert, `levels`,
            gated beside the others; `()` (default, as released) leaves it out.
        fusion: "moe" (gated sum, the paper) or "concat" (concatenation + regression, paper Table 5).
        gate_activation: "none" as released, "sigmoid" as the paper describes, or "softmax".
        concat_hidden: hidden width of the concatenation head.
        targets: names of the outputs; one (the default) gives the released (B,) scores and state dict, several
            widen the final regression layer to one output per target and `forward` returns (B, T).
    """

    semantic_dim: int = 4096
    semantic_experts: tuple[int, ...] = (0, 1)
    use_maniqa: bool = True
    level_prompts: tuple[int, ...] = ()
    fusion: str = "moe"
    gate_activation: str = "none"
    concat_hidden: int = 128
    targets: tuple[str, ...] = ("quality",)

    def __post_init__(self):
        super().__post_init__()
        check_targets(self.targets)
        self.semantic_experts = tuple(int(i) for i in self.semantic_experts)
        self.level_prompts = tuple(int(i) for i in self.level_prompts)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.gate_activation not in GATE_ACTIVATIONS:
            raise ValueError(f"gate_activation must be one of {GATE_ACTIVATIONS}, got {self.gate_activation!r}")
        if not self.use_maniqa and not self.semantic_experts and not self.level_prompts:
            raise ValueError("MA-AGIQA needs at least one expert: use_maniqa=True, semantic_experts or "
                             "level_prompts")
        if len(set(self.semantic_experts)) != len(self.semantic_experts):
            raise ValueError(f"semantic_experts has duplicates: {self.semantic_experts}")


def semantic_projection_name(semantic_dim: int, fused_dim: int, prompt_index: int) -> str:
    """Official names for prompt 0/1 at 4096→784 (`fc4096_784_a2`, `fc4096_784_b2`); same pattern for any size."""
    return f"fc{semantic_dim}_{fused_dim}_{string.ascii_lowercase[prompt_index]}2"


class AfmLayers:
    """The adaptive fusion module (AFM, paper Sec. 3.3) as a mixin: project experts, gate, sum, regress.

    Layer names follow the released checkpoint and sit directly on the host module: `fc784_784` (MANIQA expert,
    no activation), `fc4096_784_{a,b}2` (LMM experts: Linear, ReLU, Dropout), `gating` over the concatenated
    experts in the official order [semantic..., maniqa], `output_fc`. Names are built from the sizes, so other
    sizes get names of the same pattern.
    """

    config: MaAgiqaConfig

    def _build_afm(self, config: MaAgiqaConfig) -> None:
        fused = config.num_patches
        self.visual_expert_name = f"fc{fused}_{fused}"
        self.semantic_expert_names = [
            semantic_projection_name(config.semantic_dim, fused, i) for i in config.semantic_experts
        ]
        if config.use_maniqa:
            self.add_module(self.visual_expert_name, nn.Linear(fused, fused))
        for name in self.semantic_expert_names:
            self.add_module(name, nn.Sequential(nn.Linear(config.semantic_dim, fused), nn.ReLU(),
                                                nn.Dropout(config.drop)))
        if config.level_prompts:
            self.fc_levels = nn.Sequential(nn.Linear(LEVEL_COUNT * len(config.level_prompts), fused), nn.ReLU(),
                                           nn.Dropout(config.drop))
        num_experts, num_targets = self.num_experts, len(config.targets)
        if config.fusion == "moe":
            self.gating = nn.Linear(fused * num_experts, num_experts)
            self.output_fc = nn.Linear(fused, num_targets)
        else:
            self.concat_head = nn.Sequential(
                nn.Linear(fused * num_experts, config.concat_hidden), nn.Linear(config.concat_hidden, num_targets)
            )

    @property
    def num_experts(self) -> int:
        return len(self.semantic_expert_names) + bool(self.config.level_prompts) + int(self.config.use_maniqa)

    def experts(self, visual: torch.Tensor | None, semantic: torch.Tensor | None) -> torch.Tensor:
        """Transformed experts stacked in the official order [semantic..., (levels), maniqa] → (B, E, num_patches)."""
        outputs = []
        if self.semantic_expert_names or self.config.level_prompts:
            self._check_semantic(semantic)
            semantic = semantic.float()
            hidden = semantic[..., :self.config.semantic_dim]
            for name, index in zip(self.semantic_expert_names, self.config.semantic_experts):
                outputs.append(getattr(self, name)(hidden[:, index]))
        if self.config.level_prompts:
            levels = semantic[:, list(self.config.level_prompts), self.config.semantic_dim:]
            outputs.append(self.fc_levels(levels.flatten(1)))
        if self.config.use_maniqa:
            outputs.append(getattr(self, self.visual_expert_name)(visual.float()))
        return torch.stack(outputs, dim=1)

    def _check_semantic(self, semantic: torch.Tensor | None) -> None:
        if semantic is None:
            raise ValueError("this MA-AGIQA variant needs semantic features: pass `semantic` of shape (B, P, D)")
        width = self.config.semantic_dim + (LEVEL_COUNT if self.config.level_prompts else 0)
        if semantic.dim() != 3 or semantic.shape[-1] != width:
            levels = (f" (semantic_dim + {LEVEL_COUNT} level probabilities: extract with answer prefixes)"
                      if self.config.level_prompts else "")
            raise ValueError(f"semantic features must be (B, P, {width}){levels}, got {tuple(semantic.shape)}")
        needed = max(self.config.semantic_experts + self.config.level_prompts) + 1
        if semantic.shape[1] < needed:
            raise ValueError(f"semantic features hold {semantic.shape[1]} prompts; expert indices need {needed}")

    def gates(self, experts: torch.Tensor) -> torch.Tensor:
        """Per-expert weights (B, E): raw linear outputs as released, unless `gate_activation` says otherwise."""
        logits = self.gating(experts.flatten(1))
        if self.config.gate_activation == "sigmoid":
            return torch.sigmoid(logits)
        if self.config.gate_activation == "softmax":
            return torch.softmax(logits, dim=-1)
        return logits

    def fuse(self, visual: torch.Tensor | None, semantic: torch.Tensor | None = None) -> torch.Tensor:
        """Fused quality representation (B, num_patches) for MoE, or the concatenated experts for "concat".

        Runs in fp32 under autocast too (see `agiqa.models.maniqa.full_precision`); its cost is negligible.
        """
        with full_precision(visual if visual is not None else semantic):
            experts = self.experts(visual, semantic)
            if self.config.fusion == "concat":
                return experts.flatten(1)
            return torch.bmm(self.gates(experts).unsqueeze(1), experts).squeeze(1)

    @property
    def expert_names(self) -> list[str]:
        """AFM experts in gate order (`semantic<prompt>`..., `levels`, `maniqa`); none for concatenation fusion (no
        gates)."""
        if self.config.fusion != "moe":
            return []
        return ([f"semantic{i}" for i in self.config.semantic_experts] + ["levels"] * bool(self.config.level_prompts)
                + ["maniqa"] * int(self.config.use_maniqa))

    def explain_fusion(self, visual: torch.Tensor | None, semantic: torch.Tensor | None = None) -> dict:
        """The score (B,) with the gate weights (B, E) and each expert's own score (B, E): the head applied to that
        expert alone, so that score = sum_e gate_e * (expert_e - bias) + bias. Several targets add a last
        dimension T to the score and the expert scores."""
        num_targets = len(self.config.targets)
        with full_precision(visual if visual is not None else semantic):
            experts = self.experts(visual, semantic)
            gates = self.gates(experts)
            fused = torch.bmm(gates.unsqueeze(1), experts).squeeze(1)
            return {"score": per_target(self.output_fc(fused), num_targets), "gate": gates,
                    "expert_score": per_target(self.output_fc(experts), num_targets)}

    def regress(self, fused: torch.Tensor) -> torch.Tensor:
        """Scores (B,) (or (B, T) for several targets) from `fuse`'s output, in fp32 under autocast too."""
        head = self.concat_head if self.config.fusion == "concat" else self.output_fc
        with full_precision(fused):
            return per_target(head(fused.float()), len(self.config.targets))


class AdaptiveFusion(AfmLayers, nn.Module):
    """The AFM alone, for experts computed elsewhere: `AdaptiveFusion(cfg)(visual, semantic) -> (B,)`."""

    def __init__(self, config: MaAgiqaConfig):
        nn.Module.__init__(self)
        self.config = config
        self._build_afm(config)

    def forward(self, visual: torch.Tensor | None, semantic: torch.Tensor | None = None) -> torch.Tensor:
        return self.regress(self.fuse(visual, semantic))


class MaAgiqa(AfmLayers, Maniqa):
    """MA-AGIQA: a MANIQA backbone (parameters keep their top-level names `vit.*`, `tablock1.*` ...) plus the AFM.

    Inputs: `x` (B, 3, H, W) normalised with mean = std = 0.5 (see `Maniqa`); `semantic` (B, P, semantic_dim)
    LMM features from the feature cache (P prompts, indexed by `semantic_experts`). Output: (B,) scores in the
    units of the training MOS, or (B, T) with several `targets` (columns in `config.targets` order).
    """

    config_class = MaAgiqaConfig
    input_names = ("image", "semantic")

    def __init__(self, config: MaAgiqaConfig | None = None):
        config = config or MaAgiqaConfig()
        Maniqa.__init__(self, config)
        self._build_afm(config)

    def unused_parameter_names(self) -> list[str]:
        """Beyond MANIQA's unused parameters, the whole MANIQA branch when its expert is switched off."""
        if self.config.use_maniqa:
            return Maniqa.unused_parameter_names(self)
        return [name for name, _ in self.named_parameters() if name.startswith(MANIQA_MODULE_PREFIXES)]

    def forward_features(self, x: torch.Tensor | None, semantic: torch.Tensor | None = None) -> torch.Tensor:
        """Fused representation (B, num_patches) (or concatenated experts); `x` may be None for LMM-only variants."""
        visual = Maniqa.forward_features(self, x) if self.config.use_maniqa else None
        return self.fuse(visual, semantic)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.regress(features)

    def forward(self, x: torch.Tensor | None, semantic: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, semantic))

    def explain(self, x: torch.Tensor | None, semantic: torch.Tensor | None = None) -> dict:
        """`forward`'s score with the AFM's gate weights and per-expert scores (see `explain_fusion`; concatenation
        fusion has no gates: score only) and, with the MANIQA expert, its `patch_map` (B, H, W) (see
        `Maniqa.explain`)."""
        visual = Maniqa.forward_features(self, x) if self.config.use_maniqa else None
        if self.expert_names:
            parts = self.explain_fusion(visual, semantic)
        else:
            parts = {"score": self.regress(self.fuse(visual, semantic))}
        if visual is not None:
            parts["patch_map"] = self.grid_map(visual)
        return parts


def checkpoint_filter_fn(state_dict: dict, model: MaAgiqa) -> dict:
    """Official MA-AGIQA checkpoint → our keys: unwrap, strip `module.`, drop exactly the documented unused modules.

    Everything else is kept, so the strict load names any key that does not fit this model variant.
    """
    state_dict = maniqa_checkpoint_filter_fn(state_dict, model, keep_unknown=True)
    dropped = sorted({key.split(".", 1)[0] for key in state_dict if key.startswith(OFFICIAL_UNUSED_PREFIXES)})
    if dropped:
        _logger.info("Dropping modules the released MA-AGIQA never uses: %s", ", ".join(dropped))
    return {key: value for key, value in state_dict.items() if not key.startswith(OFFICIAL_UNUSED_PREFIXES)}


def _cfg(**kwargs) -> PretrainedCfg:
    defaults = dict(
        score_range=(0.0, 5.0),
        lower_better=False,
        split_seed=20,
        official=True,
        paper_ids=("arXiv:2404.17762",),
        origin_url="https://github.com/wangpuyi/MA-AGIQA",
        license="see origin",
    )
    defaults.update(kwargs)
    return PretrainedCfg(**defaults)


default_cfgs = {
    "ma_agiqa.agiqa3k": _cfg(
        tag="agiqa3k",
        train_dataset="agiqa3k",
        hf_hub_filename="AGIQA_3k.pt",  # the name main.py saves: checkpt/{dataset_name}.pt
        notes="Official AGIQA-3K checkpoint (Google Drive link in the official README); pass it with "
        "`pretrained='/path/to/AGIQA_3k.pt'` or put it in $AGIQA_WEIGHTS_DIR. Needs mPLUG-Owl2 features.",
    ),
}


def _create_ma_agiqa(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MaAgiqa:
    return build_model_with_cfg(
        MaAgiqa, MaAgiqaConfig, pretrained, pretrained_cfg, filter_fn=checkpoint_filter_fn, cache_dir=cache_dir,
        **kwargs
    )


@register_model
def ma_agiqa(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MaAgiqa:
    """MA-AGIQA as released: ViT-B/8 MANIQA + two 4096-d mPLUG-Owl2 experts, raw gates."""
    return _create_ma_agiqa(pretrained, pretrained_cfg, cache_dir, **kwargs)


@register_model
def test_ma_agiqa(pretrained=False, pretrained_cfg=None, cache_dir=None, **kwargs) -> MaAgiqa:
    """Tiny MA-AGIQA for tests and the demo (32 px input, 16 patches, 32-d semantic features)."""
    model_args = dict(_tiny_maniqa_kwargs(), semantic_dim=32)
    model_args.update(kwargs)
    return _create_ma_agiqa(pretrained, pretrained_cfg, cache_dir, **model_args)
