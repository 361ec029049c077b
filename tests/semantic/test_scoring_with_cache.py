"""Scoring an MA-AGIQA model with a feature cache: cached images are read, not encoded again; without an encoder,
images missing from the cache are error rows; the scores are those of encoding on the fly."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from test_cache import CountingEncoder

from agiqa.cli import main
from agiqa.models import create_model
from agiqa.scoring.scorer import Scorer
from agiqa.semantic import FeatureCache, extract_features


def test_cached_features_replace_the_encoder_and_missing_ones_are_reported(qwen_encoder, image_files, tmp_path):
    cache = tmp_path / "cache"
    extract_features(image_files[:-1], qwen_encoder, cache, batch_size=3, progress=False)  # the last is not cached
    torch.manual_seed(0)
    dim = FeatureCache(cache).fingerprint["feature_dim"]
    create_model("test_ma_agiqa", semantic_dim=dim).save_pretrained(tmp_path / "model")
    common = {"device": "cpu", "precision": "fp32", "batch_size": 4}
    expected = Scorer(tmp_path / "model", encoder=qwen_encoder, **common).score(image_files).scores

    counting = CountingEncoder(qwen_encoder)
    both = Scorer(tmp_path / "model", encoder=counting, features=cache, **common).score(image_files)
    assert counting.images == 1  # only the uncached image went through the VLM
    np.testing.assert_allclose(both.scores, expected, rtol=1e-4, atol=1e-5)

    out = tmp_path / "scores.csv"
    code = main(["score", str(tmp_path / "model"), *image_files, "--features", str(cache), "--out", str(out),
                 "--device", "cpu", "--precision", "fp32", "--workers", "1", "--batch-size", "4"])
    rows = pd.read_csv(out).set_index("image").loc[image_files]
    assert code == 1 and rows["score"].iloc[:-1].notna().all()
    assert rows["error"].iloc[-1].startswith("no semantic features for this image in the feature cache")
    np.testing.assert_allclose(rows["score"].iloc[:-1], expected[:-1], rtol=1e-4, atol=1e-5)
    gates = rows[["gate_semantic0", "gate_semantic1", "gate_maniqa"]].iloc[:-1]
    assert gates.notna().all().all()
