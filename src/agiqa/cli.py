"""`agiqa` command line: one sub-command group per subpackage, each registered by its own `cli` module."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

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
    "agiqa.report.cli",
    "agiqa.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agiqa",
        description="Quality assessment of AI-generated images: datasets, splits, metrics, MANIQA / MA-AGIQA / "
        "MoE-AGIQA training, evaluation and reproduction, scoring at scale, an HTTP service and reports.",
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


# Optional dependencies and the extra that installs them, for a one-line hint instead of an ImportError.
OPTIONAL_MODULES = {"uvicorn": "serve", "fastapi": "serve", "multipart": "serve", "python_multipart": "serve",
                    "prometheus_client": "serve",
                    "ray": "ray"}
# Mistakes a user fixes (a wrong path, a missing file): one line, exit code 2; anything else is a bug and shows
# its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    from agiqa.errors import AgiqaError

    parser = build_parser()
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
        return 130


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
