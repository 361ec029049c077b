"""`agiqa train`, `agiqa evaluate`, `agiqa reproduce`, `agiqa configs` (the packaged experiment configs)."""
from __future__ import annotations


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_reproduce(subparsers)
    _register_configs(subparsers)


def _register_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model from a YAML experiment config, then test its best epoch",
        description="Train with Lightning from a YAML config (a file, or a packaged experiment by name: `agiqa configs "
        "list`), choose the best epoch by validation SRCC+PLCC, test it and write predictions, metrics, report and "
        "plot to the output directory.",
    )
    parser.add_argument("-c", "--config", required=True,
                        help="experiment: a YAML file, or a packaged config name such as ma_agiqa/agiqa3k "
                        "(a path that exists wins)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.root=/data/AGIQA-3K --set trainer.max_epochs=5")
    parser.add_argument("--out", help="output directory (overrides output_dir in the config)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    parser.add_argument("--official-quirks", action="store_true",
                        help="evaluate as the released code does (drop_last on val/test, shuffled test; MoE-AGIQA: the "
                        "best epoch is chosen on the test split, labelled so in metrics.json)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=_train)


def load_config(args):
    from agiqa.training.config import TrainConfig
    from agiqa.training.experiments import resolve_config

    config = TrainConfig.from_yaml(resolve_config(args.config), args.overrides)
    if getattr(args, "out", None):
        config.output_dir = args.out
    if getattr(args, "official_quirks", False):
        config.official_quirks = True
    return config


def _train(args) -> int:
    from agiqa.cli import quiet_lightning

    quiet_lightning(args.verbose)
    import yaml

    config = load_config(args)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    from agiqa.training.run import train

    metrics = train(config, resume=args.resume)
    if metrics:
        _print_overall(metrics, config.output_dir)
    return 0


def _print_overall(metrics: dict, out_dir) -> None:
    from agiqa.training.outputs import METRIC_KEYS, format_value

    parts = metrics.get("per_target") or {"": metrics["overall"]}
    for target, values in parts.items():
        shown = "  ".join(f"{key.upper()} {format_value(values.get(key))}" for key in METRIC_KEYS)
        print(f"test{' ' + target if target else ''} ({values.get('n')} images): {shown}")
    print(f"results in {out_dir} (figures, per-generator tables, worst cases: agiqa report {out_dir})")


def _register_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a dataset split with a trained model and report metrics",
        description="Evaluate a trained model directory (a run's model/ folder or any save_pretrained output) on a "
        "dataset: metrics raw and after the logistic fit, per-generator breakdown, predictions CSV, plot.",
    )
    parser.add_argument("model_dir", help="directory with config.json + model.safetensors, or a zero-shot VLM "
                        "baseline: vlm:<VLM id or folder> (quality) / vlm-alignment:<...> (no training; its level "
                        "answers are extracted into --features, default OUT/features)")
    parser.add_argument("--dataset", required=True, help="dataset name (agiqa datasets list) or 'csv'")
    parser.add_argument("--root", required=True, help="dataset root directory")
    parser.add_argument("--target", help="MOS column to evaluate against (dataset default if omitted; a multi-target "
                        "model: its own targets)")
    parser.add_argument("--csv", help="label file for --dataset csv")
    parser.add_argument("--image-col")
    parser.add_argument("--score-col")
    parser.add_argument("--prompt-col")
    parser.add_argument("--subset", choices=("test", "all"), default="test",
                        help="'test': the split's test part; 'all': every row (cross-dataset)")
    parser.add_argument("--split-method", default="official")
    parser.add_argument("--split-seed", type=int, default=20)
    parser.add_argument("--split-file", help="split JSON written by a training run (split.json)")
    parser.add_argument("--features", help="semantic feature cache for MA-AGIQA models")
    parser.add_argument("--encoder", help="VLM id/path to extract missing semantic features")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the VLM's own code (mPLUG-Owl2)")
    parser.add_argument("--image-size", type=int, help="input size (defaults to the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="compute precision; 'auto' (default): for a run's model/ folder the precision the run "
                        "tested it in (its metrics.json), so evaluate reproduces the run's numbers; otherwise bf16 on "
                        "GPUs and AMX / AVX512-BF16 CPUs, else fp32")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from agiqa.cli import quiet_lightning

    quiet_lightning(args.verbose)
    from agiqa.models.vlm_levels import is_vlm_spec
    from agiqa.data.splits import METHODS
    from agiqa.errors import ConfigError
    from agiqa.training.config import DataSection, FeatureSection
    from agiqa.training.run import evaluate, model_image_size

    if args.split_method not in METHODS:
        raise ConfigError(f"--split-method must be one of {', '.join(METHODS)}; got {args.split_method!r}")
    if args.image_size is not None and args.image_size < 1:
        raise ConfigError(f"--image-size must be at least 1, got {args.image_size}")
    zero_shot = is_vlm_spec(args.model_dir)  # takes no pixels: the image size is not used
    data = DataSection(dataset=args.dataset, root=args.root, target=args.target, csv=args.csv,
                       image_col=args.image_col, score_col=args.score_col, prompt_col=args.prompt_col,
                       split_method=args.split_method, split_seed=args.split_seed, split_file=args.split_file,
                       image_size=args.image_size or (DataSection.image_size if zero_shot
                                                      else model_image_size(args.model_dir)),
                       features=FeatureSection(cache=args.features, encoder=args.encoder,
                                               trust_remote_code=args.trust_remote_code, precision=args.precision))
    metrics = evaluate(args.model_dir, data, args.out, subset="all" if args.subset == "all" else "split",
                       device=args.device, precision=args.precision)
    _print_overall(metrics, args.out)
    return 0


