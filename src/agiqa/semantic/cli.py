"""`agiqa features extract | import-official | info`.

Multi-GPU: launch with `torchrun --nproc-per-node N -m agiqa.cli features extract ...`; each process takes every
N-th image on its own GPU and writes its own shards, the cache is their union.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "features", help="semantic (multimodal LLM) features for MA-AGIQA: extract, import official files, inspect",
        description="Semantic features: mean-pooled hidden states of a frozen multimodal LLM answering fixed questions "
        "about each image (MA-AGIQA's experts), cached on disk by image content hash.",
    )
    sub = parser.add_subparsers(dest="features_command", metavar="ACTION", required=True)

    ex = sub.add_parser("extract", help="compute features into a cache (resumable; re-runs skip cached images)")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset name (see `agiqa datasets list`), with --root")
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    ex.add_argument("--root", help="dataset root folder (with --dataset)")
    ex.add_argument("--encoder", required=True,
                    help="hub id or local folder of an image-text-to-text model (e.g. Qwen/Qwen2-VL-2B-Instruct), "
                    "or an mPLUG-Owl2 checkpoint (MAGAer13/mplug-owl2-llama2-7b: the paper's, run natively with the "
                    "paper's template and pooling; q-future/one-align)")
    ex.add_argument("--out", required=True, metavar="CACHE", help="cache directory (created if missing)")
    ex.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                    help="question to ask (repeat for several); may contain {prompt} for the image's generation "
                    "prompt. Default: the paper's two questions")
    ex.add_argument("--with-paper-prompts", action="store_true",
                    help="ask the paper's two questions first, then the --prompt ones")
    ex.add_argument("--answer", action="append", dest="answers", metavar="TEXT",
                    help="answer prefix that adds the level-word probabilities to a question's vector (repeat once "
                    "per question, in order; e.g. 'The quality of the image is'): features for MA-AGIQA's `levels` "
                    "expert or a zero-shot VLM (docs/zero_shot.md)")
    ex.add_argument("--layer", type=int, default=-1,
                    help="hidden_states index (default -1: last layer, after the norm)")
    ex.add_argument("--pooling", choices=("all", "image", "text"), default="all",
                    help="mean over all tokens (paper), the image tokens, or the question tokens")
    ex.add_argument("--batch-size", type=int, default=8, help="images per forward (each with all prompts)")
    ex.add_argument("--shard-size", type=int, default=None, help="images per shard file (default 512)")
    ex.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: auto; LOCAL_RANK under torchrun)")
    ex.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    ex.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of the encoder")
    ex.add_argument("--template", default=None,
                    help="plain prompt template with {question} and {image} instead of the model's chat template")
    ex.add_argument("--square-pad", action="store_true", help="pad images to squares with the processor mean colour")
    ex.add_argument("--trust-remote-code", action="store_true", help="allow the encoder's own Python code to run")
    ex.add_argument("--backend", choices=("native", "official"), default="native",
                    help="mPLUG-Owl2 only: our implementation (default) or the release's mplug_owl2 package "
                    "(its own environment, with --trust-remote-code); same numbers")
    ex.add_argument("--overwrite", action="store_true", help="delete features of a different setup in --out")
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex.set_defaults(func=_cmd_extract)

    imp = sub.add_parser("import-official",
                         help="import MA-AGIQA's official <stem>_semantic_content.pt / <stem>_coherence.pt files")
    imp.add_argument("--features", required=True, metavar="DIR", help="folder with the official .pt files")
    imp.add_argument("--dataset", required=True, help="dataset name whose images the files belong to")
    imp.add_argument("--root", required=True, help="dataset root (images are hashed to key the cache)")
    imp.add_argument("--out", required=True, metavar="CACHE")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=_cmd_import)

    info = sub.add_parser("info", help="describe a feature cache")
    info.add_argument("cache", metavar="CACHE")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)


def _collect_images(items: list[str]) -> list[str]:
    from agiqa.errors import AgiqaError

    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            for folder, _, files in sorted(os.walk(item)):
                paths += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise AgiqaError(f"{item}: no such file or folder")
    if not paths:
        raise AgiqaError(f"no images found in {' '.join(items)}")
    return paths


def _dataset_frame(name: str, root: str | None):
    from agiqa.errors import AgiqaError

    if not root:
        raise AgiqaError("--dataset needs --root (the folder holding the dataset's label file and images)")
    from agiqa.data import load_dataset

    return load_dataset(name, root, check_files=False)


def _init_distributed(device: str | None) -> tuple[int, int, str | None]:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device and device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _cmd_extract(args: argparse.Namespace) -> int:
    from agiqa.errors import AgiqaError
    from agiqa.semantic.base import PAPER_PROMPTS, prompt_needs_generation_prompt
    from agiqa.semantic.extract import DEFAULT_SHARD_SIZE, extract_features
    from agiqa.semantic.factory import create_encoder

    prompts = tuple(args.prompts or ())
    if args.with_paper_prompts or not prompts:
        prompts = PAPER_PROMPTS + prompts
    generation_prompts = names = None
    if args.dataset:
        frame = _dataset_frame(args.dataset, args.root)
        paths = [str(p) for p in frame["path"]]
        names = [str(n) for n in frame["name"]]
        if prompt_needs_generation_prompt(prompts):
            if "prompt" not in frame or frame["prompt"].isna().any():
                raise AgiqaError(f"a --prompt uses {{prompt}} but dataset {args.dataset} has no generation prompt "
                                 "for every image")
            generation_prompts = [str(p) for p in frame["prompt"]]
    else:
        if args.root:
            raise AgiqaError("--root goes with --dataset; with --images pass the files or folders directly")
        paths = _collect_images(args.images)
        if prompt_needs_generation_prompt(prompts):
            raise AgiqaError("{prompt} in a --prompt needs generation prompts: use --dataset (with a prompt column)")

    rank, world_size, device = _init_distributed(args.device)
    kw = {}
    for opt in ("revision", "template", "answers"):
        if getattr(args, opt):
            kw[opt] = getattr(args, opt)
    if args.square_pad:
        kw["square_pad"] = True
    if args.backend != "native":
        kw["backend"] = args.backend
    encoder = create_encoder(args.encoder, prompts=prompts, layer=args.layer, pooling=args.pooling, device=device,
                             precision=args.precision, trust_remote_code=args.trust_remote_code, **kw)
    logger.info("encoder %r; %d images -> %s", encoder, len(paths), args.out)
    report = extract_features(
        paths, encoder, args.out, batch_size=args.batch_size, shard_size=args.shard_size or DEFAULT_SHARD_SIZE,
        generation_prompts=generation_prompts, progress=not args.no_progress,
        rank=rank, world_size=world_size, overwrite=args.overwrite, names=names,
    )
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_import(args: argparse.Namespace) -> int:
    from agiqa.semantic.official import import_official_features

    frame = _dataset_frame(args.dataset, args.root)
    report = import_official_features(args.features, [str(n) for n in frame["name"]], args.out, args.root,
                                      overwrite=args.overwrite, image_paths=[str(p) for p in frame["path"]])
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from agiqa.semantic.cache import FeatureCache

    cache = FeatureCache(args.cache)
    info = cache.info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    fp = info["fingerprint"]
    print(f"{info['path']}: {info['images']} images in {info['shards']} shards")
    for key in ("encoder", "revision", "backend", "layer", "pooling", "dtype", "storage_dtype", "feature_dim",
                "created"):
        print(f"  {key:13s} {fp.get(key)}")
    for name, prompt in zip(fp.get("prompt_names", []), fp.get("prompts", [])):
        print(f"  prompt {name}: {prompt}")
    return 0
