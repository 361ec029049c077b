"""Lazy package exports, so `agiqa --help` does not import torch, pandas or transformers."""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Callable


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `exports[name]` (a module path) on first access of `name`.

    It also gives `package` (the module calling it, being imported) a `__dir__` listing the exports, unless it has
    one: without it `dir()` and tab completion would not show them before their first use.
    """
    module = sys.modules.get(package)
    if module is not None and "__dir__" not in vars(module):
        module.__dir__ = lazy_dir(package, exports)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


def lazy_dir(package: str, exports: dict[str, str]) -> Callable[[], list[str]]:
    """A module `__dir__` listing the lazy `exports` beside the names already defined, so that `dir()` and tab
    completion show them before their first use."""

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __dir__


def import_without_package(name: str) -> ModuleType:
    """Module `name`, without running its package's `__init__` when that package is not imported yet.

    For a command-line module under a package whose `__init__` imports torch (agiqa.models fills its registry so):
    `agiqa models list` must not wait for it. The module is executed on its own and not entered in sys.modules, so a
    later `import name` makes the usual module; it must therefore keep no state and import what its handlers need
    inside them. When the package (or the module) is already imported, this is `importlib.import_module(name)`.
    """
    package, _, _ = name.rpartition(".")
    if name in sys.modules or not package or package in sys.modules:
        return importlib.import_module(name)
    package_spec = importlib.util.find_spec(package)  # imports the package's parents, not the package
    locations = package_spec.submodule_search_locations if package_spec is not None else None
    spec = importlib.machinery.PathFinder.find_spec(name, locations) if locations else None
    if spec is None or spec.loader is None:
        return importlib.import_module(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
