"""Find the model, and the input to run it with, that a command-line target names.

A target is ``path/to/file.py``, ``path/to/file.py:NAME`` or ``package.module:NAME``. Without
a name, a file is searched the way users write models (see :func:`find_model`); the input
comes from the file's ``example_input`` (or the older ``EXAMPLE_INPUT_SIZE``).

Every failure of the user's file (a syntax error, an import that fails, a factory that
raises, no model, several models) is a :class:`ModelLoadError` whose message names the file,
the line or the candidates, and what to do.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from torchscope.errors import TorchscopeError

__all__ = [
    "FACTORY_NAMES",
    "INPUT_NAME",
    "LoadedModel",
    "ModelLoadError",
    "example_input",
    "find_model",
    "import_source",
    "input_hint",
    "load",
    "load_model",
]

#: Names of the factory functions looked for, in this order.
FACTORY_NAMES = ("build_model", "get_model", "make_model", "create_model")

#: The module-level name of a file's example input: a tensor, a tuple of positional
#: arguments, a dict of keyword arguments, or a function of no arguments returning one.
INPUT_NAME = "example_input"

#: Zero-argument functions never called while searching: they run the script, not build.
_NEVER_CALLED = frozenset({"main", "train", "run", "test", "evaluate", "cli", INPUT_NAME})

_LOOKED_FOR = (
    "a module-level nn.Module instance, a factory function ("
    + ", ".join(FACTORY_NAMES)
    + "), a public function with no arguments returning an nn.Module, "
    "and an nn.Module subclass constructible with no arguments"
)

_module_ids = itertools.count()

Candidate = tuple[str, nn.Module]  # how it was found (``model``, ``Net()``), and the model


class ModelLoadError(TorchscopeError):
    """The command-line target does not lead to a model, or to an input for it."""


@dataclass(frozen=True)
class LoadedModel:
    """A model found from a command-line target.

    Attributes:
        model: the ``nn.Module``.
        name: how it was found: ``model`` (an instance), ``build_model()`` (a function's
            result) or ``Net()`` (a class constructed with no arguments).
        module: the Python module it came from.
        source: the file or module as the user wrote it (``models/tiny.py``).
    """

    model: nn.Module
    name: str
    module: ModuleType
    source: str

    @property
    def stem(self) -> str:
        """A short name for output files: the file's stem, or the model's name."""
        if self.source.endswith(".py") or Path(self.source).is_file():
            return Path(self.source).stem
        return self.name.removesuffix("()") or self.source.rpartition(".")[2]


# -- importing ----------------------------------------------------------------------------------


def _line_in(error: BaseException, path: Path | None) -> int | None:
    """The line of ``path`` deepest in ``error``'s traceback (where the file was running)."""
    if path is None:
        return None
    target = path.resolve()
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        try:
            if Path(frame.filename).resolve() == target:
                line = frame.lineno
        except (OSError, ValueError):
            continue
    return line


def _where(source: str, line: int | None) -> str:
    return f"{source}, line {line}" if line else source


def _at_line(error: BaseException, path: Path | None) -> str:
    line = _line_in(error, path)
    return f" at line {line}" if line else ""


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, ModuleNotFoundError) and error.name:
        text += (
            f" (is {error.name.partition('.')[0]!r} installed in the Python that runs "
            f"torchscope, {sys.executable}?)"
        )
    return text


def _syntax_error_message(source: str, error: SyntaxError) -> str:
    file = error.filename or source
    try:  # the file as the user wrote it, unless the error is in a file it imports
        if Path(file).resolve() == Path(source).resolve():
            file = source
    except (OSError, ValueError):
        pass
    where = f"{file}, line {error.lineno}" if error.lineno else file
    code = (error.text or "").strip()
    return f"syntax error in {where}: {error.msg}" + (f": {code}" if code else "")


@contextmanager
def _on_sys_path(folder: Path | None) -> Iterator[None]:
    """Let the file import its neighbours while it is imported and its factories run."""
    entry = str(folder) if folder is not None else None
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_file(source: str, path: Path) -> ModuleType:
    # a unique name: two files with the same stem (`torchscope diff a/model.py b/model.py`)
    # must not replace each other in sys.modules, where dataclasses and pickle look them up
    name = f"_torchscope_target_{next(_module_ids)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {source} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # do not leave __pycache__ folders next to the user's files
    write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    except SyntaxError as e:
        raise ModelLoadError(_syntax_error_message(source, e)) from e
    except SystemExit as e:  # a script's argparse or sys.exit() at module level
        raise ModelLoadError(
            f"importing {source} exited{_at_line(e, path)} (SystemExit: {e}); move the "
            'script\'s own work under `if __name__ == "__main__":`'
        ) from e
    except Exception as e:
        raise ModelLoadError(f"importing {source} failed{_at_line(e, path)}: {_describe(e)}") from e
    finally:
        sys.dont_write_bytecode = write_bytecode
    return module


