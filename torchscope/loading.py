"""Find the model a command-line target names: ``file.py[:name]`` or ``package.module:name``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from torchscope.errors import TorchscopeError

__all__ = ["ModelLoadError", "load_model"]


class ModelLoadError(TorchscopeError):
    """The command-line target does not lead to an ``nn.Module``."""


def _import_target(source: str) -> ModuleType:
    path = Path(source)
    if source.endswith(".py"):
        if not path.is_file():
            raise ModelLoadError(f"no such file: {source}")
        spec = importlib.util.spec_from_file_location(f"_torchscope_target_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {source} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))  # the file's own imports of its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ModelLoadError(f"importing {source} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    try:
        return importlib.import_module(source)
    except ImportError as e:
        raise ModelLoadError(f"cannot import module {source!r}: {e}") from e


def _instantiate(value: Any, label: str) -> nn.Module:
    if isinstance(value, nn.Module):
        return value
    if callable(value):
        try:
            made = value()
        except TypeError as e:
            raise ModelLoadError(
                f"{label} must build a model when called with no arguments: {e}"
            ) from e
        if isinstance(made, nn.Module):
            return made
        raise ModelLoadError(f"{label}() returned {type(made).__name__}, not an nn.Module")
    raise ModelLoadError(
        f"{label} is a {type(value).__name__}, not an nn.Module or a function returning one"
    )


def load_model(target: str) -> tuple[nn.Module, ModuleType]:
    """The model named by ``target`` and the Python module it came from.

    ``target`` is ``path/to/file.py``, ``path/to/file.py:name`` or ``package.module:name``.
    ``name`` may be an ``nn.Module`` instance, an ``nn.Module`` class, or a function; classes and
    functions are called with no arguments. Without ``:name``, the file must define exactly
    one module-level ``nn.Module`` instance, or else exactly one ``nn.Module`` class of its own.
    """
    source, _, name = target.partition(":")
    if not source.endswith(".py") and not name:
        raise ModelLoadError(
            f"cannot tell which model {target!r} means: give a file (model.py, model.py:name) "
            "or a module and a name (torchvision.models:resnet18)"
        )
    module = _import_target(source)
    if name:
        if not hasattr(module, name):
            found = sorted(
                n for n, v in vars(module).items() if _is_model_like(v) and not n.startswith("_")
            )
            raise ModelLoadError(
                f"{source} has no attribute {name!r}"
                + (f"; models found: {', '.join(found)}" if found else "")
            )
        return _instantiate(getattr(module, name), f"{source}:{name}"), module

    instances = [
        n for n, v in vars(module).items() if isinstance(v, nn.Module) and not n.startswith("_")
    ]
    if len(instances) == 1:
        return getattr(module, instances[0]), module
    classes = [
        n
        for n, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__
    ]
    if not instances and len(classes) == 1:
        return _instantiate(getattr(module, classes[0]), f"{source}:{classes[0]}"), module
    candidates = instances or classes
    if not candidates:
        raise ModelLoadError(f"{source} defines no nn.Module instance or class")
    raise ModelLoadError(
        f"{source} defines several models ({', '.join(candidates)}); pick one with {source}:NAME"
    )


def _is_model_like(value: Any) -> bool:
    return isinstance(value, nn.Module) or (inspect.isclass(value) and issubclass(value, nn.Module))
