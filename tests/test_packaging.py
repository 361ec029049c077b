"""Packaging (issue #33): the Apache-2.0 LICENSE that pyproject declares ships with the package, in the SPDX form
setuptools keeps accepting after 2027-02-18; and the package itself needs none of the `dev` extra's tools, so users
install it with `pip install ".[serve]"` (or plain `pip install .`) and no test tooling."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_file_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190


def test_pyproject_license_is_an_spdx_expression_with_its_file():
    config = _pyproject()
    assert config["project"]["license"] == "Apache-2.0"  # not the deprecated {text = ...} table
    assert config["project"]["license-files"] == ["LICENSE"]
    setuptools = next(req for req in config["build-system"]["requires"] if req.startswith("setuptools"))
    assert setuptools == "setuptools>=77"  # the first setuptools that reads license-files / SPDX license strings


def _imported_top_level_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_imports_no_dev_tool():
    dev_only = {"pytest", "hypothesis", "httpx", "selenium", "ruff", "_pytest"}
    for path in sorted((ROOT / "src" / "agiqa").rglob("*.py")):
        used = _imported_top_level_modules(path) & dev_only
        assert not used, f"{path.relative_to(ROOT)} imports {sorted(used)}, which only the [dev] extra installs"
