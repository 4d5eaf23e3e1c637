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
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


# The recursion limit and the RNG streams are process-wide: two threads saving and restoring
# them at once would leave each other's values behind, so instrumented runs take turns.
# Re-entrant, so a summary inside a model's forward still works.
_INSTRUMENTATION_LOCK = threading.RLock()


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


_TABLES = frozenset(
    {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"}
)
_MISSING = object()


@dataclass
class _ModuleSnapshot:
    module: nn.Module
    training: bool
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    submodules: dict[str, nn.Module | None]
    non_persistent: set[str]

    attributes: dict[str, Any]  # the rest of the instance __dict__ (caches, counters, ...)

    @classmethod
    def take(cls, module: nn.Module) -> _ModuleSnapshot:
        return cls(
            module,
            module.training,
            dict(module._parameters),
            dict(module._buffers),
            dict(module._modules),
            set(module._non_persistent_buffers_set),
            {k: v for k, v in module.__dict__.items() if k not in _TABLES},
        )

    def restore(self) -> None:
        module = self.module
        # set the attribute, not .train(): a user override of train() must not run here
        module.training = self.training
        if isinstance(module, torch.jit.ScriptModule):
            return  # its attribute tables are views of the compiled object: values are restored
        # the same dict objects, refilled: a forward that rebinds `self.steps = self.steps + 1`
        # or fills a `register_buffer("cache", None)` slot is undone too
        _refill(module._parameters, self.parameters)
        _refill(module._buffers, self.buffers)
        _refill(module._modules, self.submodules)
        # plain attributes a forward set or rebound (a cache, a step counter, a stored
        # attention map) go back too; objects changed in place (a list appended to) do not
        attributes = module.__dict__
        for key in [k for k in attributes if k not in _TABLES and k not in self.attributes]:
            del attributes[key]
        for key, value in self.attributes.items():
            if attributes.get(key, _MISSING) is not value:
                attributes[key] = value
        if module._non_persistent_buffers_set != self.non_persistent:
            module._non_persistent_buffers_set.clear()
            module._non_persistent_buffers_set.update(self.non_persistent)


def _refill(live: dict[str, Any], saved: dict[str, Any]) -> None:
    """Make ``live`` equal to ``saved`` (same keys in the same order), keeping the dict object."""
    if live != saved or list(live) != list(saved):
        live.clear()
        live.update(saved)


def _restore_values(buffer: torch.Tensor, saved: torch.Tensor) -> None:
    """Copy ``saved`` back into ``buffer`` in place (keeping its identity and aliases)."""
    try:
        buffer.copy_(saved)
    except RuntimeError:
        if buffer.is_inference():
            with torch.inference_mode():
                buffer.copy_(saved)
        # else: an expanded or otherwise overlapping buffer, which no in-place op can have written


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, modules: list[tuple[str, nn.Module]] | None = None
) -> Iterator[None]:
    """Put the model's state back as it was on exit.

    Restored: every module's ``training`` flag; its parameter, buffer and submodule
    mappings (a forward that rebinds or adds a buffer is undone); every buffer's values,
    copied back into the same tensors so their identity and aliasing are kept (always: some
    kernels, BatchNorm's running statistics on the CPU among them, update buffers without
    bumping their version counter); every parameter's ``requires_grad`` and ``.grad``.
    Parameter values are not copied (that would double the model's memory); one that the
    forward pass modified in place is reported with a
    :class:`~torchscope.errors.TorchscopeWarning`.

    ``modules`` may pass ``list(iter_modules(model))`` when the caller already has it.
    """
    named = modules if modules is not None else list(iter_modules(model))
    snapshots = [_ModuleSnapshot.take(module) for _, module in named]
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    params: dict[int, tuple[str, nn.Parameter, int | None, bool, torch.Tensor | None]] = {}
    with torch.no_grad():
        for (name, _), snapshot in zip(named, snapshots, strict=True):
            prefix = f"{name}." if name else ""
            for buf in snapshot.buffers.values():
                if buf is not None and id(buf) not in buffers:
                    buffers[id(buf)] = (buf, buf.clone())
            for param_name, param in snapshot.parameters.items():
                if param is not None and id(param) not in params:
                    params[id(param)] = (
                        prefix + param_name,
                        param,
                        _version(param),
                        param.requires_grad,
                        param.grad,
                    )
    try:
        yield
    finally:
        errors: list[Exception] = []
        for snapshot in snapshots:
            try:
                snapshot.restore()
            except Exception as e:  # keep restoring the rest
                errors.append(e)
        with torch.no_grad():
            for buf, saved in buffers.values():
                try:
                    _restore_values(buf, saved)
                except Exception as e:
                    errors.append(e)
        changed = []
        for name, param, version, requires_grad, grad in params.values():
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
            if version is not None and _version(param) != version:
                changed.append(name)
        if changed:
            warnings.warn(
                f"the model's forward pass modified parameter(s) in place: {', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}; torchscope does not copy parameters, so this "
                "change could not be undone",
                TorchscopeWarning,
                stacklevel=3,
            )
        if errors:
            raise errors[0]


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

    Instrumented blocks of different threads run one at a time (they save and restore
    process-wide state).

    Args:
        model: the module to instrument.
        grad: whether autograd is enabled inside the block (restored on exit).
    """
    hooks = HookSet()
    with _INSTRUMENTATION_LOCK:
        named = list(iter_modules(model))
        with (
            preserved_rng(),
            preserved_state(model, modules=named),
            recursion_headroom(model, modules=named),
            torch.set_grad_enabled(grad),
        ):
            try:
                yield hooks
            finally:
                hooks.remove_all()
