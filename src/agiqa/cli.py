"""`agiqa` command line: one sub-command group per subpackage, each registered by its own `cli` module."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from agiqa import __version__

# Each module defines `register(subparsers)` for the commands listed beside it here, in this order. Only the module of
# the command being run is imported: several of them import torch at start-up (through their package), and
# `agiqa --help`, `agiqa datasets list` or `agiqa configs list` must not wait for it. The other commands get a
# placeholder with the same help line, so the command list, `--help` and argparse's errors read as before.
# tests/test_cli_startup.py checks this table against what the modules register.
COMMANDS = {
    "agiqa.data.cli": {
        "datasets": "list the benchmark datasets or validate one",
        "split": "make a train/val/test split of a dataset's rows (labels only; images are not checked)",
        "synth": "write a synthetic AGIQA dataset (AGIQA-3K layout) with a known quality function",
    },
    "agiqa.models.cli": {"models": "list, inspect and convert models"},
    "agiqa.semantic.cli": {
        "features": "semantic (multimodal LLM) features for MA-AGIQA: extract, import official files, inspect",
    },
    "agiqa.training.cli": {
        "train": "train a model from a YAML experiment config, then test its best epoch",
        "evaluate": "score a dataset split with a trained model and report metrics",
        "reproduce": "train+test a paper experiment over several seeds, on the official and a prompt-disjoint split; "
        "table next to the paper's numbers",
        "configs": "list or print the experiment configs packaged with agiqa (for agiqa train -c NAME)",
    },
    "agiqa.training.prior": {
        "pretrain-prior": "train MoE-AGIQA's quality prior (ViT-B/16 on KonIQ-10k) -> prior.pth",
    },
    "agiqa.scoring.cli": {
        "score": "score images, folders, lists or WebDataset shards with a trained model (streaming, resumable)",
    },
    "agiqa.service.app": {
        "serve": "serve a model over HTTP: a browser page at /, POST /score, /health, /info, /metrics",
    },
    "agiqa.report.cli": {
        "report": "HTML report of runs: scatter + logistic fit, error density, per-generator/attribute tables, gate "
        "weights, worst cases",
    },
    "agiqa.demo": {"demo": "end-to-end demo on built-in synthetic data (no downloads, a few minutes on CPU)"},
}
COMMAND_MODULES = tuple(COMMANDS)
# Modules imported without their package's `__init__` (it imports torch to fill the model registry), so that
# `agiqa models list` answers at once; see agiqa._lazy.import_without_package.
WITHOUT_PACKAGE = {"agiqa.models.cli"}
ALL = object()  # build_parser(ALL): every command module imported, no placeholders


def build_parser(command: str | None | object = ALL) -> argparse.ArgumentParser:
    """The `agiqa` parser. With `command` a command name, only the module registering it is imported and the other
    commands are placeholders (same name and help line, no arguments); with None, all are placeholders (enough for
    `--help`, `--version` and an unknown command); by default every module is imported."""
    parser = argparse.ArgumentParser(
        prog="agiqa",
        description="Quality assessment of AI-generated images: datasets, splits, metrics, MANIQA / MA-AGIQA / "
        "MoE-AGIQA training, evaluation and reproduction, scoring at scale, an HTTP service and reports.",
    )
    parser.add_argument("--version", action="version", version=f"agiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name, helps in COMMANDS.items():
        if command is ALL or command in helps:
            _import_command_module(module_name).register(subparsers)
        else:
            for name, text in helps.items():
                subparsers.add_parser(name, help=text, add_help=False)
    return parser


def _import_command_module(name: str):
    if name in WITHOUT_PACKAGE:
        from agiqa._lazy import import_without_package

        return import_without_package(name)
    return importlib.import_module(name)


def command_of(argv: list[str]) -> str | None:
    """The command word of an `agiqa` command line (the first argument that is not an option: the top-level options
    take no value), or None when there is none."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not arg.startswith("-"):
            return arg
    return None


def quiet_lightning(verbose: bool) -> None:
    """Keep Lightning's start-up chatter (devices, tips) out of the CLI output unless -v.

    Lightning sets its loggers to INFO when it is imported, so this imports it first; training commands call it.
    """
    import lightning.pytorch  # noqa: F401

    if not verbose:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


# Optional dependencies and the extra that installs them, for a one-line hint instead of an ImportError.
OPTIONAL_MODULES = {"uvicorn": "serve", "fastapi": "serve", "multipart": "serve", "python_multipart": "serve",
                    "prometheus_client": "serve",
                    "ray": "ray"}
# Mistakes a user fixes (a wrong path, a missing file, a file where a folder goes): one line, exit code 2; anything
# else is a bug and shows its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    from agiqa.errors import AgiqaError

    from_console = argv is None  # the `agiqa` command itself, not a call from Python
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("agiqa").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except (AgiqaError, *USER_ERRORS) as err:
        return _report(user_message(err), args.verbose)
    except ModuleNotFoundError as err:
        extra = OPTIONAL_MODULES.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        return _report(f"{err.name} is not installed; it comes with the [{extra}] extra: "
                       f"pip install 'agiqa[{extra}]'", args.verbose)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if from_console:
            _exit_now(130)
        return 130


def _exit_now(code: int) -> None:
    """Leave an interrupted command at once: Python's exit would wait for data-loader workers and queue threads, a
    wait that can hang; what the command wrote is safe already (its files are as after kill -9, which resumes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def user_message(err: BaseException) -> str:
    """One line for a user mistake: an OSError names its file, not its errno."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def _report(message: str, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
