"""Cross-check: Q-Align's own copy of the model code (Q-Future/Q-Align, q_align/, pinned to transformers 4.36.1) on the
checkpoint and images written by official_side.py, compared with official_side.py's outputs (mPLUG-Owl2, 4.31.0):

    PYTHONPATH=/tmp/owl_parity/site436 /work/main/.venv/bin/python official_side_qalign.py OUT_DIR

Runs the released QAlignScorer (q_align/evaluate/scorer.py, imported from the extracted package) with
load_pretrained_model replaced by an fp32 load, and getFeature.py's forward, once per attention implementation.
Writes OUT_DIR/qalign_436.json; nothing is written to the fixture.
"""
import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

import official_side as o


def main(out):
    src = out / "official_qalign"
    src.mkdir(exist_ok=True)
    subprocess.run(f"git -C {o.MIRRORS['q_align']} archive HEAD q_align 2>/dev/null | tar -x -C {src}", shell=True,
                   check=True)  # (git complains about a missing fig/*.pdf blob of the mirror; q_align/ is complete)
    assert (src / "q_align/evaluate/scorer.py").exists()
    sys.path.insert(0, str(src))
    import transformers
    assert transformers.__version__ == "4.36.1", transformers.__file__
    from q_align.constants import IMAGE_TOKEN_INDEX
    from q_align.evaluate import scorer as released
    from q_align.mm_utils import tokenizer_image_token
    from q_align.model import MPLUGOwl2LlamaForCausalLM
    from q_align.model import modeling_mplug_owl2
    from transformers import AutoTokenizer, CLIPImageProcessor

    ckpt = str(out / "checkpoint")
    # the model's __init__ loads AutoTokenizer / CLIPImageProcessor from the hub id "q-future/one-align" (for its
    # .score() method): point that id at the local checkpoint, keeping the released arguments (fast tokenizer)
    def local(cls):
        def from_pretrained(repo, *args, **kwargs):
            return cls.from_pretrained(ckpt if repo == "q-future/one-align" else repo, *args, **kwargs)
        return type(cls.__name__, (), {"from_pretrained": staticmethod(from_pretrained)})

    modeling_mplug_owl2.AutoTokenizer = local(AutoTokenizer)
    modeling_mplug_owl2.CLIPImageProcessor = local(CLIPImageProcessor)
    ref = load_file(str(out / "official_outputs.safetensors"))
    prompts = json.loads((out / "official_outputs.json").read_text())["prompts"]
    images = [Image.open(out / "images" / f"img{i}.png").convert("RGB") for i in range(3)]
    tokenizer = AutoTokenizer.from_pretrained(ckpt, use_fast=False)
    image_processor = CLIPImageProcessor.from_pretrained(ckpt)
    report = {"transformers": transformers.__version__,
              "mirror": o.git("q_align", "rev-parse", "HEAD").decode().strip()}
    for attn in ("default", "eager", "sdpa"):
        kwargs = {} if attn == "default" else {"attn_implementation": attn}
        model, info = MPLUGOwl2LlamaForCausalLM.from_pretrained(
            ckpt, low_cpu_mem_usage=True, device_map={"": "cpu"}, torch_dtype=torch.float32, output_loading_info=True,
            **kwargs)
        model.eval()
        released.load_pretrained_model = lambda *a, **k: (tokenizer, model, image_processor, 2048)
        half, torch.Tensor.half = torch.Tensor.half, lambda self, *a, **k: self  # fp32 on CPU instead of fp16
        try:
            scorer = released.QAlignScorer(pretrained=ckpt, device="cpu")
            score = scorer(images)
        except Exception as error:  # noqa: BLE001 - recorded: the SDPA path of the release fails (see README)
            report[attn] = {"attn_implementation": model.config._attn_implementation, "error": repr(error)}
            continue
        finally:
            torch.Tensor.half = half
        with torch.inference_mode():
            logits = model(scorer.input_ids.repeat(3, 1), images=ref["pixel_values"])["logits"]
        level_logits = logits[:, -1, scorer.preferential_ids_]
        row = {"attn_implementation": model.config._attn_implementation, "loading_info": info,
               "qalign.input_ids_equal": torch.equal(scorer.input_ids[0], ref["qalign.input_ids"]),
               "qalign.level_ids_equal": scorer.preferential_ids_ == ref["qalign.level_ids"].tolist(),
               "qalign.level_logits_maxabs": (level_logits - ref["qalign.level_logits"]).abs().max().item(),
               "qalign.score_maxabs": (score - ref["qalign.score"]).abs().max().item(),
               "model.tokenizer": type(model.tokenizer).__name__,
               "model.preferential_ids_equal": model.preferential_ids_ == ref["qalign.level_ids"].tolist()}
        half, torch.Tensor.half = torch.Tensor.half, lambda self, *a, **k: self
        try:  # the model's own .score(): weights 5..1, and its prompt ends "The image of the quality is" (swapped)
            model_score = model.score(images)
        finally:
            torch.Tensor.half = half
        swapped = prompts["qalign"].replace("The quality of the image", "The image of the quality")
        ids = tokenizer_image_token(swapped, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].repeat(3, 1)
        with torch.inference_mode():
            swapped_logits = model(ids, images=ref["pixel_values"])["logits"][:, -1, scorer.preferential_ids_]
        row.update({"model.score": model_score.tolist(), "1+4*scorer.score": (1 + 4 * score).tolist(),
                    "model.score_vs_swapped_prompt_maxabs": (model_score - torch.softmax(swapped_logits, -1)
                                                             @ torch.tensor([5., 4., 3., 2., 1.])).abs().max().item()})
        for q, prompt in prompts.items():
            if q == "qalign":
                continue
            input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
            row[f"input_ids_equal.{q}"] = torch.equal(input_ids, ref[f"input_ids.{q}"])
            with torch.inference_mode():
                o_ = model(input_ids[None].repeat(3, 1), images=ref["pixel_values"], output_hidden_states=True)
            row[f"hidden_last_maxabs.{q}"] = (o_["hidden_states"][-1] - ref[f"hidden_last.{q}"]).abs().max().item()
            row[f"logits_last_maxabs.{q}"] = (o_["logits"][:, -1] - ref[f"logits_last.{q}"]).abs().max().item()
        report[attn] = row
    (out / "qalign_436.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
