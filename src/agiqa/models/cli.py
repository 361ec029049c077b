"""`agiqa models ...`: list registered models and weights, show their metadata, convert official checkpoints.

    agiqa models list [FILTER] [--pretrained] [-q]
    agiqa models info NAME
    agiqa models convert SRC.pt OUT_DIR --model maniqa      # official checkpoint -> model.safetensors + config.json
"""
from __future__ import annotations

import argparse
import fnmatch
import json

# `agiqa models list` answers from these two tables instead of the registry: the registry fills as the model modules
# are imported, and they import torch, timm and torchvision (seconds). Listed in the registry's order (list_models);
# tests/models/test_models_cli_list.py keeps them equal to it, so a new architecture or weight tag goes here too.
ARCHITECTURES = (
    "ma_agiqa", "maniqa", "moe_agiqa", "moe_agiqa_prior", "moe_agiqa_v1",
    "test_ma_agiqa", "test_maniqa", "test_moe_agiqa", "test_moe_agiqa_prior",
    "vlm_levels",
)
PRETRAINED = ("ma_agiqa.agiqa3k", "maniqa.kadid10k", "maniqa.koniq10k", "maniqa.pipal22", "vlm_levels.zero_shot")
# `test_*` architectures are the tiny configurations the tests and the demo build in milliseconds.
TEST_PREFIX = "test_"
TEST_NOTE = "tiny (32 px input) version for tests and the demo; not a paper model"


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list, inspect and convert models", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    p_list = sub.add_parser("list", help="registered architectures (or weights with --pretrained)")
    p_list.add_argument("filter", nargs="?", default="", help="wildcard, e.g. 'maniqa*'")
    p_list.add_argument("--pretrained", action="store_true", help="list arch.tag names that have weights")
    p_list.add_argument("-q", "--names-only", action="store_true",
                        help="names only, one per line (no note on the tiny test_* architectures)")
    p_list.set_defaults(func=_cmd_list)

    p_info = sub.add_parser("info", help="metadata of a model or arch.tag: score range, lower_better, weight source")
    p_info.add_argument("name")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_info.set_defaults(func=_cmd_info)

    p_conv = sub.add_parser("convert", help="official checkpoint (.pt/.pth) -> our safetensors + config.json folder")
    p_conv.add_argument("src", help="official checkpoint file (read with weights_only=True)")
    p_conv.add_argument("out_dir", help="output folder (created); loadable with create_model(NAME, pretrained=OUT_DIR)")
    p_conv.add_argument("--model", default="maniqa", help="registered architecture (default: maniqa)")
    p_conv.add_argument("--prior", help="moe_agiqa: the prior checkpoint (pretrain.py / agiqa pretrain-prior output)")
    p_conv.add_argument("--degradation-vit", help="moe_agiqa: ImageNet ViT-B/16 weights in timm layout (default: "
                        "timm's hub weights that the official code used)")
    p_conv.add_argument("--tokenizer", help="moe_agiqa: BERT tokenizer folder or hub id saved beside the weights "
                        "(default: bert-base-uncased; skipped with a warning if it cannot be loaded)")
    p_conv.set_defaults(func=_cmd_convert)


def _cmd_list(args) -> int:
    names = [name for name in (PRETRAINED if args.pretrained else ARCHITECTURES)
             if not args.filter or fnmatch.fnmatch(name, args.filter)]
    if not names:
        from agiqa.errors import AgiqaError

        listing = "agiqa models list" + (" --pretrained" if args.pretrained else "")
        raise AgiqaError(f"no model name matches {args.filter!r} (a wildcard, e.g. 'maniqa*'); `{listing}` shows "
                         "them all")
    width = max(len(name) for name in names)
    for name in names:
        note = TEST_NOTE if name.startswith(TEST_PREFIX) and not args.names_only else ""
        print(f"{name:<{width}}  {note}".rstrip())
    return 0


def _cmd_info(args) -> int:
    from agiqa.errors import AgiqaError
    from agiqa.models import get_model_info

    try:
        info = get_model_info(args.name)
    except RuntimeError as err:
        raise AgiqaError(str(err)) from err
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    source = info.get("file") or (f"hf://{info['hf_hub_id']}/{info.get('hf_hub_filename')}" if info.get("hf_hub_id")
                                  else None) or info.get("url") or "none registered (random init only)"
    rows = [("architecture", info["architecture"]), ("module", info["module"]), ("tag", info.get("tag") or "-")]
    if info.get("tag"):
        rows += [
            ("train dataset", info.get("train_dataset")),
            ("score range", info.get("score_range")),
            ("lower better", info.get("lower_better")),
            ("official checkpoint", info.get("official")),
            ("weights", source),
            ("file name", info.get("hf_hub_filename")),
            ("sha256", info.get("sha256") or "-"),
            ("license", info.get("license")),
            ("origin", info.get("origin_url")),
            ("notes", info.get("notes")),
        ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_convert(args) -> int:
    from pathlib import Path

    from agiqa.errors import AgiqaError
    from agiqa.models import create_model

    src = Path(args.src)
    if src.is_dir():
        raise AgiqaError(f"{src} is a folder; give the official checkpoint file (.pt/.pth) inside it")
    if not src.is_file():
        raise AgiqaError(f"checkpoint not found: {src}")
    try:
        if "moe_agiqa" in args.model.split(".")[0].replace("-", "_"):
            model = _convert_moe_agiqa(args, src)
        else:
            if args.prior or args.degradation_vit:
                raise AgiqaError("--prior and --degradation-vit are for --model moe_agiqa")
            model = create_model(args.model, pretrained=str(src))
    except (RuntimeError, FileNotFoundError) as err:
        raise AgiqaError(f"could not convert {src}: {err}") from err
    out = Path(args.out_dir)
    model.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'} ({n_params:,} parameters); "
          f"load with create_model({args.model.split('.')[0]!r}, pretrained={str(out)!r})")
    return 0


def _convert_moe_agiqa(args, src):
    """The three official MoE-AGIQA files -> one strictly loaded model (v1 when no --prior is given)."""
    import logging

    from agiqa.models import create_model
    from agiqa.models._builder import load_state_dict_strict
    from agiqa.models.moe_agiqa import convert_official_checkpoint

    model = create_model(args.model, use_prior=bool(args.prior), tokenizer=args.tokenizer)
    state = convert_official_checkpoint(src, args.prior, args.degradation_vit, model.config.hooked_blocks)
    load_state_dict_strict(model, state, str(src))
    try:
        model.tokenizer  # saved with the weights so the converted model scores offline
    except Exception as err:  # no network and no local tokenizer: the weights are still complete
        logging.getLogger(__name__).warning(
            "tokenizer %s not saved (%s); pass --tokenizer DIR to bundle it", model.config.tokenizer, err)
    return model
