"""Text and image inputs of mPLUG-Owl2, as the released code prepares them (transformers 4.31's slow processors).

- `Owl2Tokenizer`: the checkpoint's LLaMA SentencePiece model (`tokenizer.model`), read with `sentencepiece`. It gives
  the ids that transformers 4.31's `LlamaTokenizer` (use_fast=False, as the release loads it) gives: BOS, then
  `SentencePieceProcessor.encode` of the text, with `<s>`, `</s>` and `<unk>` written in the text kept as their ids.
- `tokenize_with_image`: mplug_owl2.mm_utils.tokenizer_image_token: each `<|image|>` becomes `IMAGE_TOKEN_INDEX`,
  every chunk is tokenised on its own and only the first keeps its BOS.
- `Owl2ImageProcessor`: `CLIPImageProcessor` as configured by the checkpoint's preprocessor_config.json (shortest
  edge resized with PIL bicubic, centre crop, x/255 in float64 then float32, (x - mean) / std in float32), after
  padding to a square with the mean colour (`expand2square`) as MA-AGIQA and Q-Align do.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agiqa.semantic.base import SemanticEncoderError
from agiqa.semantic.hf import pad_to_square
from agiqa.semantic.owl2.modeling import IMAGE_TOKEN_INDEX

IMAGE_PLACEHOLDER = "<|image|>"
_SPECIAL = ("<s>", "</s>", "<unk>")


class Owl2ProcessingError(SemanticEncoderError, ValueError):
    """The checkpoint's tokenizer or image-processor files are missing or unusable."""


class Owl2Tokenizer:
    """LLaMA SentencePiece tokenizer with the slow `LlamaTokenizer`'s behaviour (see the module docstring)."""

    def __init__(self, model_file: str | Path, add_bos_token: bool = True):
        import sentencepiece

        self.model_file = str(model_file)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(self.model_file)
        except (OSError, RuntimeError) as err:
            raise Owl2ProcessingError(f"{model_file}: not a SentencePiece model ({err})") from None
        self.add_bos_token = add_bos_token
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        self._special_ids = {"<s>": self.bos_token_id, "</s>": self.eos_token_id, "<unk>": self.unk_token_id}

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Owl2Tokenizer:
        folder = Path(folder)
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise Owl2ProcessingError(f"{folder}: no tokenizer.model (the LLaMA SentencePiece tokenizer of an "
                                      "mPLUG-Owl2 checkpoint)")
        settings = _read_json(folder / "tokenizer_config.json", required=False)
        return cls(model_file, add_bos_token=bool(settings.get("add_bos_token", True)))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token else []
        for piece in re.split("(" + "|".join(map(re.escape, _SPECIAL)) + ")", text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        """transformers-style call (used by the level-word helpers): {"input_ids": [...]}."""
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]


def tokenize_with_image(prompt: str, tokenizer: Owl2Tokenizer) -> list[int]:
    """Token ids of a prompt holding `<|image|>` placeholders, as mplug_owl2's `tokenizer_image_token`."""
    chunks = [tokenizer.encode(chunk) if chunk else [] for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    keeps_bos = bool(chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id)
    offset = int(keeps_bos)
    ids = chunks[0][:1] if keeps_bos else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


class Owl2ImageProcessor:
    """Pixels for the vision encoder: square padding with the mean colour, then the checkpoint's CLIP processing."""

    def __init__(self, size: int = 448, crop_size: int = 448, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), resample: int = 3, do_resize: bool = True,
                 do_center_crop: bool = True, do_rescale: bool = True, rescale_factor: float = 1 / 255,
                 do_normalize: bool = True):
        self.size, self.crop_size, self.resample = int(size), int(crop_size), int(resample)
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.do_resize, self.do_center_crop, self.do_rescale = do_resize, do_center_crop, do_rescale
        self.rescale_factor, self.do_normalize = rescale_factor, do_normalize

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Owl2ImageProcessor:
        path = Path(folder) / "preprocessor_config.json"
        raw = _read_json(path, required=True)
        try:
            return cls(size=_edge(raw.get("size", 448), "shortest_edge"), crop_size=_edge(raw.get("crop_size", 448),
                                                                                        "height"),
                       **{k: raw[k] for k in ("image_mean", "image_std", "resample", "do_resize", "do_center_crop",
                                              "do_rescale", "rescale_factor", "do_normalize") if k in raw})
        except (TypeError, ValueError, KeyError) as err:
            raise Owl2ProcessingError(f"{path}: unusable CLIP processor settings ({err})") from None

    def __call__(self, images: Sequence, square_pad: bool = True) -> torch.Tensor:
        """PIL images -> (B, 3, crop, crop) float32 pixels."""
        return torch.stack([self.one(image, square_pad) for image in images])

    def one(self, image, square_pad: bool = True) -> torch.Tensor:
        image = image.convert("RGB")
        if square_pad:
            image = pad_to_square(image, self.image_mean)
        if self.do_resize:
            image = image.resize(self._resized_size(*image.size), resample=self.resample, reducing_gap=None)
        pixels = np.asarray(image)
        if self.do_center_crop:
            pixels = _center_crop(pixels, self.crop_size)
        if self.do_rescale:
            pixels = (pixels * self.rescale_factor).astype(np.float32)
        pixels = pixels.astype(np.float32)
        if self.do_normalize:
            pixels = (pixels - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std,
                                                                                       dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the shorter edge at `size` and the longer one scaled and truncated, as 4.31 does."""
        short, long = min(width, height), max(width, height)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if width <= height else (new_long, self.size)


def _center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    if height < size or width < size:
        padded = np.zeros((max(height, size), max(width, size), pixels.shape[2]), dtype=pixels.dtype)
        top, left = (padded.shape[0] - height) // 2, (padded.shape[1] - width) // 2
        padded[top:top + height, left:left + width] = pixels
        pixels, height, width = padded, padded.shape[0], padded.shape[1]
    top, left = (height - size) // 2, (width - size) // 2
    return pixels[top:top + size, left:left + size]


def _edge(value, key: str) -> int:
    """An int size, or the released dict forms ({"shortest_edge": n} / {"height": n, "width": n})."""
    if isinstance(value, dict):
        return int(value[key] if key in value else value["height"])
    return int(value)


def _read_json(path: Path, required: bool) -> dict:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise Owl2ProcessingError(f"{path.parent}: no {path.name}") from None
        return {}
    except (OSError, ValueError) as err:
        raise Owl2ProcessingError(f"{path}: unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise Owl2ProcessingError(f"{path}: not a JSON object")
    return raw
