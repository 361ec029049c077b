"""Our side of the mPLUG-Owl2 parity check (see README.md): `agiqa.semantic.owl2` on the folder the release saved.

    HF_HUB_OFFLINE=1 /work/main/.venv/bin/python benchmarks/parity_mplug_owl2/ours_side.py /tmp/owl_parity/out

Loads OUT/checkpoint (the release's own `save_pretrained`: sharded `.bin` + index) and OUT/checkpoint_safetensors
with our loader, runs our encoder on OUT/images with the paper's questions and Q-Align's, and compares every stored
official output. Exit 0 when all agree within 1e-5 (fp32, CPU).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

from agiqa.semantic.base import PAPER_PROMPTS
from agiqa.semantic.levels import QUALITY_ANSWER, QUALITY_QUESTION
from agiqa.semantic.mplug_owl2 import Q_ALIGN_TEMPLATE, MplugOwl2Encoder
from agiqa.semantic.owl2 import tokenize_with_image

TOLERANCE = 1e-5
QUESTIONS = dict(zip(("semantic_content", "coherence"), PAPER_PROMPTS))


def compare(out: Path, folder: Path) -> dict[str, float]:
    """Max abs differences between the official outputs and ours on one checkpoint folder."""
    official = load_file(out / "official_outputs.safetensors")
    images = [Image.open(p).convert("RGB") for p in sorted((out / "images").glob("*.png"))]
    encoder = MplugOwl2Encoder(str(folder), device="cpu", precision="fp32")
    model = encoder.model
    pixels = encoder.image_processor(images)
    diffs = {"pixel_values": (pixels - official["pixel_values"]).abs().max().item()}
    visual = model.encode_images(pixels)
    features = encoder.encode(images)
    for j, (name, question) in enumerate(QUESTIONS.items()):
        ids = tokenize_with_image(encoder.render(question, 0), encoder.tokenizer)
        diffs[f"input_ids.{name} (0 = equal)"] = float(ids != official[f"input_ids.{name}"].tolist())
        embeds, is_visual = model.embed_multimodal(torch.tensor([ids] * len(images)), visual)
        (hidden,) = model.hidden_states(embeds, is_visual)
        last = model.logits_at(hidden, torch.full((len(images),), hidden.shape[1] - 1))
        diffs[f"hidden_last.{name}"] = (hidden - official[f"hidden_last.{name}"]).abs().max().item()
        diffs[f"logits_last.{name}"] = (last - official[f"logits_last.{name}"]).abs().max().item()
        diffs[f"features.{name}"] = (features[:, j] - official[f"features.{name}"]).abs().max().item()
    q_align = MplugOwl2Encoder(str(folder), prompts=(QUALITY_QUESTION,), answers=(QUALITY_ANSWER,),
                               template=Q_ALIGN_TEMPLATE, device="cpu", precision="fp32")
    ids = tokenize_with_image(q_align.render(QUALITY_QUESTION, 0), q_align.tokenizer)
    diffs["qalign.input_ids (0 = equal)"] = float(ids != official["qalign.input_ids"].tolist())
    diffs["qalign.level_ids (0 = equal)"] = float(q_align.level_ids != official["qalign.level_ids"].tolist())
    probabilities = q_align.encode(images)[:, 0, -5:]
    score = probabilities @ torch.tensor([1, 0.75, 0.5, 0.25, 0.0])
    diffs["qalign.score"] = (score - official["qalign.score"]).abs().max().item()
    return diffs


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/owl_parity/out")
    worst = 0.0
    for folder in (out / "checkpoint", out / "checkpoint_safetensors"):
        print(f"== {folder}")
        for key, value in compare(out, folder).items():
            print(f"  {key:<42} {value:.3g}")
            worst = max(worst, value)
    print("PASS" if worst <= TOLERANCE else f"FAIL (worst {worst:.3g} > {TOLERANCE})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
