"""Attach instrumentation to a model and always take it off again.

Every collector runs the user's model inside :func:`instrumented`: hooks registered through
the yielded :class:`HookSet` are removed in ``finally`` (also when registration fails half way
or the model raises), and the model's observable state is put back exactly as it was:
per-module ``training`` flags, buffers (BatchNorm running statistics included), the grad mode
and the global random number generators.
"""

from __future__ import annotations

import contextlib
import random
import sys
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchscope.errors import TorchscopeWarning

__all__ = [
    "HookSet",
    "instrumented",
    "iter_modules",
    "preserved_rng",
    "preserved_state",
    "recursion_headroom",
]


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


class HookSet:
    """Owns hook handles; :meth:`remove_all` removes every one, even if some removals fail."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self._handles.append(handle)
        return handle

    def __len__(self) -> int:
        return len(self._handles)

    def remove_all(self) -> None:
        errors: list[BaseException] = []
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.remove()
            except Exception as e:  # keep removing the others, report the first failure
                errors.append(e)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global RNG streams (torch CPU and CUDA, Python's ``random``, NumPy's) on exit."""
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    python_state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(python_state)
        if numpy is not None and numpy_state is not None:
            numpy.random.set_state(numpy_state)


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors track no version counter
        return None


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, modules: list[tuple[str, nn.Module]] | None = None
) -> Iterator[None]:
    """Put every module's ``training`` flag and every buffer back as they were on exit.

    Buffers are snapshotted by value and copied back into the same tensors, so their identity
    (and any aliasing between modules) is kept. They are copied back unconditionally: some
    kernels (BatchNorm's running statistics on the CPU) update buffers without bumping their
    version counter. Parameters are not
    copied (that would double the model's memory); one that the forward pass modified in
    place is reported with a :class:`~torchscope.errors.TorchscopeWarning`.

    ``modules`` may pass ``list(iter_modules(model))`` when the caller already has it.
    """
    named = modules if modules is not None else list(iter_modules(model))
    modules_in_order: list[nn.Module] = []
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    params: dict[int, tuple[str, torch.Tensor, int | None]] = {}
    with torch.no_grad():
        for name, module in named:
            modules_in_order.append(module)
            prefix = f"{name}." if name else ""
            for buf in module._buffers.values():
                if buf is not None and id(buf) not in buffers:
                    buffers[id(buf)] = (buf, buf.clone())
            for param_name, param in module._parameters.items():
                if param is not None and id(param) not in params:
                    params[id(param)] = (prefix + param_name, param, _version(param))
    training = [module.training for module in modules_in_order]
    try:
        yield
    finally:
        for module, flag in zip(modules_in_order, training, strict=True):
            # set the attribute, not .train(): a user override of train() must not run here
            module.training = flag
        with torch.no_grad():
            for buf, saved in buffers.values():
                buf.copy_(saved)
        changed = [
            name
            for name, param, version in params.values()
            if version is not None and _version(param) != version
        ]
        if changed:
            warnings.warn(
                f"the model's forward pass modified parameter(s) in place: {', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}; torchscope does not copy parameters, so this "
                "change could not be undone",
                TorchscopeWarning,
                stacklevel=3,
            )


@contextlib.contextmanager
def recursion_headroom(
    model: nn.Module, *, modules: list[tuple[str, nn.Module]] | None = None
) -> Iterator[None]:
    """Raise Python's recursion limit by what module hooks add to a forward pass, then restore it.

    A hooked module call runs one more Python frame than a plain one (``_call_impl``'s
    ``inner``), so a model that nests modules a few hundred deep (200 nested ``Sequential``s)
    runs plainly yet would overflow the stack under instrumentation.
    """
    named = modules if modules is not None else list(iter_modules(model))
    nesting = max((name.count(".") + 1 for name, _ in named if name), default=0)
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(previous + 2 * nesting + 100)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


@contextlib.contextmanager
def instrumented(model: nn.Module, *, grad: bool) -> Iterator[HookSet]:
    """Run a block with hooks on ``model``; on exit remove them and restore every state we touch.

    Args:
        model: the module to instrument.
        grad: whether autograd is enabled inside the block (restored on exit).
    """
    hooks = HookSet()
    with (
        preserved_rng(),
        preserved_state(model),
        recursion_headroom(model),
        torch.set_grad_enabled(grad),
    ):
        try:
            yield hooks
        finally:
            hooks.remove_all()
