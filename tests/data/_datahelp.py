"""Shared helpers for the data tests: stand-in images and dataset roots built from the real label files."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

# shared/data file prefix -> official file name under the dataset root
OFFICIAL_FILES = {
    "agiqa3k": {"agiqa3k_data.csv": "data.csv"},
    "agiqa1k": {"agiqa1k_AIGC_all.csv": "AIGC_all.csv", "agiqa1k_AIGC_MOS_Zscore.xlsx": "AIGC_MOS_Zscore.xlsx"},
    "aigciqa2023": {"aigciqa2023_AIGCIQA2023.csv": "AIGCIQA2023.csv", "aigciqa2023_pic-index.xlsx": "pic-index.xlsx"},
    "aigiqa20k": {"aigiqa20k_info_train.csv": "info_train.csv"},
}


def png_bytes(size: int = 8, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_root(shared_data: Path, dataset: str, root: Path) -> Path:
    """Copy a dataset's real label files into `root` under their official names."""
    root.mkdir(parents=True, exist_ok=True)
    for source, official in OFFICIAL_FILES[dataset].items():
        shutil.copy(shared_data / source, root / official)
    return root


def write_images(image_dir: Path, names, data: bytes | None = None) -> None:
    """Write the same tiny PNG under every name (creating sub-folders)."""
    data = png_bytes() if data is None else data
    image_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = image_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
