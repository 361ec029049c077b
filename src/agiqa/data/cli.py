"""`agiqa datasets list|check`, `agiqa split`, `agiqa synth`. Heavy modules are imported inside the handlers."""
from __future__ import annotations

import argparse
import contextlib

HIST_BINS = 10
HIST_WIDTH = 40


def register(subparsers) -> None:
    datasets = subparsers.add_parser("datasets", help="list the benchmark datasets or validate one")
    actions = datasets.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="table of registered datasets").set_defaults(func=_cmd_list)
    check = actions.add_parser(
        "check", help="validate a dataset's labels and image files; exit 2 listing every problem"
    )
    _add_dataset_args(check)
    check.add_argument("--no-check-files", action="store_true", help="validate the labels only, not the image files")
    check.set_defaults(func=_cmd_check)

    split = subparsers.add_parser(
        "split", help="make a train/val/test split of a dataset's rows (labels only; images are not checked)"
    )
    _add_dataset_args(split)
    split.add_argument(
        "--method", default="official", choices=("official", "random", "kfold", "prompt_disjoint"),
        help="official = MA-AGIQA 70/10/20 shuffle; random = same with --seed; kfold = fold --fold of --k; "
        "prompt_disjoint = no prompt in two parts (default: official)",
    )
    split.add_argument("--seed", type=int, default=20, help="shuffle seed (default: 20, the official one)")
    split.add_argument("--k", type=int, default=5, help="number of folds for --method kfold (default: 5)")
    split.add_argument("--fold", type=int, default=0, help="test fold for --method kfold (default: 0)")
    split.add_argument("--out", help="write the split as JSON to this path")
    split.set_defaults(func=_cmd_split)

    synth = subparsers.add_parser(
        "synth", help="write a synthetic AGIQA dataset (AGIQA-3K layout) with a known quality function"
    )
    synth.add_argument("--out", required=True, help="output folder (data.csv, synth_meta.csv, <name>.png)")
    synth.add_argument("--n", type=int, default=300, help="number of images (default: 300)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    synth.add_argument(
        "--mismatch-rate", type=float, default=0.3,
        help="probability that the image contradicts its prompt (default: 0.3)",
    )
    synth.add_argument(
        "--rater-noise", type=float, default=0.8, help="std of one simulated rater's score on 0-5 (default: 0.8)"
    )
    synth.set_defaults(func=_cmd_synth)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="dataset name (see `agiqa datasets list`) or csv")
    parser.add_argument(
        "--root", help="dataset root holding the label file (for csv: image root, default: the CSV's folder)"
    )
    parser.add_argument("--target", help="which MOS to use, e.g. quality or alignment (default: the dataset's default)")
    parser.add_argument("--image-dir", help="image folder under --root, overriding the official layout")
    generic = parser.add_argument_group("generic CSV (NAME = csv)")
    generic.add_argument("--csv", help="label CSV path")
    generic.add_argument("--image-col", help="column with image paths relative to --root (default: image)")
    generic.add_argument("--score-col", help="column with the MOS (default: mos)")
    generic.add_argument("--prompt-col", help="column with prompts (default: none)")
    generic.add_argument("--generator-col", help="column with generator names (default: none)")


@contextlib.contextmanager
def _usage_errors():
    """Report bad argument values (ValueError from the library) as a message, not a traceback."""
    from agiqa.errors import AgiqaError

    try:
        yield
    except ValueError as err:
        raise AgiqaError(str(err)) from err


def _load(args: argparse.Namespace, check_files: bool):
    from agiqa.data.datasets import check_label_file, load_dataset
    from agiqa.errors import AgiqaError

    option_names = ("image_dir", "csv", "image_col", "score_col", "prompt_col", "generator_col")
    opts = {key: getattr(args, key) for key in option_names if getattr(args, key) is not None}
    frame = load_dataset(args.name, args.root, target=args.target, check_files=check_files, **opts)
    if frame.empty:  # a header and no rows: nothing to check or split (`check` would print nan statistics and OK)
        label_file = check_label_file(args.name, args.root, target=args.target, **opts)
        raise AgiqaError(f"{label_file}: no rows under the header")
    return frame


