"""Preprocessing shared by training and scoring: resize, normalisation, the official augmentation."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from agiqa.data.transforms import augment, normalize, resize_image


def test_resize_keeps_flat_colours_and_gives_uint8_chw():
    image = Image.fromarray(np.full((40, 60, 3), (10, 128, 250), dtype=np.uint8))
    out = resize_image(image, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert out[:, 5, 7].tolist() == [10, 128, 250]


def test_resize_matches_bicubic_without_antialias():
    array = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    expected = torch.nn.functional.interpolate(torch.from_numpy(array).permute(2, 0, 1)[None].float(), size=(16, 16),
                                               mode="bicubic", align_corners=False, antialias=False)
    assert torch.equal(resize_image(Image.fromarray(array), 16), expected[0].round().clamp(0, 255).to(torch.uint8))


def test_normalize_maps_0_255_to_minus1_1():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1)
    assert normalize(x).flatten().tolist() == [-1.0, 1.0]


def test_augment_is_identity_at_p0_and_only_rotates_or_flips_at_p1():
    torch.manual_seed(0)
    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4)
    assert torch.equal(augment(image, 0.0), image)
    candidates = [torch.flip(torch.rot90(image, k, dims=(1, 2)), dims=(1,)) for k in (1, 2, 3)]
    for _ in range(10):
        out = augment(image, 1.0)
        assert any(torch.equal(out, c) for c in candidates)
