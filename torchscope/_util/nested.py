"""Walk nested inputs and outputs to their tensors.

What is walked: tuples, lists, dicts and other mappings, namedtuples, dataclasses, whatever
``torch.utils._pytree`` knows (types registered with it, such as Hugging Face's
``ModelOutput`` and ``deque``), ``torch.distributions`` objects (by the parameters they were
given, their public attributes and the distributions they wrap) and plain objects (by their
attributes, ``__dict__`` and ``__slots__``: a Hugging Face cache, a ``SimpleNamespace``, a
class of the user's own). Objects are walked to a bounded depth and a bounded number of
values, so that an output holding a reference to something huge (a tokenizer, a dataset)
costs little; modules, classes, functions and enums are never walked into.

Imports nothing else of torchscope, so every collector can use it.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

try:  # private, but the registry that torch.export, torch.compile and Hugging Face use
    from torch.utils import _pytree as _pytree

    _PYTREE_NODES: Mapping[type, Any] = _pytree.SUPPORTED_NODES
except (ImportError, AttributeError):  # pragma: no cover - every supported torch has it
    _PYTREE_NODES = {}

__all__ = [
    "MAX_OBJECT_DEPTH",
    "MAX_OBJECT_VALUES",
    "is_namedtuple",
    "map_tensors",
    "named_tensors",
    "shape_of",
    "shapes",
    "tensor_bytes",
    "tensors",
]

Shape = tuple[int, ...]

MAX_OBJECT_DEPTH = 6
"""Objects (plain objects and distributions) nested deeper than this inside one another are
leaves: their tensors are not walked."""

MAX_OBJECT_VALUES = 10_000
"""At most this many values are walked below objects in one walk; past it, further objects and
containers reached through an object are leaves."""

# never walked into: they are not data (or, for modules, not the output's own data)
_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    enum.Enum,
    nn.Module,
    torch.dtype,
    torch.device,
    torch.Generator,
)
_SCALARS = (str, bytes, int, float, bool, complex, type(None))


def is_namedtuple(obj: object) -> bool:
    """True for instances of ``collections.namedtuple``/``typing.NamedTuple`` classes."""
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


# what is directly inside a value: (walked as an object?, path suffixes, values); None: a leaf
_Entries = tuple[bool, list[str] | None, list[Any] | tuple[Any, ...]]


def _entries(obj: object, named: bool) -> _Entries | None:
    """The values directly inside ``obj``, in order, with their path suffixes when ``named``
    (``[0]``, ``['key']``, ``.field``); None for a leaf."""
    # concrete types first: the abstract checks are slow, and this runs once per module call
    if isinstance(obj, (tuple, list)):
        if not named:
            return False, None, obj
        if is_namedtuple(obj):
            field_names: tuple[str, ...] = type(obj)._fields  # type: ignore[union-attr]
            return False, [f".{f}" for f in field_names][: len(obj)], obj
        return False, [f"[{i}]" for i in range(len(obj))], obj
    if isinstance(obj, dict):
        return False, [f"[{k!r}]" for k in obj] if named else None, list(obj.values())
    if isinstance(obj, _SCALARS) or isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, Mapping):
        items = list(obj.items())
        return False, [f"[{k!r}]" for k, _ in items] if named else None, [v for _, v in items]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        names = [f".{f.name}" for f in fields] if named else None
        return False, names, [getattr(obj, f.name) for f in fields]
    node = _PYTREE_NODES.get(type(obj))
    if node is not None:
        return _pytree_entries(obj, node, named)
    attrs = _distribution_attributes(obj) if isinstance(obj, Distribution) else _attributes(obj)
    if attrs is None:
        return None
    return True, [f".{name}" for name, _ in attrs] if named else None, [v for _, v in attrs]


def _pytree_entries(obj: object, node: Any, named: bool) -> _Entries | None:
    """The children of a type registered with ``torch.utils._pytree``, named by its keys."""
    try:
        if named and node.flatten_with_keys_fn is not None:
            keyed, _ = node.flatten_with_keys_fn(obj)
            return False, [str(key) for key, _ in keyed], [value for _, value in keyed]
        values, _ = node.flatten_fn(obj)
    except Exception:  # a user's flatten function that fails: the value stays a leaf
        return None
    values = list(values)
    return False, [f"[{i}]" for i in range(len(values))] if named else None, values


def _distribution_attributes(dist: Distribution) -> list[tuple[str, Any]]:
    """A distribution's parameters (those it was given or has computed already: reading an
    unset one would compute it), then its public attributes, then the distributions it wraps.
    Aliases (``Categorical._param`` is its ``logits``) are left out."""
    state = _instance_dict(dist) or {}
    try:
        params = [name for name in dist.arg_constraints if name in state]
    except Exception:  # the base class raises NotImplementedError
        params = []
    attrs = [(name, state[name]) for name in params]
    taken = {id(value) for _, value in attrs}
    for name, value in state.items():
        if name in params or id(value) in taken:
            continue
        if not name.startswith("_") or isinstance(value, Distribution):
            attrs.append((name, value))
    return attrs


def _instance_dict(obj: object) -> dict[str, Any] | None:
    # object.__getattribute__: a class's __getattr__ (a mock, a proxy) must not answer
    try:
        state = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return None
    return state if isinstance(state, dict) else None


_SLOTS: weakref.WeakKeyDictionary[type, tuple[tuple[str, Any], ...]] = weakref.WeakKeyDictionary()


def _slots(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(attribute name, slot descriptor)`` for every ``__slots__`` entry of ``cls``."""
    cached = _SLOTS.get(cls)
    if cached is not None:
        return cached
    found = []
    for klass in cls.__mro__:
        names = klass.__dict__.get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):  # private: name-mangled
                name = f"_{klass.__name__.lstrip('_')}{name}"
            descriptor = klass.__dict__.get(name)
            if descriptor is not None and hasattr(descriptor, "__set__"):
                found.append((name, descriptor))
    _SLOTS[cls] = result = tuple(found)
    return result


