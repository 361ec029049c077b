"""`agiqa demo`: synthetic AGIQA data → (semantic features) → train a small MA-AGIQA on CPU → evaluate → report."""
from __future__ import annotations

import math
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"
DEMO_IMAGE_SIZE = 32  # the demo model's input size: degradations are drawn at the resolution the model sees


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="end-to-end demo on built-in synthetic data (no downloads, a few minutes on CPU)",
        description="Make a synthetic AGIQA dataset, extract semantic features with --encoder when a VLM is available "
        "locally, train a small MA-AGIQA (without a VLM: the MANIQA-expert-only ablation of paper Table 3), evaluate "
        "it on the held-out test split and write predictions, metrics and plots.",
    )
    parser.add_argument("--out", default="agiqa-demo", help="output folder (default: ./agiqa-demo)")
    parser.add_argument("--n", type=int, default=10000,
                        help="number of synthetic images (more data is what the from-scratch model needs most)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data and training")
    parser.add_argument("--epochs", type=int, help="training epochs (default from the demo config)")
    parser.add_argument("--mismatch-rate", type=float, default=0.3,
                        help="share of images drawn unlike their prompt (lowers quality; only semantic experts see it)")
    parser.add_argument("--encoder", help="local VLM (Hugging Face id in the local cache, or a directory) for "
                        "semantic features; without it the MANIQA-expert-only ablation is trained")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the encoder's own code (mPLUG-Owl2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (on a terminal) or per-epoch lines "
                        "(in a log)")
    parser.set_defaults(func=_demo)


DEMO_MIN_IMAGES = 30  # the official 70/10/20 split then has 21 training images (a batch of 16) and 3 for validation


def check_demo_options(n: int, epochs: int | None, mismatch_rate: float) -> None:
    """Refuse options the demo cannot run with, before any data is drawn (data in OUT/data is reused as it is, so
    a failed run must not leave an unusable data set behind)."""
    from agiqa.errors import ConfigError

    if n < DEMO_MIN_IMAGES:
        raise ConfigError(f"--n must be at least {DEMO_MIN_IMAGES} (a training batch, validation and test images), "
                          f"got {n}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if not 0.0 <= mismatch_rate <= 1.0:
        raise ConfigError(f"--mismatch-rate must be between 0 and 1, got {mismatch_rate}")


def _demo(args) -> int:
    from agiqa.cli import quiet_lightning

    check_demo_options(args.n, args.epochs, args.mismatch_rate)
    quiet_lightning(args.verbose)
    from agiqa.training.outputs import METRIC_KEYS, format_value

    results = run_demo(args.out, n=args.n, seed=args.seed, epochs=args.epochs, encoder=args.encoder,
                       trust_remote_code=args.trust_remote_code, progress=not args.quiet,
                       mismatch_rate=args.mismatch_rate)
    overall = results["metrics"]["overall"]
    print()
    print(f"Demo model: {results['variant']}")
    values = "  ".join(f"{key.upper()} {format_value(overall[key])}" for key in METRIC_KEYS)
    print(f"Test metrics ({overall['n']} held-out images): {values}")
    print(f"Took {results['seconds']:.0f} s. Outputs in {results['run_dir']}:")
    for name in ("predictions.csv", "metrics.json", "report.md", "scatter.png", "training_curves.png", "model/"):
        print(f"  {Path(results['run_dir']) / name}")
    return 0


def run_demo(out: str | Path, n: int = 10000, seed: int = 0, epochs: int | None = None, encoder: str | None = None,
             trust_remote_code: bool = False, progress: bool = True, mismatch_rate: float = 0.3) -> dict:
    """Run the whole demo and return {"metrics", "run_dir", "variant", "seconds"}.

    Data already in `out`/data is reused as it is (whatever `n`, `seed` and `mismatch_rate` made it).
    """
    from agiqa.data.synth import generate_synthetic
    from agiqa.training.config import TrainConfig
    from agiqa.training.run import train

    check_demo_options(n, epochs, mismatch_rate)
    start = time.perf_counter()
    out = Path(out)
    data_dir = out / "data"
    if not (data_dir / "data.csv").is_file():
        print(f"Generating {n} synthetic AI-generated images in {data_dir} ...")
        generate_synthetic(data_dir, n=n, seed=seed, image_size=DEMO_IMAGE_SIZE, mismatch_rate=mismatch_rate)
    else:
        print(f"Reusing the synthetic images in {data_dir} (delete that folder to draw new ones) ...")
    overrides = [f"data.root={data_dir}", f"trainer.seed={seed}", f"output_dir={out / 'run'}"]
    if epochs is not None:
        overrides.append(f"trainer.max_epochs={epochs}")
    if encoder:
        overrides += [f"data.features.cache={out / 'features'}", f"data.features.encoder={encoder}",
                      f"data.features.trust_remote_code={str(trust_remote_code).lower()}"]
        variant = f"MA-AGIQA (MANIQA + 2 semantic experts from {encoder})"
    else:
        overrides += ["model.kwargs.semantic_experts=[]"]
        variant = "MA-AGIQA, MANIQA expert only (paper Table 3, row 1)"
        print("No VLM given (--encoder), so there are no semantic features: training the MANIQA-expert-only "
              "ablation rather than pretending with random features.")
    config = TrainConfig.from_yaml(DEMO_CONFIG, overrides)
    config.optim.t_max = cosine_steps(data_dir, config)
    print(f"Training {variant} for {config.trainer.max_epochs} epochs on {config.data.image_size}px images ...")
    metrics = train(config, progress=progress)
    return {"metrics": metrics, "run_dir": config.output_dir, "variant": variant,
            "seconds": time.perf_counter() - start}


def cosine_steps(data_dir: Path, config) -> int:
    """Optimiser steps of the whole run (train part of the demo's official split), so the per-batch cosine schedule
    reaches its minimum at the last step for any `--epochs` or data size."""
    from agiqa.data.splits import official_split

    with open(data_dir / "data.csv", encoding="utf-8") as labels:
        rows = sum(1 for _ in labels) - 1
    train_rows = len(official_split(rows).train)
    return math.ceil(train_rows / config.data.batch_size) * config.trainer.max_epochs
