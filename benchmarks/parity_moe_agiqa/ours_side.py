"""Our side of the MoE-AGIQA parity check (see README.md). Run with the project venv (new timm / transformers):

    HF_HUB_OFFLINE=1 /work/main/.venv/bin/python ours_side.py [DIR]     # DIR: what official_side.py wrote

Converts the official files with ``convert_official_checkpoint``, loads them strictly, runs ``MoeAgiqa`` on the same
inputs and compares the scores and every branch with the official run; then the ``agiqa models convert`` round trip.
"""
import subprocess
import sys
from pathlib import Path

import torch

from agiqa.models import create_model
from agiqa.models.moe_agiqa import convert_official_checkpoint

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/moe_parity")
TOL = 1e-5
torch.manual_seed(0)


def diff(name, ours, ref):
    ours, ref = ours.detach().double(), ref.detach().double().reshape(ours.shape)
    d = (ours - ref).abs().max().item()
    rel = d / ref.abs().max().item()
    print(f"  {name:<34} max|diff| {d:.3e}   rel {rel:.3e}   (max|ref| {ref.abs().max().item():.3e})")
    return d


def trusted_load(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # files we wrote ourselves


@torch.no_grad()
def compare(name, model, ref, inp):
    model.eval()
    B, K = inp["crops"].shape[:2]
    flat = inp["crops"].flatten(0, 1)
    print(f"{name}:")
    text = model.forward_semantic(inp["prompt_image"], inp["input_ids"], inp["attention_mask"])
    diff("BLIP image embeds", model.blip.visual_encoder.forward_features(inp["prompt_image"]), ref["image_embeds"])
    diff("BLIP text features (B,35,768)", text, ref["text"])
    deg = model.forward_degradation(flat)
    diff("degradation blocks 4..7", deg, ref["degradation"])
    prior = None
    if ref["prior"] is not None:
        prior = model.forward_prior(flat)
        diff("prior CLS", prior, ref["prior"])
    reg = model.regressor
    # regressor alone on the official branch outputs (isolates the head from the backbones)
    pooled_iso = reg.forward_features(ref["degradation"].flatten(0, 1), ref["text"].repeat_interleave(K, 0),
                                      None if prior is None else ref["prior"].flatten(0, 1))
    diff("pooled (official branch inputs)", pooled_iso, ref["pooled"])
    diff("per-crop score (official inputs)", reg.forward_head(pooled_iso), ref["per_crop"])
    pooled = model.forward_features(**inp)
    diff("pooled (end to end)", pooled, ref["pooled"])
    diff("all 4 experts", torch.stack([e(pooled.flatten(0, 1)) for e in reg.proj_experts], -1), ref["experts"])
    diff("gate probabilities", reg.gating_network(pooled.flatten(0, 1)), ref["gates"])
    scores = model(**inp)
    d = diff("SCORES (mean over crops)", scores, ref["scores"])
    print(f"  ours {scores.tolist()}\n  official {ref['scores'].tolist()}")
    return scores, d


def main():
    inp, ref = torch.load(DIR / "inputs.pt"), trusted_load(DIR / "official_scores.pt")
    print("official side ran with", ref["versions"])
    import timm
    import transformers
    print("our side: torch", torch.__version__, "timm", timm.__version__, "transformers", transformers.__version__)

    # 1. The converter on the files as the official scripts write them (weights_only=True)
    try:
        convert_official_checkpoint(DIR / "best.pth", DIR / "prior.pth", DIR / "degradation_vit.pth")
        print("convert_official_checkpoint(paths): OK")
    except Exception as err:
        print(f"convert_official_checkpoint(paths) FAILED: {str(err).splitlines()[0][:200]} ... "
              f"{[line for line in str(err).splitlines() if 'Unsupported global' in line][:1]}")
    best, best_v1 = trusted_load(DIR / "best.pth"), trusted_load(DIR / "best_v1.pth")
    prior, deg = trusted_load(DIR / "prior.pth"), trusted_load(DIR / "degradation_vit.pth")

    results = {}
    for name, arch, ckpt, prior_file in (("v2", "moe_agiqa", best, prior), ("v1", "moe_agiqa_v1", best_v1, None)):
        model = create_model(arch, pretrained=False, label_scale=1.0)
        model.load_state_dict(convert_official_checkpoint(ckpt, prior_file, deg), strict=True)
        results[name] = compare(name, model, ref[name], inp)

    # 2. CLI round trip (agiqa models convert -> create_model(pretrained=OUT)); 'loss' made a float for weights_only
    clean = DIR / "clean"
    clean.mkdir(exist_ok=True)
    for src, obj in (("best.pth", best), ("best_v1.pth", best_v1), ("prior.pth", prior)):
        torch.save(dict(obj, loss=float(obj["loss"])), clean / src)
    for name, arch, extra in (("v2", "moe_agiqa", ["--prior", str(clean / "prior.pth")]), ("v1", "moe_agiqa_v1", [])):
        out = DIR / f"converted_{name}"
        src = clean / ("best.pth" if name == "v2" else "best_v1.pth")
        cmd = [str(Path(sys.executable).parent / "agiqa"), "models", "convert", str(src), str(out), "--model", arch,
               "--degradation-vit", str(DIR / "degradation_vit.pth"), "--tokenizer", str(DIR / "tokenizer"), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(f"CLI {name}: rc={proc.returncode}", proc.stdout.strip() if proc.returncode == 0 else proc.stderr[-500:])
        if proc.returncode == 0:
            with torch.no_grad():
                scores = create_model(arch, pretrained=str(out)).eval()(**inp)
            diff(f"CLI round trip {name} vs in-memory", scores, results[name][0])
            diff(f"CLI round trip {name} vs official", scores, ref[name]["scores"])

    ok = all(d <= TOL for _, d in results.values())
    print(f"max |ours - official|: v2 {results['v2'][1]:.3e}, v1 {results['v1'][1]:.3e} -> "
          f"{'PASS' if ok else 'FAIL'} (tolerance {TOL:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