def _register_reproduce(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="train+test a paper experiment over several seeds, on the official and a prompt-disjoint "
        "split; table next to the paper's numbers",
        description="Run a paper experiment (the packaged config <model>/<dataset>, e.g. ma_agiqa/agiqa3k) for N seeds "
        "(split and training seed both vary; seed 20 first, the official one) on the official split and on a "
        "prompt-disjoint split (the official AGIQA-3K split tests prompts seen in training), and write one markdown "
        "table with mean ± std per kind of split next to the paper. Runs go to OUT/<split>/seed<N>/.",
    )
    parser.add_argument("model", help="a model folder of the configs: ma-agiqa, maniqa, moe-agiqa, ...; or a "
                        "zero-shot VLM baseline, vlm:<VLM id or folder> (no training: each seed's test part scored; "
                        "--dataset is then a dataset name)")
    parser.add_argument("--dataset", required=True,
                        help="experiment under the model's configs, e.g. agiqa3k, aigiqa20k, ablations/agiqa3k_concat")
    parser.add_argument("--root", required=True, help="dataset root")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (per kind of split)")
    parser.add_argument("--splits", default="official,prompt_disjoint",
                        help="kinds of split, comma-separated: official (the config's split: official for seed 20, "
                        "random for the others) and/or prompt_disjoint (no prompt in two parts); one table column "
                        "each (default: both)")
    parser.add_argument("--configs-dir", default=None,
                        help="a folder of your own experiment YAMLs laid out as <model>/<dataset>.yaml "
                        "(default: the configs packaged with agiqa)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a VLM baseline's own code")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="compute precision of a VLM baseline (training runs take trainer.precision from the "
                        "config or --set)")
    parser.add_argument("--out", required=True, help="output directory (one sub-folder per seed)")
    parser.set_defaults(func=_reproduce)


def _reproduce(args) -> int:
    from agiqa.cli import quiet_lightning

    quiet_lightning(args.verbose)
    from agiqa.models.vlm_levels import is_vlm_spec
    from agiqa.training.config import DataSection, FeatureSection
    from agiqa.training.experiments import experiment_config
    from agiqa.training.reproduce import reproduce, reproduce_zero_shot

    splits = tuple(kind.strip() for kind in args.splits.split(",") if kind.strip())
    if is_vlm_spec(args.model):
        data = DataSection(dataset=args.dataset, root=args.root,
                           features=FeatureSection(trust_remote_code=args.trust_remote_code,
                                                   precision=args.precision))
        table = reproduce_zero_shot(args.model, data, args.seeds, args.out, splits=splits, precision=args.precision)
    else:
        config_path = experiment_config(args.model, args.dataset, args.configs_dir)
        table = reproduce(config_path, args.root, args.seeds, args.out, args.overrides,
                          paper_model=args.model.replace("-", "_"), splits=splits)
    print(table)
    return 0


def _register_configs(subparsers) -> None:
    parser = subparsers.add_parser(
        "configs", help="list or print the experiment configs packaged with agiqa (for agiqa train -c NAME)",
        description="The paper experiments ship inside the package as YAML files; `agiqa train -c NAME` and "
        "`agiqa reproduce` find them by name (e.g. ma_agiqa/agiqa3k). `show NAME > my.yaml` gives a copy to edit.",
    )
    actions = parser.add_subparsers(dest="configs_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="names of the packaged configs, with the first comment line of each")
    listing.add_argument("filter", nargs="?", help="keep names containing this text (or matching it as a glob: "
                         "'ma_agiqa/ablations/*')")
    listing.add_argument("-q", "--names-only", action="store_true", help="names only, one per line")
    listing.set_defaults(func=_configs_list)
    show = actions.add_parser("show", help="print a packaged config's YAML")
    show.add_argument("name", help="config name, e.g. ma_agiqa/agiqa3k (.yaml optional)")
    show.add_argument("--path", action="store_true", help="print the file's location instead of its text")
    show.set_defaults(func=_configs_show)


DESCRIPTION_WIDTH = 100


def _configs_list(args) -> int:
    from agiqa.errors import AgiqaError
    from agiqa.training.experiments import config_description, list_configs

    names = list_configs(args.filter)
    if not names:
        raise AgiqaError(f"no packaged config matches {args.filter!r}; `agiqa configs list` shows them all")
    width = max(len(name) for name in names)
    for name in names:
        if args.names_only:
            print(name)
            continue
        description = config_description(name)
        if len(description) > DESCRIPTION_WIDTH:
            description = description[: DESCRIPTION_WIDTH - 3].rstrip() + "..."
        print(f"{name:<{width}}  {description}".rstrip())
    return 0


def _configs_show(args) -> int:
    from agiqa.training.experiments import config_path, config_text

    if args.path:
        print(config_path(args.name))
    else:
        text = config_text(args.name)
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
