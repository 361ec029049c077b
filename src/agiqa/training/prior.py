"""`agiqa pretrain-prior`: train MoE-AGIQA's KonIQ-10k prior network and write the prior file the main model loads."""
from __future__ import annotations

from pathlib import Path

PRIOR_FILE = "prior.pth"
DEFAULT_CONFIG = "moe_agiqa/prior_koniq10k"  # a packaged config (agiqa configs show moe_agiqa/prior_koniq10k)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain-prior", help="train MoE-AGIQA's quality prior (ViT-B/16 on KonIQ-10k) -> prior.pth",
        description="Train the prior network of MoE-AGIQA v2 with the official pretrain.py recipe (packaged config "
        "moe_agiqa/prior_koniq10k) and write <out>/prior.pth in the official layout (vit_model_state_dict + "
        "regressor_model_state_dict), ready for `model.kwargs.prior_checkpoint` or `agiqa models convert --prior`.",
    )
    parser.add_argument("--dataset", default="koniq10k", help="dataset name (agiqa datasets list) or 'csv'")
    parser.add_argument("--root", required=True, help="dataset root")
    parser.add_argument("--out", required=True, help="output directory (the run, plus prior.pth)")
    parser.add_argument("-c", "--config", help="experiment YAML, or a packaged config name "
                        "(default: the packaged moe_agiqa/prior_koniq10k)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.max_epochs=50")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    parser.set_defaults(func=_pretrain_prior)


def default_config_path() -> Path:
    from agiqa.training.experiments import config_path

    return config_path(DEFAULT_CONFIG)


def pretrain_prior(config, resume: bool = False) -> tuple[dict, Path]:
    """Train the prior (`config.model.name` must build a `MoeAgiqaPrior`); returns test metrics and prior.pth."""
    import torch

    from agiqa.models import create_model
    from agiqa.training.run import train

    check_prior_model(config.model.name)
    metrics = train(config, resume=resume)
    out = Path(config.output_dir)
    model = create_model(config.model.name, pretrained=str(out / "model"))
    if not hasattr(model, "prior_state_dict"):
        raise ValueError(f"{config.model.name} is not a prior network (use moe_agiqa_prior)")
    target = out / PRIOR_FILE
    tmp = target.with_suffix(".tmp")
    torch.save(model.prior_state_dict(), tmp)
    tmp.replace(target)
    return metrics, target


PRIOR_FAMILY = "moe_agiqa_prior"


def check_prior_model(name: str) -> None:
    """Refuse, before any training, a `model.name` that does not build a prior network."""
    from agiqa.errors import ConfigError
    from agiqa.models._registry import architecture_family, model_entrypoint

    model_entrypoint(name)  # an unknown name: its own error, with close matches
    if architecture_family(name) != PRIOR_FAMILY:
        raise ConfigError(f"model.name {name!r} is not a prior network: pretrain-prior trains {PRIOR_FAMILY} "
                          f"(or test_{PRIOR_FAMILY}, its tiny version); `agiqa train` trains {name}")


def _pretrain_prior(args) -> int:
    from agiqa.cli import quiet_lightning

    quiet_lightning(args.verbose)
    from agiqa.training.cli import _print_overall
    from agiqa.training.config import TrainConfig
    from agiqa.training.experiments import resolve_config

    config = TrainConfig.from_yaml(resolve_config(args.config) if args.config else default_config_path(),
                                   [f"data.dataset={args.dataset}", f"data.root={args.root}", *args.overrides])
    config.output_dir = args.out
    metrics, target = pretrain_prior(config, resume=args.resume)
    if metrics:
        _print_overall(metrics, args.out)
    print(f"prior written to {target}")
    return 0
