"""`Owl2Config`: the sizes of an mPLUG-Owl2 checkpoint, read from and written to its released `config.json` layout.

The released config (model_type `mplug_owl2`) is a LLaMA config plus `visual_config = {"visual_model": {...},
"visual_abstractor": {...}}`. Defaults are those of the official config classes (X-PLUG/mPLUG-Owl,
mPLUG-Owl2/mplug_owl2/model/configuration_mplug_owl2.py): LLaMA-2-7B sizes, a CLIP ViT-L/14 at 448 px and a 6-layer
visual abstractor with 64 learned queries. Keys we do not use are kept and written back unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agiqa.semantic.base import SemanticEncoderError

MODEL_TYPE = "mplug_owl2"
ARCHITECTURE = "MPLUGOwl2LlamaForCausalLM"


class Owl2ConfigError(SemanticEncoderError, ValueError):
    """A config.json that does not describe an mPLUG-Owl2 (LLaMA) model we can build."""


@dataclass
class VisionConfig:
    """The CLIP-style vision encoder (`model.vision_model`)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    hidden_act: str = "quick_gelu"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class AbstractorConfig:
    """The visual abstractor (`model.visual_abstractor`): learned queries cross-attending to the vision tokens."""

    hidden_size: int = 1024
    encoder_hidden_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    num_learnable_queries: int = 64
    layer_norm_eps: float = 1e-6
    grid_size: int = 32


@dataclass
class Owl2Config:
    """LLaMA decoder sizes + the two visual configs. `extra` holds every other key of the released config.json."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int = 1
    eos_token_id: int = 2
    vision: VisionConfig = field(default_factory=VisionConfig)
    abstractor: AbstractorConfig = field(default_factory=AbstractorConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_visual_tokens(self) -> int:
        """Tokens one `<|image|>` placeholder becomes: the learned queries + the end-of-image token."""
        return self.abstractor.num_learnable_queries + 1

    def validate(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by num_attention_heads "
                            f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads not a multiple of num_key_value_heads")
        if self.vision.hidden_size % self.vision.num_attention_heads:
            problems.append("visual_model hidden_size not divisible by its num_attention_heads")
        if self.abstractor.hidden_size % self.abstractor.num_attention_heads:
            problems.append("visual_abstractor hidden_size not divisible by its num_attention_heads")
        if self.abstractor.encoder_hidden_size != self.vision.hidden_size:
            problems.append(f"visual_abstractor encoder_hidden_size {self.abstractor.encoder_hidden_size} != "
                            f"visual_model hidden_size {self.vision.hidden_size}")
        if self.abstractor.hidden_size != self.abstractor.encoder_hidden_size:
            problems.append("visual_abstractor hidden_size must equal its encoder_hidden_size (as released)")
        if self.abstractor.grid_size != self.vision.grid:
            problems.append(f"visual_abstractor grid_size {self.abstractor.grid_size} != visual_model image_size / "
                            f"patch_size = {self.vision.grid}")
        if self.rope_scaling is not None:
            problems.append(f"rope_scaling {self.rope_scaling} is not supported (the released models have none)")
        if self.vision.hidden_act != "quick_gelu" or self.hidden_act != "silu":
            problems.append(f"activations {self.vision.hidden_act}/{self.hidden_act}: only quick_gelu/silu "
                            "(as released)")
        if problems:
            raise Owl2ConfigError("; ".join(problems))

    # ------------------------------------------------------------------ released layout
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Owl2Config:
        """From the released config.json dict (refused with one line when it is not an mPLUG-Owl2 LLaMA config)."""
        model_type = raw.get("model_type")
        if model_type != MODEL_TYPE:
            raise Owl2ConfigError(f"model_type is {model_type!r}, not {MODEL_TYPE!r}: not an mPLUG-Owl2 (LLaMA) "
                                  "checkpoint")
        raw = copy.deepcopy(raw)
        visual = raw.pop("visual_config", None) or {}
        unsupported = _unsupported_visual_options(visual)
        if unsupported:
            raise Owl2ConfigError(f"visual_config sets {unsupported}: not supported (the released models use the "
                                  "defaults)")
        vision = _pick(VisionConfig, visual.get("visual_model", {}))
        abstractor = _pick(AbstractorConfig, visual.get("visual_abstractor", {}))
        fields = {f.name for f in dataclasses.fields(cls)} - {"vision", "abstractor", "extra"}
        known = {k: raw.pop(k) for k in list(raw) if k in fields}
        try:
            return cls(**known, vision=vision, abstractor=abstractor, extra=raw)
        except TypeError as err:
            raise Owl2ConfigError(f"config.json: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """The released config.json layout (with the keys we do not use carried over)."""
        out = {"model_type": MODEL_TYPE, "architectures": [ARCHITECTURE], **self.extra}
        for f in dataclasses.fields(self):
            if f.name not in ("vision", "abstractor", "extra"):
                out[f.name] = getattr(self, f.name)
        visual = copy.deepcopy(self.extra.get("visual_config", {}))
        visual.setdefault("visual_model", {}).update(dataclasses.asdict(self.vision))
        visual.setdefault("visual_abstractor", {}).update(dataclasses.asdict(self.abstractor))
        out["visual_config"] = visual
        out["model_type"] = MODEL_TYPE
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Owl2Config:
        path = Path(folder) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise Owl2ConfigError(f"{folder}: no config.json (not a model folder)") from None
        except (OSError, ValueError) as err:
            raise Owl2ConfigError(f"{path}: unreadable ({err})") from err
        if not isinstance(raw, dict):
            raise Owl2ConfigError(f"{path}: not a JSON object")
        try:
            return cls.from_dict(raw)
        except Owl2ConfigError as err:
            raise Owl2ConfigError(f"{path}: {err}") from None

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _unsupported_visual_options(visual: dict[str, Any]) -> list[str]:
    """Options of the official config classes that change the architecture away from the released one."""
    model, abstractor = visual.get("visual_model", {}), visual.get("visual_abstractor", {})
    wrong = [f"visual_model.{k}={model[k]!r}" for k in ("use_cls_token", "use_post_layernorm")
             if k in model and model[k] is not True]
    if abstractor.get("add_v2t_pos_emb"):
        wrong.append("visual_abstractor.add_v2t_pos_emb=True")
    return wrong


def _pick(kind, raw: dict[str, Any]):
    """A sub-config from the released dict: known keys only (the released dicts also hold PretrainedConfig noise)."""
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in raw.items() if k in names})
