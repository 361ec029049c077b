"""The light commands start without the heavy libraries (issue #33: `agiqa --help` took ~4 s importing torch), the
placeholder commands read as the real ones, and the lazy package exports show in `dir()`."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from agiqa.cli import COMMANDS, build_parser, command_of

# Seconds of import each on a 2-core machine; none of them is needed to list or to print help.
HEAVY = ("torch", "torchvision", "timm", "transformers", "lightning", "pandas", "scipy", "matplotlib")

# Run as the console script does: `agiqa ARGS` is `sys.exit(agiqa.cli.main())` with ARGS in sys.argv.
AS_CONSOLE_SCRIPT = """
import json, sys
from agiqa.cli import main
try:
    code = main()
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def run_fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["datasets", "list"], ["models", "list"],
                                  ["models", "list", "--pretrained"], ["configs", "list"]], ids=" ".join)
def test_light_command_imports_no_heavy_library(argv):
    done = run_fresh(AS_CONSOLE_SCRIPT, *argv)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr
    assert done.stdout.strip(), "the command printed nothing"
    loaded = [name for name in HEAVY if name in report["modules"]]
    assert not loaded, f"`agiqa {' '.join(argv)}` imported {loaded}"


def _registered(parser: argparse.ArgumentParser) -> dict[str, str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_command_table_is_what_the_modules_register():
    """COMMANDS (names, help lines, order) is what each module's `register` adds, so the placeholders read right."""
    for module_name, helps in COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module_name).register(parser.add_subparsers())
        assert _registered(parser) == helps, f"update agiqa.cli.COMMANDS[{module_name!r}]"
    full = build_parser()
    assert list(_registered(full).items()) == [item for helps in COMMANDS.values() for item in helps.items()]


def test_top_level_help_and_errors_read_as_with_every_module_imported(capsys):
    full, light = build_parser(), build_parser(None)
    assert light.format_help() == full.format_help()
    for argv in (["nope"], []):  # unknown command, no command
        messages = []
        for parser in (full, light):
            with pytest.raises(SystemExit):
                parser.parse_args(argv)
            messages.append(capsys.readouterr().err)
        assert messages[0] == messages[1]


@pytest.mark.parametrize("argv, command", [
    ([], None), (["--help"], None), (["-v", "--version"], None), (["datasets", "list"], "datasets"),
    (["-v", "models", "list", "-q"], "models"), (["--verbose", "--", "configs"], "configs"), (["--"], None),
])
def test_command_of(argv, command):
    assert command_of(argv) == command


def test_each_command_parses_its_own_arguments_with_only_its_module():
    args = build_parser("split").parse_args(["split", "csv", "--csv", "x.csv", "--method", "kfold", "--k", "3"])
    assert (args.command, args.method, args.k) == ("split", "kfold", 3)
    args = build_parser("models").parse_args(["models", "list", "maniqa*", "-q"])
    assert (args.filter, args.names_only) == ("maniqa*", True)


def test_models_cli_module_loads_without_the_model_registry():
    code = """
import sys
from agiqa._lazy import import_without_package
alone = import_without_package("agiqa.models.cli")
assert callable(alone.register) and "agiqa.models" not in sys.modules and "torch" not in sys.modules
import agiqa.models.cli as usual
assert usual is not alone and sys.modules["agiqa.models.cli"] is usual
assert import_without_package("agiqa.models.cli") is usual
print("ok")
"""
    done = run_fresh(code)
    assert done.stdout.strip() == "ok", done.stderr


def test_lazy_exports_show_in_dir_before_first_use():
    code = """
import json, sys
import agiqa, agiqa.data, agiqa.semantic
print(json.dumps({"agiqa": dir(agiqa), "data": dir(agiqa.data), "semantic": dir(agiqa.semantic),
                  "heavy": [m for m in ("torch", "pandas", "transformers") if m in sys.modules]}))
"""
    done = run_fresh(code)
    names = json.loads(done.stdout)
    assert {"create_model", "load_dataset", "list_models", "create_scorer", "__version__"} <= set(names["agiqa"])
    assert {"load_dataset", "make_split", "generate_synthetic"} <= set(names["data"])
    assert {"create_encoder", "extract_features", "load_features"} <= set(names["semantic"])
    assert names["heavy"] == []  # dir() lists them without importing them
    import agiqa

    assert set(agiqa.__all__) <= set(dir(agiqa))
    assert not {"lazy_getattr", "lazy_dir", "annotations"} & set(dir(agiqa))  # helpers stay out of completion