def import_source(source: str) -> ModuleType:
    """Import a Python file (``model.py``) or an importable module (``package.module``)."""
    path = Path(source)
    if source.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"no such file: {source}")
        with _on_sys_path(path.resolve().parent):
            return _import_file(source, path)
    try:
        return importlib.import_module(source)
    except ImportError as e:
        raise ModelLoadError(f"cannot import module {source!r}: {e}") from e
    except SyntaxError as e:
        raise ModelLoadError(_syntax_error_message(source, e)) from e
    except Exception as e:
        raise ModelLoadError(f"importing {source} failed: {_describe(e)}") from e


def _file_of(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


# -- what the file defines ----------------------------------------------------------------------


def _module_level_assignments(path: Path | None) -> set[str] | None:
    """Names a file assigns at module level (``model = Net()``), not the ones it imports.

    None when the source cannot be read: then every public instance counts.
    """
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    statements: list[ast.stmt] = list(tree.body)
    while statements:  # module level includes the bodies of if/try/with/for at module level
        statement = statements.pop()
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(statement, ast.Assign):
            targets: list[ast.expr] = list(statement.targets)
        elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
            targets = [statement.target]
        else:
            targets = []
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(statement, field, ()):
                if isinstance(child, ast.ExceptHandler):
                    statements.extend(child.body)
                elif isinstance(child, ast.stmt):
                    statements.append(child)
    return names


def _defined_here(value: Any, module: ModuleType) -> bool:
    return getattr(value, "__module__", None) == module.__name__


def _required_parameters(value: Callable[..., Any]) -> list[str] | None:
    """Parameters a call with no arguments lacks; None when the signature is unknown."""
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return None
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _returns_value(function: Callable[..., Any]) -> bool | None:
    """Whether ``function``'s own body has a ``return <value>``; None when unknown."""
    try:
        tree = ast.parse(inspect.getsource(function).strip())
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    definition = tree.body[0] if tree.body else None
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    nodes: list[ast.AST] = list(definition.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            nodes.extend(ast.iter_child_nodes(node))
    return False


def _may_return_a_module(function: Callable[..., Any]) -> bool:
    """Judge by the return annotation, else by the body, whether calling is worth it."""
    try:
        annotation = inspect.signature(function, eval_str=True).return_annotation
    except Exception:  # an annotation naming something the file never imported, ...
        annotation = inspect.Signature.empty
    if annotation is not inspect.Signature.empty:
        return inspect.isclass(annotation) and issubclass(annotation, nn.Module)
    return _returns_value(function) is not False


def _build(value: Any, label: str, source: str, path: Path | None) -> nn.Module:
    """``value`` if it is a model, else the model it returns when called with no arguments."""
    if isinstance(value, nn.Module):
        return value
    if not callable(value):
        raise ModelLoadError(
            f"{source}: {label} is a {type(value).__name__}, not an nn.Module, an nn.Module "
            "class or a function returning one"
        )
    missing = _required_parameters(value)
    if missing:
        raise ModelLoadError(
            f"{source}: {label} needs arguments ({', '.join(missing)}); torchscope calls it with "
            f"none: give them defaults, or add `def build_model(): return {label}(...)` to the file"
        )
    try:
        made = value()
    except Exception as e:
        where = _where(source, _line_in(e, path))
        raise ModelLoadError(f"{label}() failed in {where}: {_describe(e)}") from e
    if not isinstance(made, nn.Module):
        raise ModelLoadError(
            f"{source}: {label}() returned a {type(made).__name__}, not an nn.Module"
        )
    return made


def _outermost(candidates: list[Candidate]) -> list[Candidate]:
    """Drop candidates that another candidate contains (a block inside the network)."""
    if len(candidates) < 2:
        return candidates
    contained_ids: set[int] = set()
    contained_types: set[type] = set()
    for _, model in candidates:
        for inner in itertools.islice(model.modules(), 1, None):
            contained_ids.add(id(inner))
            contained_types.add(type(inner))
    outer = [
        (name, model)
        for name, model in candidates
        if id(model) not in contained_ids
        and not (name.endswith("()") and type(model) in contained_types)
    ]
    return outer or candidates


def _several(source: str, kind: str, candidates: list[Candidate]) -> ModelLoadError:
    listed = ", ".join(f"{name} ({type(model).__name__})" for name, model in candidates)
    names = [name.removesuffix("()") for name, _ in candidates]
    return ModelLoadError(
        f"{source} has several {kind}: {listed}; pick one with --model NAME, "
        f"e.g. --model {names[0]}"
    )


def _instances(module: ModuleType, path: Path | None) -> list[Candidate]:
    """Step 1: public module-level instances the file assigns; one object counts once."""
    assigned = _module_level_assignments(path)
    instances: list[Candidate] = []
    for n, v in vars(module).items():
        if (
            isinstance(v, nn.Module)
            and not n.startswith("_")
            and (assigned is None or n in assigned)
            and all(v is not other for _, other in instances)
        ):
            instances.append((n, v))
    return _outermost(instances)


def _factories(module: ModuleType, source: str, path: Path | None) -> list[Candidate]:
    """Step 2: the factory function with a conventional name, called."""
    namespace = vars(module)
    names = [
        n
        for n in FACTORY_NAMES
        if inspect.isfunction(namespace.get(n)) and _defined_here(namespace[n], module)
    ]
    if len(names) > 1:
        raise ModelLoadError(
            f"{source} has several factory functions: {', '.join(names)}; pick one with "
            f"--model NAME, e.g. --model {names[0]}"
        )
    return [(f"{n}()", _build(namespace[n], n, source, path)) for n in names]


def _function_results(
    module: ModuleType, source: str, path: Path | None, skipped: list[str]
) -> list[Candidate]:
    """Step 3: public functions of the file that return a model when called with nothing."""
    results: list[Candidate] = []
    for n, v in vars(module).items():
        if n.startswith("_") or n in _NEVER_CALLED or not inspect.isfunction(v):
            continue
        if (
            not _defined_here(v, module)
            or inspect.isgeneratorfunction(v)
            or inspect.iscoroutinefunction(v)
        ):
            continue
        missing = _required_parameters(v)
        if missing:
            skipped.append(f"function {n} (needs {', '.join(missing)})")
            continue
        if not _may_return_a_module(v):
            continue
        try:
            result = v()
        except Exception as e:
            where = _where(source, _line_in(e, path))
            raise ModelLoadError(
                f"{n}() failed in {where}: {_describe(e)} (torchscope calls public functions "
                "without arguments to find the model; name the model with --model NAME)"
            ) from e
        if isinstance(result, nn.Module):
            results.append((f"{n}()", result))
    return results


def _class_instances(
    module: ModuleType, source: str, path: Path | None, skipped: list[str]
) -> list[Candidate]:
    """Step 4: public nn.Module classes of the file that build with no arguments."""
    built: list[Candidate] = []
    for n, v in vars(module).items():
        if n.startswith("_") or not inspect.isclass(v) or not issubclass(v, nn.Module):
            continue
        if not _defined_here(v, module) or inspect.isabstract(v):
            continue
        missing = _required_parameters(v)
        if missing:
            skipped.append(f"class {n} (needs {', '.join(missing)})")
            continue
        built.append((f"{n}()", _build(v, n, source, path)))
    return _outermost(built)


def _by_name(module: ModuleType, name: str, source: str, path: Path | None) -> Candidate:
    namespace = vars(module)
    if name not in namespace:
        found = sorted(
            n
            for n, v in namespace.items()
            if not n.startswith("_")
            and (_is_model_like(v) or (n in FACTORY_NAMES and inspect.isfunction(v)))
        )
        raise ModelLoadError(
            f"{source} has no attribute {name!r}"
            + (f"; models found: {', '.join(found)}" if found else "")
        )
    value = namespace[name]
    model = _build(value, name, source, path)
    return (name if isinstance(value, nn.Module) else f"{name}()"), model


def find_model(
    module: ModuleType, *, source: str, name: str | None = None
) -> tuple[nn.Module, str]:
    """The model ``module`` defines and how it was found (``model``, ``build_model()``).

    With ``name``: that attribute: an ``nn.Module``, an ``nn.Module`` class, or a function
    (classes and functions are called with no arguments). Without, in this order:

    1. module-level ``nn.Module`` instances the file assigns (not imported ones);
    2. a factory function ``build_model``, ``get_model``, ``make_model`` or ``create_model``;
    3. a public function of the file with no required arguments that returns an
       ``nn.Module`` (judged by its return annotation, else it is called);
    4. ``nn.Module`` subclasses of the file constructible with no arguments.

    The first step that finds something decides. Where several instances or classes are
    found, one that the others do not contain (the whole network, not its blocks) is chosen;
    if that leaves several, :class:`ModelLoadError` lists them. A function or class that
    raises when called is a :class:`ModelLoadError` naming it and the line.
    """
    path = _file_of(module)
    if name:
        found_as, model = _by_name(module, name, source, path)
        return model, found_as
    skipped: list[str] = []  # what could not be called with no arguments
    steps: list[tuple[str, Callable[[], list[Candidate]]]] = [
        ("nn.Module instances", lambda: _instances(module, path)),
        ("factory functions", lambda: _factories(module, source, path)),
        ("functions returning a model", lambda: _function_results(module, source, path, skipped)),
        ("nn.Module classes", lambda: _class_instances(module, source, path, skipped)),
    ]
    for kind, step in steps:
        candidates = step()
        if len(candidates) == 1:
            found_as, model = candidates[0]
            return model, found_as
        if candidates:
            raise _several(source, kind, candidates)
    seen = f"; found only {', '.join(skipped)}" if skipped else ""
    raise ModelLoadError(
        f"found no model in {source}: looked for {_LOOKED_FOR}{seen}. Add "
        "`def build_model(): return MyModel(...)` to the file, or name the model with --model NAME"
    )


def _is_model_like(value: Any) -> bool:
    return isinstance(value, nn.Module) or (inspect.isclass(value) and issubclass(value, nn.Module))


def _split_target(target: str, name: str | None) -> tuple[str, str | None]:
    source, model_name = target, None
    if not Path(target).is_file() and ":" in target:
        source, _, model_name = target.rpartition(":")
        # a Windows drive (C:\models\net.py) is not a name
        if len(source) == 1 and model_name.startswith(("\\", "/")):
            source, model_name = target, None
    if name and model_name and name != model_name:
        raise ModelLoadError(
            f"{target} names the model {model_name!r} but --model names {name!r}; give one"
        )
    return source, name or model_name or None


def load(target: str, *, name: str | None = None) -> LoadedModel:
    """Import the file or module ``target`` names and find its model (see :func:`find_model`).

    Args:
        target: ``file.py``, ``file.py:NAME`` or ``package.module:NAME``.
        name: the model's name in the file, as ``--model NAME`` gives it.
    """
    source, model_name = _split_target(target, name)
    is_file = source.endswith(".py") or Path(source).is_file()
    if not is_file and not model_name:
        raise ModelLoadError(
            f"cannot tell which model {target!r} means: give a file (model.py, model.py:NAME) "
            "or a module and a name (torchvision.models:resnet18)"
        )
    module = import_source(source)
    path = _file_of(module)
    with _on_sys_path(path.resolve().parent if is_file and path else None):
        model, found_as = find_model(module, source=source, name=model_name)
    return LoadedModel(model=model, name=found_as, module=module, source=source)


def load_model(target: str) -> tuple[nn.Module, ModuleType]:
    """The model named by ``target`` and the Python module it came from (see :func:`load`)."""
    loaded = load(target)
    return loaded.model, loaded.module


# -- the input ----------------------------------------------------------------------------------


def example_input(loaded: LoadedModel) -> Any | None:
    """The file's ``example_input`` (called when it is a function), or None when it has none.

    It is what ``summary`` and the graph collectors take as ``input``: a tensor, a tuple or
    list of positional arguments, or a dict of keyword arguments.
    """
    return example_value(loaded, INPUT_NAME)


def example_value(loaded: LoadedModel, name: str) -> Any | None:
    """The file's value called ``name`` (called when it is a function of no arguments): a
    tensor, a tuple or list, or a dict; None when the file has none."""
    value = getattr(loaded.module, name, None)
    if value is None:
        return None
    if callable(value) and not isinstance(value, (torch.Tensor, nn.Module)):
        missing = _required_parameters(value)
        if missing:
            raise ModelLoadError(
                f"{loaded.source}: {name} needs arguments ({', '.join(missing)}); "
                "make it a function of no arguments"
            )
        try:
            value = value()
        except Exception as e:
            where = _where(loaded.source, _line_in(e, _file_of(loaded.module)))
            raise ModelLoadError(f"{name}() failed in {where}: {_describe(e)}") from e
    if not isinstance(value, (torch.Tensor, tuple, list, dict)):
        raise ModelLoadError(
            f"{loaded.source}: {name} is a {type(value).__name__}; make it a tensor, "
            "a tuple of positional arguments, a dict of keyword arguments, or a function of "
            "no arguments returning one"
        )
    return value


def input_hint(model: nn.Module) -> str:
    """A guess at an input shape from the model's first layer, for error messages ("" if none)."""
    spatial = ((nn.Conv3d, "D,H,W"), (nn.Conv2d, "H,W"), (nn.Conv1d, "L"))
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and layer.in_features:
            features = layer.in_features
            return (
                f"the first layer is Linear(in_features={features}): try --input-size 1,{features}"
            )
        for conv, dims in spatial:
            if isinstance(layer, conv) and layer.in_channels:
                return (
                    f"the first layer is {type(layer).__name__}(in_channels={layer.in_channels}):"
                    f" try --input-size 1,{layer.in_channels},{dims} with your sizes"
                )
        if isinstance(layer, nn.Embedding):
            return "the first layer is an Embedding: try --input-size 1,16 --dtype int64"
    return ""
