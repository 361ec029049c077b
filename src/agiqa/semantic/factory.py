"""`create_encoder`: pick the backend for an encoder id (or wrap a built model + processor)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from agiqa.semantic.base import PAPER_PROMPTS, SemanticEncoder, SemanticEncoderError
from agiqa.semantic.hf import HFVLMEncoder
from agiqa.semantic.mplug_owl2 import create_mplug_owl2_encoder, is_mplug_owl2


def create_encoder(
    encoder_id,
    prompts: Sequence[str] = PAPER_PROMPTS,
    layer: int = -1,
    pooling: str = "all",
    device: str | torch.device | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    **kw,
) -> SemanticEncoder:
    """Build a `SemanticEncoder`.

    encoder_id: a hub id or local folder (mPLUG-Owl2 ids -> `MplugOwl2Encoder`, our own implementation, or with
    `backend="official"` the release's `mplug_owl2` package; anything else -> `HFVLMEncoder.from_pretrained` via
    `AutoModelForImageTextToText`), or an already built `(model, processor)` pair. Extra keywords go to the backend
    (e.g. `revision`, `template`, `square_pad`, `reuse_vision`, `name`).
    """
    common = dict(prompts=tuple(prompts), layer=layer, pooling=pooling, device=device, precision=precision)
    if isinstance(encoder_id, (tuple, list)):
        model, processor = encoder_id
        return HFVLMEncoder(model, processor, **common, **kw)
    encoder_id = str(encoder_id)
    if is_mplug_owl2(encoder_id):
        return create_mplug_owl2_encoder(encoder_id, trust_remote_code=trust_remote_code, **common, **kw)
    if kw.pop("backend", "native") != "native":
        raise SemanticEncoderError(f"{encoder_id}: backends other than 'native' exist for mPLUG-Owl2 checkpoints only")
    return HFVLMEncoder.from_pretrained(encoder_id, trust_remote_code=trust_remote_code, **common, **kw)
