"""Shared fixtures: tiny random-weight Qwen2-VL and LLaVA (built here, no downloads) and small test images."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

from _tiny import tiny_llava, tiny_qwen2_vl  # noqa: E402


@pytest.fixture(scope="session")
def qwen_pair():
    return tiny_qwen2_vl(seed=0)


@pytest.fixture(scope="session")
def llava_pair():
    return tiny_llava(seed=0)


@pytest.fixture(params=["qwen2_vl", "llava"], scope="session")
def vlm_pair(request, qwen_pair, llava_pair):
    return {"qwen2_vl": qwen_pair, "llava": llava_pair}[request.param]


@pytest.fixture(scope="session")
def qwen_encoder(qwen_pair):
    from agiqa.semantic import HFVLMEncoder

    model, processor = qwen_pair
    return HFVLMEncoder(model, processor, name="tiny-qwen2-vl", precision="fp32", device="cpu")


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of varied sizes and aspect ratios."""
    rng = np.random.RandomState(seed)
    sizes = [(40, 56), (56, 40), (48, 48), (30, 70), (64, 32)]
    return [Image.fromarray(rng.randint(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture
def image_files(tmp_path):
    """Seven PNG files on disk (distinct content)."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i, img in enumerate(make_images(7, seed=1)):
        path = folder / f"img_{i:02d}.png"
        img.save(path)
        paths.append(str(path))
    return paths
