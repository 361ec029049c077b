"""mPLUG-Owl2 natively on current torch / transformers: no `mplug_owl2` package, no remote code.

    from agiqa.semantic.owl2 import load_model, Owl2Tokenizer, Owl2ImageProcessor
    model = load_model("/models/mplug-owl2-llama2-7b", device="cuda", dtype=torch.float16)

The paper's features and Q-Align's level scores come from `agiqa.semantic.mplug_owl2.MplugOwl2Encoder`, which uses
this package by default.
"""
from agiqa.semantic.owl2.checkpoint import (
    Owl2CheckpointError,
    build_empty,
    load_model,
    parameter_count,
    save_pretrained,
)
from agiqa.semantic.owl2.configuration import Owl2Config, Owl2ConfigError
from agiqa.semantic.owl2.modeling import IMAGE_TOKEN_INDEX, MplugOwl2ForCausalLM
from agiqa.semantic.owl2.processing import (
    IMAGE_PLACEHOLDER,
    Owl2ImageProcessor,
    Owl2ProcessingError,
    Owl2Tokenizer,
    tokenize_with_image,
)

__all__ = [
    "IMAGE_PLACEHOLDER", "IMAGE_TOKEN_INDEX", "MplugOwl2ForCausalLM", "Owl2CheckpointError", "Owl2Config",
    "Owl2ConfigError", "Owl2ImageProcessor", "Owl2ProcessingError", "Owl2Tokenizer", "build_empty", "load_model",
    "parameter_count", "save_pretrained", "tokenize_with_image",
]