def _attributes(obj: object) -> list[tuple[str, Any]] | None:
    """A plain object's attributes (``__dict__``, then set ``__slots__``); None when it has
    neither or is never walked into."""
    if isinstance(obj, _OPAQUE):
        return None
    state = _instance_dict(obj)
    slots = _slots(type(obj))
    if state is None and not slots:
        return None
    attrs = [(k, v) for k, v in state.items() if isinstance(k, str)] if state else []
    for name, descriptor in slots:
        try:
            attrs.append((name, descriptor.__get__(obj, type(obj))))
        except AttributeError:  # a slot never set
            continue
    return attrs


def _walk(obj: object, prefix: str, named: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor inside ``obj`` (paths empty unless ``named``)."""
    stack: list[Any] = [(prefix, obj, 0)]
    on_path: set[int] = set()  # values being walked: reaching one again is a cycle
    budget = MAX_OBJECT_VALUES
    while stack:
        entry = stack.pop()
        if isinstance(entry, _Exit):
            on_path.discard(entry.key)
            continue
        path, item, depth = entry
        if isinstance(item, torch.Tensor):
            yield path, item
            continue
        if id(item) in on_path:
            continue
        found = _entries(item, named)
        if found is None:
            continue
        is_object, names, values = found
        if is_object:
            if depth >= MAX_OBJECT_DEPTH:
                continue
            depth += 1
        if depth:  # below an object: bounded
            if len(values) > budget:
                continue
            budget -= len(values)
        on_path.add(id(item))
        stack.append(_Exit(id(item)))
        if names is None:
            stack.extend((path, value, depth) for value in reversed(values))
        else:
            stack.extend(
                (path + name, value, depth)
                for name, value in zip(reversed(names), reversed(values), strict=True)
            )


def tensors(obj: object) -> Iterator[torch.Tensor]:
    """Yield every tensor inside ``obj`` in depth-first, left-to-right order.

    Iterative (no recursion limit on deep nesting). A value that contains itself is walked
    once; the same container reached twice side by side (``return feats, feats``) is walked
    twice, like any other value. Non-tensor leaves are skipped.
    """
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    for _, tensor in _walk(obj, "", False):
        yield tensor


def named_tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor inside ``obj``, in the order of :func:`tensors`.

    Paths are Python expressions after ``prefix``: ``out[0]``, ``out['logits']``,
    ``out.hidden`` (dataclass, namedtuple and pytree fields and object attributes by name),
    ``out.dist.loc``, ``out.cache.key_cache[0]``. Iterative, like :func:`tensors`; a value
    that contains itself is walked once.
    """
    return _walk(obj, prefix, True)


class _Exit:
    """Marks, on the walk's stack, the point where a container's children are done."""

    __slots__ = ("key",)

    def __init__(self, key: int) -> None:
        self.key = key


def shape_of(tensor: torch.Tensor) -> Shape:
    """The tensor's shape as ints; ragged dimensions of nested tensors are ``-1``."""
    if not tensor.is_nested:
        return tuple(tensor.shape)
    dims = []
    for dim in range(tensor.dim()):
        try:
            dims.append(int(tensor.size(dim)))
        except (RuntimeError, TypeError, ValueError):  # ragged: no single size
            dims.append(-1)
    return tuple(dims)


def shapes(obj: object) -> tuple[Shape, ...]:
    """The shape of every tensor inside ``obj``, in the order of :func:`tensors`."""
    if isinstance(obj, torch.Tensor):  # the common cases, kept cheap: they run on every module call
        return (shape_of(obj),)
    if type(obj) is tuple and all(type(v) is torch.Tensor for v in obj):  # positional tensors
        return tuple(shape_of(v) for v in obj)
    return tuple(shape_of(t) for t in tensors(obj))


def tensor_bytes(obj: object) -> int:
    """Bytes held by the distinct tensors inside ``obj`` (a tensor reached twice counts once)."""
    total = 0
    seen: set[int] = set()
    for t in tensors(obj):
        if id(t) not in seen:
            seen.add(id(t))
            try:
                total += t.numel() * t.element_size()
            except RuntimeError:  # some nested tensor layouts cannot report numel
                continue
    return total


# how map_tensors takes a value apart: (its children, how to rebuild it from theirs, is object)
_Plan = tuple[list[Any], Callable[[list[Any]], Any], bool]


def _plan(obj: Any) -> _Plan | None:
    """How :func:`map_tensors` takes ``obj`` apart and puts it back together; None: a leaf."""
    kind = type(obj)
    if is_namedtuple(obj):
        return list(obj), lambda values: kind(*values), False
    if isinstance(obj, (tuple, list)):
        return list(obj), kind, False
    if isinstance(obj, _SCALARS):
        return None
    if isinstance(obj, Mapping):
        keys = list(obj.keys())

        def rebuild_mapping(values: list[Any]) -> Any:
            items = dict(zip(keys, values, strict=True))
            try:
                return kind(items)
            except TypeError:  # a Mapping whose constructor takes something else
                return items

        return [obj[k] for k in keys], rebuild_mapping, False
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj) if f.init]
        return (
            [getattr(obj, name) for name in names],
            lambda values: dataclasses.replace(obj, **dict(zip(names, values, strict=True))),
            False,
        )
    node = _PYTREE_NODES.get(kind)
    if node is not None:
        try:
            values, context = node.flatten_fn(obj)
        except Exception:  # a user's flatten function that fails: the value stays a leaf
            return None
        return list(values), lambda new: node.unflatten_fn(new, context), False
    attrs = _attributes(obj)  # distributions too: every attribute, so that the copy agrees
    if attrs is None:
        return None
    names = [name for name, _ in attrs]
    old = [value for _, value in attrs]
    return old, lambda values: _replaced(obj, names, old, values), True