def _registry_entries() -> dict[str, dict]:
    """datasets.yaml, the registry `agiqa.data.datasets` reads, as plain dicts: `datasets list` needs no pandas
    (importing agiqa.data.datasets costs about 0.4 s for it). tests/data/test_data_cli_list.py checks the table
    against `get_dataset_info`."""
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("agiqa.data").joinpath("datasets.yaml").read_text(encoding="utf-8"))


def _cmd_list(args: argparse.Namespace) -> int:
    entries = _registry_entries()
    rows = [("name", "targets (default first)", "rows", "label file", "images under root")]
    for name in sorted(entries):
        info = entries[name]
        default = info["default_target"]
        targets = [default] + [t for t in info["targets"] if t != default]
        rows.append((name, ", ".join(targets), str(info["rows"]), info["label_file"],
                     (info.get("image_dir") or ".") + "/<name>"))
    rows.append(("csv", "--score-col", "-", "--csv PATH", "<--image-col>"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from agiqa.data.datasets import GENERIC, get_dataset_info

    frame = _load(args, check_files=not args.no_check_files)
    mos = frame["mos"]
    expected = None if args.name == GENERIC else get_dataset_info(args.name).rows
    note = f" (the official file has {expected})" if expected not in (None, len(frame)) else ""
    attrs = frame.attrs
    print(f"{attrs['dataset']} (target {attrs['target']}): {len(frame)} rows{note}, root {attrs['root']}")
    print("image files: " + ("not checked" if args.no_check_files else "all present"))
    print(f"MOS: min {mos.min():.4g}  mean {mos.mean():.4g}  max {mos.max():.4g}")
    prompts = frame["prompt"]
    print(f"prompts: {prompts[prompts != ''].nunique()} distinct, {int((prompts == '').sum())} empty")
    counts = frame["generator"].replace("", "(unknown)").value_counts()
    print("generators: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    print("MOS histogram:")
    print("\n".join(_histogram(mos.to_numpy())))
    print("OK")
    return 0


def _histogram(values) -> list[str]:
    import numpy as np

    counts, edges = np.histogram(values, bins=HIST_BINS)
    scale = HIST_WIDTH / max(counts.max(), 1)
    return [
        f"  [{lo:8.3f}, {hi:8.3f}) {'#' * round(count * scale):<{HIST_WIDTH}} {count}"
        for lo, hi, count in zip(edges[:-1], edges[1:], counts)
    ]


def _cmd_split(args: argparse.Namespace) -> int:
    from agiqa.data.splits import make_split, prompt_leakage

    frame = _load(args, check_files=False)
    with _usage_errors():
        split = make_split(frame, method=args.method, seed=args.seed, k=args.k, fold=args.fold)
    split.validate(len(frame))
    train, val, test = split.sizes()
    fold = f", fold {split.fold} of {args.k}" if split.fold is not None else ""
    print(f"{split.dataset} {split.method} split (seed {split.seed}{fold}): train {train}, val {val}, test {test}")
    print(f"prompts shared between parts: {prompt_leakage(frame, split)}")
    if args.out:
        split.to_json(args.out)
        print(f"wrote {args.out}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from agiqa.data.synth import generate_synthetic

    with _usage_errors():
        meta = generate_synthetic(
            args.out, n=args.n, seed=args.seed, image_size=args.image_size,
            mismatch_rate=args.mismatch_rate, rater_noise=args.rater_noise,
        )
    print(f"wrote {len(meta)} images, data.csv and synth_meta.csv to {args.out}")
    print(f"read it as AGIQA-3K: agiqa datasets check agiqa3k --root {args.out}")
    return 0
