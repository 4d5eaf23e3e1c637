"""TorchScript modules inside a model: found, named, and followed without hooks of their own.

A ``ScriptModule`` (scripted or traced) is an ``nn.Module`` whose ``register_forward_hook``
and ``register_forward_pre_hook`` raise, and whose submodules run inside the TorchScript
interpreter, where Python never sees their calls. The collectors hook the eager modules
around it and treat each outermost ScriptModule as one opaque call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from torchscope.collect.hooks import HookSet

__all__ = [
    "OPTIMIZED_NOTE",
    "follow_scripted_calls",
    "is_script",
    "plain_execution",
    "split_modules",
    "type_name",
]

#: Said of an autograd graph in which TorchScript's optimised code left opaque nodes.
OPTIMIZED_NOTE = (
    "TorchScript had already optimised this code: its backward is one DifferentiableGraphBackward "
    "node (what backward() runs); the ops inside show on a model not yet run twice, or on the "
    "eager nn.Module"
)


def is_script(module: nn.Module) -> bool:
    """Whether ``module`` is a TorchScript module (``torch.jit.script`` or ``torch.jit.trace``)."""
    return isinstance(module, torch.jit.ScriptModule)


def type_name(module: nn.Module) -> str:
    """The class name to show: ``scripted Sequential``, ``traced ResNet`` or ``Linear``."""
    if not is_script(module):
        return type(module).__name__
    original = getattr(module, "original_name", None) or type(module).__name__
    kind = "traced" if isinstance(module, torch.jit.TracedModule) else "scripted"
    return f"{kind} {original}"


def split_modules(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Module]], dict[int, tuple[str, nn.Module]]]:
    """The modules that can be hooked, and the outermost TorchScript modules (by ``id``).

    The first list has the names and order of :func:`torchscope.collect.hooks.iter_modules` without
    the TorchScript modules and everything inside them; the second maps each outermost
    TorchScript module to its (first) qualified name and itself. A scripted or traced
    ``model`` gives ``([], {id(model): ("", model)})``.
    """
    hookable: list[tuple[str, nn.Module]] = []
    scripted: dict[int, tuple[str, nn.Module]] = {}
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if is_script(module):
            scripted[id(module)] = (name, module)
            continue  # its submodules run inside TorchScript
        hookable.append((name, module))
        children = [
            (f"{name}.{child_name}" if name else child_name, child)
            for child_name, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))
    return hookable, scripted


@contextlib.contextmanager
def plain_execution(active: bool = True) -> Iterator[None]:
    """Keep TorchScript's executor from profiling and optimising while the block runs.

    The profiling executor runs a method's first call op by op and optimises it on the second
    (op sequences become differentiable graphs and fusion groups): collecting would otherwise
    change the user's next call, and the autograd graph would change from one collection to
    the next. Once a method has run optimised, though, it stays so (the plan is shared by every
    instance of the scripted class): then its backward is one ``DifferentiableGraphBackward``
    node, which is what ``backward()`` runs, and its ops still pass the dispatcher.
    """
    if not active:
        yield
        return
    with torch.jit.optimized_execution(False):
        yield


def follow_scripted_calls(
    hooks: HookSet,
    scripted: dict[int, tuple[str, nn.Module]],
    enter: Callable[[str, nn.Module, tuple[Any, ...]], None],
    leave: Callable[[str, nn.Module, tuple[Any, ...], Any], None],
) -> None:
    """Call ``enter``/``leave`` around each call of the ``scripted`` modules in this thread.

    TorchScript modules refuse hooks of their own, but ``nn.Module.__call__`` still runs the
    global module hooks for them. The two global hooks registered here (into ``hooks``, which
    removes them) return at once for every other module and every other thread, so no other
    model sees a change beyond the hook check itself. ``leave`` runs also when the call raised
    (``always_call``), with the output ``None``.
    """
    if not scripted:
        return
    owner = threading.get_ident()

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        found = scripted.get(id(module))
        if found is not None and found[1] is module and threading.get_ident() == owner:
            enter(found[0], module, args)

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        found = scripted.get(id(module))
        if found is not None and found[1] is module and threading.get_ident() == owner:
            leave(found[0], module, args, output)

    hooks.add(nn.modules.module.register_module_forward_pre_hook(pre_hook))
    hooks.add(nn.modules.module.register_module_forward_hook(hook, always_call=True))
