"""Speed, official side: the released MoE-AGIQA eval loop (``Train.eval_epoch`` of ``train_3k_v2.py``) per image, fp32.

    PYTHONPATH=/tmp/moe_parity/site /work/main/.venv/bin/python bench_official.py MIRROR_REPO_DIR [--out DIR]
        [--images 4] [--batch 1] [--repeats 3] [--threads 2]

Builds the official v2 modules with the parity weights (``official_side.build_official``: the release's classes are
cut out of the mirror at run time), writes them in the official layout (``best.pth``, ``prior.pth``,
``degradation_vit.pth``) for ``bench_ours.py``, makes ``--images`` fixed images with the released test transforms
(15 crops each), and times what the released loop runs per test batch, in eval mode under ``no_grad`` as released:
BLIP's visual encoder on the prompt image, its text encoder, then for each of the 15 crops the prior ViT's
``forward_features``, the whole hooked degradation ViT, ``get_vit_feature`` and the regressor, and the mean over crops.
Not timed (on either side): decoding and cropping (the released loop gets them from DataLoader workers), tokenizing,
the loss. Time per image = best of ``--repeats`` per batch after one warm-up pass, summed, / images.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import official_side

NUM_AVG_VAL, SIZE, TOKENS = 15, 224, 35  # parse_args defaults of train_3k_v2.py: 15 crops of 224 at test time
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZES = [(512, 512), (1024, 768), (512, 384), (768, 1024)]  # (width, height), cycled


def machine_header() -> str:
    """CPU model, the flags that decide precision and kernels, threads and load average (one line)."""
    from agiqa.runtime import cpu_flags  # imports only torch: fine under the old stack too

    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                "unknown CPU")
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in cpu_flags())
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    return f"CPU {name} ({os.cpu_count()} cores; flags: {flags or 'none of the bf16 ones'}), " \
           f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {load}"


def fixed_inputs(n: int) -> dict:
    """n synthetic images (smooth colour fields plus a little noise, seeded) through the released test transforms:
    15 x (zero pad to >= 224, RandomCrop(224), ToTensor) after setup_seed(20), and the prompt image (Resize 224
    bicubic, CenterCrop 224, ToTensor, CLIP Normalize). Prompt tokens: [CLS] ids [SEP] padded to 35, lengths vary."""
    from PIL import Image
    from torchvision import transforms

    g = torch.Generator().manual_seed(3)
    prompt_tf = transforms.Compose([transforms.Resize(SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(SIZE), transforms.ToTensor(),
                                    transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    torch.manual_seed(20)  # setup_seed(20): RandomCrop draws from torch's global generator
    crops, prompts = [], []
    for i in range(n):
        w, h = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        field = torch.nn.functional.interpolate(torch.rand(1, 3, h // 32, w // 32, generator=g), size=(h, w),
                                                mode="bicubic", align_corners=False)[0]
        pixels = (field + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        im = Image.fromarray((pixels.permute(1, 2, 0) * 255).round().byte().numpy())
        pad_w, pad_h = max(SIZE - w, 0), max(SIZE - h, 0)
        crop_tf = transforms.Compose([transforms.Pad((pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2)),
                                      transforms.RandomCrop(SIZE), transforms.ToTensor()])
        crops.append(torch.stack([crop_tf(im) for _ in range(NUM_AVG_VAL)]))
        prompts.append(prompt_tf(im))
    lengths = torch.randint(6, TOKENS + 1, (n,), generator=g)
    mask = (torch.arange(TOKENS) < lengths[:, None]).long()
    ids = torch.randint(1000, 30522, (n, TOKENS), generator=g) * mask
    ids[:, 0] = 101
    ids[torch.arange(n), lengths - 1] = 102
    return {"crops": torch.stack(crops), "prompt_image": torch.stack(prompts), "input_ids": ids,
            "attention_mask": mask}


@torch.no_grad()
def released_eval_batch(m, batch: dict) -> torch.Tensor:
    """What one iteration of ``eval_epoch``'s loop over ``test_loader`` computes (fp32, CPU): (B, 1) predictions."""
    reward, vit, vit_prior, regressor, save_output = m.reward, m.vit, m.vit_prior, m.regressor2, m.save_output
    image_embeds = reward.blip.visual_encoder(batch["prompt_image"])
    image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
    text_features = reward.blip.text_encoder(batch["input_ids"], attention_mask=batch["attention_mask"],
                                             encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                             return_dict=True).last_hidden_state
    pred = 0
    for d_img_org in batch["crop_list"]:  # data[1][i]: the DataLoader's (B, 3, 224, 224) tensor of crop i
        prior = vit_prior.forward_features(d_img_org)[:, 0, :]
        _ = vit(d_img_org)
        vit_dis = m.v2.get_vit_feature(save_output)
        save_output.outputs.clear()
        b, n, c = vit_dis.shape
        f_dis = vit_dis.transpose(1, 2).view(b, c, 14, 14)
        pred += regressor(f_dis, text_features, prior)
    pred /= NUM_AVG_VAL
    return pred


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mirror", type=Path, help="bare git dir of github:37s/MoE-AGIQA")
    parser.add_argument("--out", type=Path, default=Path("/tmp/moe_bench"))
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1, help="images per step (the released default is 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch after one warm-up pass")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official_side.MIRROR, official_side.OUT = args.mirror, args.out
    m = official_side.build_official()
    for module in (m.vit, m.vit_prior, m.reward, m.regressor2):
        module.eval()
    official_side.save_official_files(m, args.out)
    inputs = fixed_inputs(args.images)
    torch.save(inputs, args.out / "bench_inputs.pt")

    batches = []
    for start in range(0, args.images, args.batch):
        batch = {key: value[start:start + args.batch] for key, value in inputs.items()}
        batch["crop_list"] = [crop.contiguous() for crop in batch["crops"].unbind(1)]
        batches.append(batch)
    print(machine_header())
    print(f"released eval loop (train_3k_v2.py), fp32, {args.images} images x {NUM_AVG_VAL} crops, "
          f"batch {args.batch}, best of {args.repeats} after 1 warm-up")
    scores = torch.cat([released_eval_batch(m, batch)[:, 0] for batch in batches])  # warm-up pass
    times = [[] for _ in batches]
    for _ in range(args.repeats):
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            again = released_eval_batch(m, batch)[:, 0]
            times[i].append(time.perf_counter() - start)
            assert torch.equal(again, scores[i * args.batch:i * args.batch + len(again)])
    best = sum(min(t) for t in times) / args.images
    median = sum(statistics.median(t) for t in times) / args.images
    print(f"official fp32: {best:.3f} s/image best, {median:.3f} median; scores {scores.tolist()}")
    result = {"s_per_image_best": best, "s_per_image_median": median, "times_per_batch": times,
              "images": args.images, "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "crops": NUM_AVG_VAL, "machine": machine_header(), "versions": m.versions}
    torch.save({"scores": scores, **result}, args.out / "bench_official.pt")
    (args.out / "bench_official.json").write_text(json.dumps(result, indent=2))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
