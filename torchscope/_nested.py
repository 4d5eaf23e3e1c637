"""Walk nested inputs and outputs (tuples, lists, dicts, namedtuples, dataclasses) to their tensors.

Imports nothing else of torchscope, so every collector can use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "is_namedtuple",
    "map_tensors",
    "named_tensors",
    "shape_of",
    "shapes",
    "tensor_bytes",
    "tensors",
]

Shape = tuple[int, ...]


def is_namedtuple(obj: object) -> bool:
    """True for instances of ``collections.namedtuple``/``typing.NamedTuple`` classes."""
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _children(obj: object) -> list[Any] | tuple[Any, ...] | None:
    """The values directly inside a container, in order; None for a leaf."""
    # concrete types first: the abstract Mapping check is slow, and this runs once per module call
    if isinstance(obj, (tuple, list)):
        return obj
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (str, bytes, int, float, bool)) or obj is None:
        return None
    if isinstance(obj, Mapping):
        return list(obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    return None


def tensors(obj: object) -> Iterator[torch.Tensor]:
    """Yield every tensor inside ``obj`` in depth-first, left-to-right order.

    Iterative (no recursion limit on deep nesting). A container that contains itself is
    walked once; the same container reached twice side by side (``return feats, feats``)
    is walked twice, like any other value. Non-tensor leaves are skipped.
    """
    stack: list[Any] = [obj]
    on_path: set[int] = set()  # containers being walked: reaching one again is a cycle
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
            continue
        if isinstance(item, _Exit):
            on_path.discard(item.key)
            continue
        children = _children(item)
        if children is None or id(item) in on_path:
            continue
        on_path.add(id(item))
        stack.append(_Exit(id(item)))
        stack.extend(reversed(children))


def named_tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(path, tensor)`` for every tensor inside ``obj``, in the order of :func:`tensors`.

    Paths are Python subscripts after ``prefix``: ``out[0]``, ``out['logits']``,
    ``out.hidden`` (dataclass fields and namedtuple fields by name). Iterative, like
    :func:`tensors`; a container that contains itself is walked once.
    """
    stack: list[tuple[str, Any]] = [(prefix, obj)]
    on_path: set[int] = set()
    while stack:
        path, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield path, item
            continue
        if isinstance(item, _Exit):
            on_path.discard(item.key)
            continue
        children: list[tuple[str, Any]]
        if is_namedtuple(item):
            children = [(f"{path}.{f}", v) for f, v in zip(type(item)._fields, item, strict=False)]
        elif isinstance(item, (tuple, list)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(item)]
        elif isinstance(item, Mapping):
            children = [(f"{path}[{k!r}]", v) for k, v in item.items()]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [
                (f"{path}.{f.name}", getattr(item, f.name)) for f in dataclasses.fields(item)
            ]
        else:
            continue
        if id(item) in on_path:
            continue
        on_path.add(id(item))
        stack.append(("", _Exit(id(item))))
        stack.extend(reversed(children))


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
    if isinstance(obj, torch.Tensor):  # the common case, kept cheap: it runs on every module call
        return (shape_of(obj),)
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


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A copy of ``obj`` with every tensor replaced by ``fn(tensor)``; other leaves untouched.

    Containers are rebuilt with their own type (namedtuples, dataclasses and dict subclasses
    included); the original object is never modified.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if is_namedtuple(obj):
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if isinstance(obj, Mapping):
        items = {k: map_tensors(v, fn) for k, v in obj.items()}
        rebuild: Any = type(obj)
        try:
            return rebuild(items)
        except TypeError:  # a Mapping whose constructor takes something else
            return items
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)
    return obj
