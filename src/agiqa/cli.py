"""`agiqa` command line: one sub-command group per subpackage, each registered by its own `cli` module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from agiqa import __version__

# Each module defines `register(subparsers)`; handlers import heavy libraries lazily so `--help` stays fast.
COMMAND_MODULES = (
    "agiqa.data.cli",
    "agiqa.models.cli",
    "agiqa.semantic.cli",
    "agiqa.training.cli",
    "agiqa.training.prior",
    "agiqa.scoring.cli",
    "agiqa.service.app",
    "agiqa.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agiqa",
        description="Quality assessment of AI-generated images: datasets, splits, metrics, MANIQA / MA-AGIQA "
        "training, evaluation and scoring.",
    )
    parser.add_argument("--version", action="version", version=f"agiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def quiet_lightning(verbose: bool) -> None:
    """Keep Lightning's start-up chatter (devices, tips) out of the CLI output unless -v.

    Lightning sets its loggers to INFO when it is imported, so this imports it first; training commands call it.
    """
    import lightning.pytorch  # noqa: F401

    if not verbose:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from agiqa.errors import AgiqaError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("agiqa").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except AgiqaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
