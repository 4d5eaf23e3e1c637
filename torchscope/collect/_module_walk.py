"""Walk a module tree without recursion: the modules in ``named_modules()`` order, each once."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["iter_modules"]


def iter_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, module)`` for each distinct module, parents before children.

    The same order and names as ``model.named_modules()``, without its recursion, so module
    trees of any depth can be walked. A module registered under two names keeps the first.
    """
    stack: list[tuple[str, nn.Module]] = [("", model)]
    seen: set[int] = set()
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        children = [
            (f"{name}.{child_name}" if name else child_name, child)
            for child_name, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))
