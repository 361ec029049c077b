"""Semantic features for MA-AGIQA: a frozen multimodal LLM's mean-pooled hidden states answering fixed questions.

    from agiqa.semantic import create_encoder, extract_features, load_features
    enc = create_encoder("Qwen/Qwen2-VL-2B-Instruct")               # or a local folder, or (model, processor)
    extract_features(paths, enc, "cache/agiqa3k-qwen2vl")            # resumable, sharded, content-hash keyed
    feats = load_features("cache/agiqa3k-qwen2vl", paths)            # (N, 2, D) float32, aligned with paths

The paper's features (mPLUG-Owl2) come from `create_encoder("MAGAer13/mplug-owl2-llama2-7b")` (our own implementation,
`agiqa.semantic.owl2`; no extra package), or from the official `.pt` files via `import_official_features`.
"""
from __future__ import annotations

from agiqa._lazy import lazy_getattr

# Resolved lazily so that `agiqa --help` (which imports `agiqa.semantic.cli`) does not import torch/transformers.
_EXPORTS = {
    "PAPER_PROMPT_NAMES": "agiqa.semantic.base",
    "PAPER_PROMPTS": "agiqa.semantic.base",
    "POOLINGS": "agiqa.semantic.base",
    "SemanticEncoder": "agiqa.semantic.base",
    "SemanticEncoderError": "agiqa.semantic.base",
    "fill_prompt": "agiqa.semantic.base",
    "prompt_names": "agiqa.semantic.base",
    "FeatureCache": "agiqa.semantic.cache",
    "FeatureCacheError": "agiqa.semantic.cache",
    "MissingFeaturesError": "agiqa.semantic.cache",
    "StaleFeatureCacheError": "agiqa.semantic.cache",
    "feature_key": "agiqa.semantic.cache",
    "sha256_file": "agiqa.semantic.cache",
    "ExtractionReport": "agiqa.semantic.extract",
    "extract_features": "agiqa.semantic.extract",
    "load_features": "agiqa.semantic.extract",
    "HFVLMEncoder": "agiqa.semantic.hf",
    "MPLUG_OWL2_ID": "agiqa.semantic.mplug_owl2",
    "MplugOwl2Encoder": "agiqa.semantic.mplug_owl2",
    "OfficialMplugOwl2Encoder": "agiqa.semantic.mplug_owl2",
    "is_mplug_owl2": "agiqa.semantic.mplug_owl2",
    "OFFICIAL_ENCODER": "agiqa.semantic.official",
    "import_official_features": "agiqa.semantic.official",
    "official_fingerprint": "agiqa.semantic.official",
    "create_encoder": "agiqa.semantic.factory",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
