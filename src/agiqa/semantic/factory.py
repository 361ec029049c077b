"""`create_encoder`: pick the backend for an encoder id (or wrap a built model + processor)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from agiqa.semantic.base import PAPER_PROMPTS, SemanticEncoder
from agiqa.semantic.hf import HFVLMEncoder
from agiqa.semantic.mplug_owl2 import MplugOwl2Encoder, is_mplug_owl2


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

    encoder_id: a hub id or local folder (mPLUG-Owl2 ids -> `MplugOwl2Encoder`, anything else ->
    `HFVLMEncoder.from_pretrained` via `AutoModelForImageTextToText`), or an already built `(model, processor)`
    pair. Extra keywords go to the backend (e.g. `revision`, `template`, `square_pad`, `reuse_vision`, `name`).
    """
    common = dict(prompts=tuple(prompts), layer=layer, pooling=pooling, device=device, precision=precision)
    if isinstance(encoder_id, (tuple, list)):
        model, processor = encoder_id
        return HFVLMEncoder(model, processor, **common, **kw)
    encoder_id = str(encoder_id)
    if is_mplug_owl2(encoder_id):
        return MplugOwl2Encoder(encoder_id, trust_remote_code=trust_remote_code, **common, **kw)
    return HFVLMEncoder.from_pretrained(encoder_id, trust_remote_code=trust_remote_code, **common, **kw)
