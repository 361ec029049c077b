"""Image preprocessing shared by training, evaluation and scoring (the official MA-AGIQA conventions)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_image(image, size: int) -> torch.Tensor:
    """PIL RGB → uint8 (3, size, size), bicubic without antialiasing (a = -0.75, as cv2.INTER_CUBIC officially)."""
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    resized = F.interpolate(array[None].float(), size=(size, size), mode="bicubic", align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB → float with mean = std = 0.5, the MANIQA / MA-AGIQA input convention."""
    return images_uint8.float().div(255.0).sub(0.5).div(0.5)


def augment(image: torch.Tensor, prob: float) -> torch.Tensor:
    """Official training augmentation: rotate by 90/180/270° with p, then flip the H axis with p.

    Draws from torch's global RNG, which `seed_everything(..., workers=True)` seeds per data-loader worker.
    """
    if torch.rand(()) < prob:
        quarter_turns = int(torch.randint(1, 4, ()))
        image = torch.rot90(image, quarter_turns, dims=(1, 2))
    if torch.rand(()) < prob:
        image = torch.flip(image, dims=(1,))
    return image
