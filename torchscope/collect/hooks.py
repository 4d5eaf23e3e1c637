"""Attach instrumentation to a model and always take it off again.

Every collector runs the user's model inside :func:`instrumented`: hooks registered through
the yielded :class:`HookSet` are removed in ``finally`` (also when registration fails half way
or the model raises), and the model's observable state is put back exactly as it was:
per-module ``training`` flags, buffers (BatchNorm running statistics included), the grad mode
and the global random number generators.

The state is put back by ``_preserved_state.preserved_state`` and the module tree walked by
``_module_walk.iter_modules``; both names are importable from here too.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import weakref
from collections.abc import Iterator
from copy import deepcopy
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from torch.nn.parameter import UninitializedBuffer, is_lazy

from torchscope.collect._module_walk import iter_modules
from torchscope.collect._preserved_state import (
    parameter_writes_unwatched as parameter_writes_unwatched,
)
from torchscope.collect._preserved_state import preserved_state
from torchscope.errors import ForwardError

__all__ = [
    "HookSet",
    "initialised",
    "instrumented",
    "iter_modules",
    "lazy_tensor_names",
    "preserved_rng",
    "preserved_state",
    "recursion_headroom",
]


# The recursion limit and the RNG streams are process-wide: two threads saving and restoring
# them at once would leave each other's values behind, so instrumented runs take turns.
# Re-entrant, so a summary inside a model's forward still works.
_INSTRUMENTATION_LOCK = threading.RLock()


def lazy_tensor_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's uninitialised lazy parameters and buffers."""
    names: list[str] = []
    seen: set[int] = set()
    for name, module in iter_modules(model):
        prefix = f"{name}." if name else ""
        for table in (module._parameters, module._buffers):
            for local, tensor in table.items():
                if tensor is not None and is_lazy(tensor) and id(tensor) not in seen:
                    seen.add(id(tensor))
                    names.append(prefix + local)
    return names


def _lazy_listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


# copies whose initialising forward failed, handed back for the caller to run and report
_FAILED_COPIES: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def initialised(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    call: str,
    error: type[ForwardError] | None = None,
) -> nn.Module:
    """Return ``model``, or, when it has uninitialised lazy parameters, an initialised copy.

    Lazy modules (``nn.LazyLinear``, ``nn.LazyConv2d``, ...) take their shapes from their
    first input and turn into their eager class. Doing that to the caller's model would
    change it, so a deep copy is initialised by one forward pass of the same arguments
    (without autograd, the global RNG restored) and inspected instead: it reports the shapes
    the model will take. Every entry point that runs the model calls this first.

    When that forward pass fails before every lazy module is initialised, the copy is
    returned all the same if ``error`` is None: the caller runs it next and reports the
    failure as it reports any failing forward (:func:`instrumented` lets such a copy in).

    Raises:
        ValueError: the model cannot be copied, or the forward pass left some lazy
            parameters uninitialised (their modules were not called).
        error: the copy's forward pass failed before every lazy module was initialised.
    """
    names = lazy_tensor_names(model)
    if not names:
        return model
    listing = _lazy_listing(names)
    lead = (
        f"{call}: the model has uninitialised lazy parameters ({listing}); torchscope leaves "
        "the model as found, so it initialises a copy with one forward pass and inspects that"
    )
    # torch cannot deepcopy an UninitializedBuffer (LazyBatchNorm's statistics): fresh ones
    memo: dict[int, Any] = {}
    for module in model.modules():
        for buffer in module._buffers.values():
            if isinstance(buffer, UninitializedBuffer):
                memo[id(buffer)] = UninitializedBuffer(  # type: ignore[call-arg]  # stub lags
                    requires_grad=buffer.requires_grad, device=buffer.device, dtype=buffer.dtype
                )
    try:
        copy = deepcopy(model, memo)
    except Exception as e:
        raise ValueError(
            f"{lead}, but the model cannot be copied ({type(e).__name__}: {e}): run one "
            "forward pass on the model yourself first"
        ) from e
    failure: Exception | None = None
    with _INSTRUMENTATION_LOCK, preserved_rng(), torch.no_grad():
        try:
            copy(*args, **kwargs)
        except Exception as e:  # reported below if it left lazy parameters behind
            failure = e
    left = lazy_tensor_names(copy)
    if left and failure is not None:
        if error is None:
            _FAILED_COPIES.add(copy)
            return copy
        raise error(
            f"{lead}, and that forward pass failed: {type(failure).__name__}: {failure}"
        ) from failure
    if left:
        raise ValueError(
            f"{lead}, but that pass did not initialise {_lazy_listing(left)} (their modules "
            "were not called with this input): run a forward pass that reaches them on the "
            "model yourself first"
        )
    return copy


class Removable(Protocol):
    """What a :class:`HookSet` holds: a hook handle, or anything else undone by ``remove()``."""

    def remove(self) -> None: ...


_Handle = TypeVar("_Handle", bound=Removable)


class HookSet:
    """Owns hook handles; :meth:`remove_all` removes every one, even if some removals fail."""

    def __init__(self) -> None:
        self._handles: list[Removable] = []

    def add(self, handle: _Handle) -> _Handle:
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
    lazy = lazy_tensor_names(model)
    if (
        lazy and model not in _FAILED_COPIES
    ):  # the one rule behind every entry point: they pass initialised(model, ...) here
        raise ValueError(
            f"the model has uninitialised lazy parameters ({_lazy_listing(lazy)}): running it "
            "would initialise them and change it; run one forward pass on it first"
        )
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
