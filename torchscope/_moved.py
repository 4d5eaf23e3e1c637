"""Modules that moved when the package was split into layers, still importable by their old
names for one release (0.2), with a :class:`DeprecationWarning` that names the new place.

An old name is a thin module whose attributes are those of the new one: the objects are the
same, so ``isinstance`` checks, pickles (which name the new module) and ``from ... import``
keep working. Only the old names are served here; the new modules are ordinary imports.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: Old module name -> the module that now holds its contents.
MOVED: dict[str, str] = {
    "torchscope.summarize": "torchscope.collect.summary",
    "torchscope.memory": "torchscope.collect.memory",
    "torchscope.costs": "torchscope.collect.costs",
    "torchscope.hooks": "torchscope.collect.hooks",
    "torchscope.graph": "torchscope.collect.graph",
    "torchscope.gradients": "torchscope.collect.gradients",
    "torchscope.timing": "torchscope.collect.timing",
    "torchscope.freezing": "torchscope.collect.freezing",
    "torchscope.loading": "torchscope.cli.loading",
    "torchscope.demo": "torchscope.cli.demo",
    "torchscope.lightning": "torchscope.integrations.lightning",
    "torchscope.pytest_plugin": "torchscope.integrations.pytest_plugin",
}


class _OldName(types.ModuleType):
    """The module an old name imports: every attribute is looked up in the new module."""

    def __init__(self, name: str, target: types.ModuleType) -> None:
        super().__init__(name, target.__doc__)
        self.__dict__["_target"] = target

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.__dict__["_target"], attribute)

    def __dir__(self) -> list[str]:
        return dir(self.__dict__["_target"])


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (or use the names exported "
            f"by `torchscope`). The old name goes away in torchscope 0.2.",
            DeprecationWarning,
            stacklevel=2,
        )
        return _OldName(spec.name, importlib.import_module(new))

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Serve the old names (idempotent; called when ``torchscope`` is imported)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
