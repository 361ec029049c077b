"""Test-time views and their batched prediction (tiny images / tiny model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agiqa.models import create_model
from agiqa.scoring.crops import crop_offsets, crop_views, pad_to_min_size, predict_views
from agiqa.scoring.inference import batched_forward, inference_context


def image(h: int = 50, w: int = 70, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_top_left_is_the_official_validation_crop():
    img = image()
    views = crop_views(img, 32, "top_left")
    assert views.shape == (1, 3, 32, 32)
    assert torch.equal(views[0], img[:, :32, :32])


def test_random_crops_follow_the_official_numpy_stream():
    img = image(60, 80)
    views = crop_views(img, 32, "random", n=6, seed=20)
    assert views.shape == (6, 3, 32, 32)
    np.random.seed(20)  # official predict_one_image.py: setup_seed(20), then top/left per crop, upper bound exclusive
    expected = [(np.random.randint(0, 60 - 32), np.random.randint(0, 80 - 32)) for _ in range(6)]
    assert crop_offsets(60, 80, 32, "random", n=6, seed=20) == expected
    for view, (top, left) in zip(views, expected):
        assert torch.equal(view, img[:, top : top + 32, left : left + 32])
    assert torch.equal(crop_views(img, 32, "random", n=6, seed=20), views)  # deterministic per seed
    assert not torch.equal(crop_views(img, 32, "random", n=6, seed=21), views)


def test_random_crop_on_exact_size_side():
    assert crop_offsets(32, 40, 32, "random", n=3, seed=0)[0][0] == 0


def test_five_crop_order_matches_official():
    assert crop_offsets(50, 70, 32, "five") == [(0, 0), (0, 38), (18, 0), (18, 38), (9, 19)]
    assert crop_views(image(), 32, "five").shape == (5, 3, 32, 32)


def test_grid_covers_the_image():
    offsets = crop_offsets(50, 70, 32, "grid")
    assert offsets == [(0, 0), (0, 19), (0, 38), (18, 0), (18, 19), (18, 38)]
    covered = torch.zeros(50, 70, dtype=torch.bool)
    for top, left in offsets:
        covered[top : top + 32, left : left + 32] = True
    assert covered.all()
    assert crop_offsets(64, 64, 32, "grid") == [(0, 0), (0, 32), (32, 0), (32, 32)]


def test_small_images_are_padded_centred_with_mid_grey():
    img = image(20, 40)
    padded = pad_to_min_size(img, 32)
    assert padded.shape == (3, 32, 40)
    assert torch.equal(padded[:, 6:26, :], img)
    assert torch.all(padded[:, :6] == 0.5) and torch.all(padded[:, 26:] == 0.5)
    views = crop_views(img, 32, "five")
    assert views.shape == (5, 3, 32, 32)
    tiny = image(5, 5)
    for mode in ("reflect", "replicate"):
        assert pad_to_min_size(tiny, 32, pad_mode=mode).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="pad_mode"):
        pad_to_min_size(tiny, 32, pad_mode="wrap")


def test_resize_mode_and_batches():
    img = image()
    resized = crop_views(img, 32, "resize")
    assert resized.shape == (1, 3, 32, 32) and resized.min() >= 0 and resized.max() <= 1
    batch = torch.stack([image(seed=1), image(seed=2)])
    views = crop_views(batch, 32, "five")
    assert views.shape == (2, 5, 3, 32, 32)
    assert torch.equal(views[1], crop_views(batch[1], 32, "five"))
    assert crop_views(batch, 32, "resize").shape == (2, 1, 3, 32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        crop_views(image(), 32, "middle")
    with pytest.raises(ValueError, match="RGB"):
        crop_views(torch.rand(1, 40, 40), 32)
    with pytest.raises(ValueError, match="float"):
        crop_views(torch.zeros(3, 40, 40, dtype=torch.uint8), 32)


class MeanModel(nn.Module):
    """Score = mean pixel value of the normalised input; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return x.mean(dim=(1, 2, 3)) * self.scale


def test_predict_views_means_over_views_in_batches():
    model = MeanModel()
    views = crop_views(torch.stack([image(seed=1), image(seed=2)]), 32, "random", n=5)
    scores = predict_views(model, views, batch_size=4, precision="fp32")
    expected = ((views - 0.5) / 0.5).mean(dim=(2, 3, 4)).mean(dim=1)
    torch.testing.assert_close(scores, expected)
    assert model.batches == [4, 4, 2]
    single = predict_views(model, views[0], batch_size=32, precision="fp32")
    assert single.dim() == 0
    torch.testing.assert_close(single, expected[0])


def test_predict_views_with_tiny_maniqa_is_chunk_invariant():
    torch.manual_seed(0)
    model = create_model("test_maniqa").eval()
    with torch.no_grad():
        model.fc_score[3].bias.fill_(0.5)
    views = crop_views(image(48, 64), 32, "grid")
    a = predict_views(model, views, batch_size=1, precision="fp32")
    b = predict_views(model, views, batch_size=32, precision="fp32")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    auto = predict_views(model, views, batch_size=32, precision="auto")  # bf16 on CPUs with AMX / AVX512-BF16
    torch.testing.assert_close(auto, a, rtol=0, atol=1e-2)
    with torch.no_grad():
        direct = model(model.normalize(views)).mean()
    torch.testing.assert_close(a, direct, rtol=1e-5, atol=1e-6)


def test_inference_context_and_batched_forward():
    with inference_context("fp32", "cpu") as precision:
        assert precision == "fp32" and torch.is_inference_mode_enabled()
    out = batched_forward(MeanModel(), torch.rand(5, 3, 4, 4), batch_size=2, precision="fp32")
    assert out.shape == (5,) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="batch_size"):
        batched_forward(MeanModel(), torch.rand(1, 3, 4, 4), batch_size=0)
