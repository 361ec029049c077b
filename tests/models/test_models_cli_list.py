"""`agiqa models list` answers from agiqa.models.cli's tables (no torch): they must be the registry, and the tiny
`test_*` architectures are marked as such (issue #33)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from agiqa.cli import main
from agiqa.models import create_model, list_models, list_pretrained
from agiqa.models.cli import ARCHITECTURES, PRETRAINED, TEST_NOTE


def test_the_tables_are_the_registry():
    assert list(ARCHITECTURES) == list_models(), "agiqa.models.cli.ARCHITECTURES: every architecture, in this order"
    assert list(PRETRAINED) == list_pretrained(), "agiqa.models.cli.PRETRAINED: list every arch.tag, in this order"


@pytest.mark.parametrize("pattern", ["", "maniqa*", "*agiqa*", "test_*", "moe_agiqa?*", "*.k*", "vlm_levels"])
@pytest.mark.parametrize("pretrained", [False, True])
def test_filters_as_the_registry_does(pattern, pretrained, capsys):
    expected = list_models(pattern, pretrained=pretrained)
    code = main(["models", "list", "-q", *(["--pretrained"] if pretrained else []), *([pattern] if pattern else [])])
    captured = capsys.readouterr()
    if expected:
        assert code == 0 and captured.out.split() == expected
    else:  # a filter that matches nothing is a mistake to point out, as `agiqa configs list` does
        assert code == 2 and captured.err.startswith("error: no model name matches")


def test_the_command_line_lists_the_registry_without_importing_it():
    """The console-script path, where agiqa.models.cli is read without agiqa.models (the in-process tests above have
    the registry imported already)."""
    code = "import sys; from agiqa.cli import main; main(); assert 'agiqa.models' not in sys.modules"
    for extra, expected in (([], list_models()), (["--pretrained"], list_pretrained())):
        done = subprocess.run([sys.executable, "-c", code, "models", "list", "-q", *extra], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected


def test_tiny_test_architectures_are_marked_and_the_mark_is_true(capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_models()  # still one architecture per line, name first
    marked = [line.split()[0] for line in lines if line.endswith(TEST_NOTE)]
    assert marked == [name for name in list_models() if name.startswith("test_")] and marked
    for name in marked:  # "tiny (32 px input)"
        model = create_model(name)
        assert model.config.img_size == 32
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
    for line in lines:
        if line.split()[0] not in marked:
            assert line == line.split()[0]  # paper models: the bare name