def _replaced(obj: Any, names: list[str], old: list[Any], values: list[Any]) -> Any:
    """A shallow copy of ``obj`` with its attributes ``names`` set to ``values``, or ``obj``
    itself when none changed from ``old`` (or when it cannot be copied)."""
    if all(new is value for new, value in zip(values, old, strict=True)):
        return obj
    try:
        clone = copy.copy(obj)
    except Exception:  # an object that refuses to be copied stays as it is
        return obj
    state = _instance_dict(clone)
    slots = dict(_slots(type(clone)))
    for name, value in zip(names, values, strict=True):
        if name in slots:
            slots[name].__set__(clone, value)
        elif state is not None:
            state[name] = value  # not setattr: a class's __setattr__ must not run
    return clone


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A copy of ``obj`` with every tensor replaced by ``fn(tensor)``; other leaves untouched.

    Containers are rebuilt with their own type (namedtuples, dataclasses, dict subclasses and
    pytree-registered types included). Plain objects and distributions holding tensors are
    shallow-copied (``copy.copy``) with their tensor attributes replaced; an object without
    tensors, or one that cannot be copied, is kept as it is. The original is never modified.
    Iterative; objects are walked within the same bounds as :func:`tensors`, and a value
    that contains itself keeps pointing at the original where the cycle closes.
    """
    on_path: set[int] = set()
    budget = MAX_OBJECT_VALUES
    # a frame: [value, its children, rebuild, depth below objects, children mapped so far]
    stack: list[list[Any]] = []

    def start(item: Any, depth: int) -> tuple[Any, list[Any] | None]:
        nonlocal budget
        if isinstance(item, torch.Tensor):
            return fn(item), None
        if id(item) in on_path:
            return item, None
        plan = _plan(item)
        if plan is None:
            return item, None
        values, rebuild, is_object = plan
        if is_object:
            if depth >= MAX_OBJECT_DEPTH:
                return item, None
            depth += 1
        if depth:
            if len(values) > budget:
                return item, None
            budget -= len(values)
        on_path.add(id(item))
        return None, [item, values, rebuild, depth, []]

    result, frame = start(obj, 0)
    if frame is None:
        return result
    stack.append(frame)
    while True:
        item, values, rebuild, depth, done = stack[-1]
        if len(done) < len(values):
            mapped, frame = start(values[len(done)], depth)
            if frame is None:
                done.append(mapped)
            else:
                stack.append(frame)
            continue
        stack.pop()
        on_path.discard(id(item))
        result = rebuild(done)
        if not stack:
            return result
        stack[-1][4].append(result)
