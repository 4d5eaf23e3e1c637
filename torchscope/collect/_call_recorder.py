"""Module calls of one forward pass, recorded by hooks: their order, nesting, shapes and costs.

Also what a failed pass reports: the innermost module whose forward raised, and the message.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import torchscope._util.nested as _nested
from torchscope._util.format import format_shapes
from torchscope.collect._module_tree import ModuleInfo
from torchscope.collect.costs import CostCounter
from torchscope.records import LayerRecord, ModelSummary

__all__ = ["Call", "CallRecorder", "failure_message", "inclusive_costs", "uncalled"]


@dataclass
class Call:
    index: int
    module_id: int
    depth: int
    parent: int | None
    is_repeat: bool
    input_shapes: tuple[_nested.Shape, ...] = ()
    output_shapes: tuple[_nested.Shape, ...] = ()
    failed: bool = False

    def freeze(
        self, info: ModuleInfo, counter: CostCounter, inclusive: dict[int, tuple[int, int]]
    ) -> LayerRecord:
        return LayerRecord(
            index=self.index,
            name=info.name,
            type=info.type,
            depth=self.depth,
            parent=self.parent,
            input_shapes=self.input_shapes,
            output_shapes=self.output_shapes,
            params=info.params,
            trainable_params=info.trainable,
            own_parameters=info.own,
            subtree_parameters=info.subtree,
            is_repeat=self.is_repeat,
            failed=self.failed,
            macs=inclusive[self.index][0],
            flops=inclusive[self.index][1],
            self_macs=counter.macs[self.index],
            self_flops=counter.flops[self.index],
        )


@dataclass
class CallRecorder:
    """Forward hooks that turn module calls into :class:`Call` entries.

    ``enter`` is a pre-hook registered first (``prepend=True``), so a call is on the stack
    before any user pre-hook runs; ``leave`` is a forward hook registered last with
    ``always_call=True``, so it sees the arguments ``forward`` received and the output the
    caller receives, and runs also when the forward or a hook raised. Neither lets an error
    of its own reach the model: those are kept in ``internal_errors``.
    """

    modules: dict[int, ModuleInfo]
    calls: list[Call] = field(default_factory=list)
    stack: list[Call] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    failures: list[tuple[BaseException, Call]] = field(default_factory=list)
    internal_errors: list[Exception] = field(default_factory=list)

    def _push(self, module: nn.Module) -> Call:
        key = id(module)
        call = Call(
            index=len(self.calls),
            module_id=key,
            depth=len(self.stack),
            parent=self.stack[-1].index if self.stack else None,
            is_repeat=key in self.seen,
        )
        self.seen.add(key)
        self.calls.append(call)
        self.stack.append(call)
        return call

    def current_call(self) -> int | None:
        """Index of the innermost module call running now (what the cost counter charges)."""
        return self.stack[-1].index if self.stack else None

    def enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._push(module)
        except Exception as e:  # never break the user's forward
            self.internal_errors.append(e)

    def leave(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.leave_unhooked(module, args, kwargs, output, raising=_in_exception_path(output))

    def leave_unhooked(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        *,
        raising: bool,
    ) -> None:
        """Record the end of a call whose raising state is known: a hooked call's (``leave``)
        or one no hook sees (a TorchScript model's)."""
        try:
            self._pop(module, args, kwargs, output, raising)
        except Exception as e:  # never break the user's forward
            self.internal_errors.append(e)

    def _pop(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        raising: bool,
    ) -> None:
        key = id(module)
        depth = next(
            (i for i in range(len(self.stack) - 1, -1, -1) if self.stack[i].module_id == key), None
        )
        if depth is None:  # a global pre-hook raised before our enter ran
            self._push(module)
            depth = len(self.stack) - 1
        call = self.stack[depth]
        del self.stack[depth:]
        call.input_shapes = _nested.shapes((args, kwargs) if kwargs else args)
        if raising:
            call.failed = True
            error = sys.exc_info()[1]
            if error is not None and not any(seen is error for seen, _ in self.failures):
                self.failures.append((error, call))  # the first to see an error is the innermost
        else:
            call.output_shapes = _nested.shapes(output)

    def origin_of(self, error: BaseException) -> _Origin | None:
        """The innermost module call whose forward raised ``error`` (or what caused it)."""
        chain: list[BaseException] = []
        cursor: BaseException | None = error
        while cursor is not None and cursor not in chain:
            chain.append(cursor)
            cursor = cursor.__cause__ or cursor.__context__
        for candidate in chain:
            for seen, call in self.failures:
                if seen is candidate:
                    info = self.modules[call.module_id]
                    return _Origin(info.name, info.type, call.input_shapes)
        return None


def _in_exception_path(output: Any) -> bool:
    """Whether torch is calling our ``always_call`` forward hook because the call raised.

    torch runs forward hooks from the ``inner`` closure of ``Module._call_impl`` normally,
    and from ``_call_impl``'s own ``except`` block after an exception. The frame tells the
    two apart even when a user hook raised after ``forward`` returned an output; should a
    future torch call hooks from elsewhere, fall back to "an exception is being handled and
    there is no output".
    """
    caller = sys._getframe(2).f_code.co_name  # 0: here, 1: leave, 2: torch
    if caller == "_call_impl":
        return True
    if caller == "inner":
        return False
    return sys.exc_info()[1] is not None and output is None


@dataclass(frozen=True)
class _Origin:
    name: str
    type: str
    input_shapes: tuple[_nested.Shape, ...]


def failure_message(
    error: BaseException, origin: _Origin | None, partial: ModelSummary, *, no_input: bool
) -> str:
    where = (
        f"module {origin.name or '(root)'!r} ({origin.type})" if origin else "the model's forward"
    )
    shapes = f" with input shapes {format_shapes(origin.input_shapes)}" if origin else ""
    hint = ""
    if no_input and isinstance(error, TypeError) and "argument" in str(error):
        hint = "\nHint: no input was given; pass input=... or input_size=(...) to summary()."
    return (
        f"forward pass failed in {where}{shapes}: {type(error).__name__}: {error}{hint}\n\n"
        f"Layers that ran before the failure:\n{partial}"
    )


def inclusive_costs(calls: list[Call], counter: CostCounter) -> dict[int, tuple[int, int]]:
    """Per call index: MACs and FLOPs of the call and everything it called."""
    totals = {call.index: [counter.macs[call.index], counter.flops[call.index]] for call in calls}
    for call in reversed(calls):  # children come after their parent
        if call.parent is not None:
            totals[call.parent][0] += totals[call.index][0]
            totals[call.parent][1] += totals[call.index][1]
    return {index: (macs, flops) for index, (macs, flops) in totals.items()}


def uncalled(modules: dict[int, ModuleInfo], calls: list[Call]) -> tuple[str, ...]:
    """Outermost modules whose parameters no call of the forward pass accounts for.

    A call accounts for the parameters its module holds directly and, when none of its
    submodules was called (a leaf call, or a fused fast path), for its whole subtree.
    """
    parents = {call.parent for call in calls}
    covered: set[int] = set()
    for call in calls:
        info = modules[call.module_id]
        covered.update(info.own if call.index in parents else info.subtree)
    names: list[str] = []
    for info in modules.values():  # parents before children
        if not info.subtree or any(info.name.startswith(outer + ".") for outer in names):
            continue
        if covered.isdisjoint(info.subtree):
            names.append(info.name)  # never the root: its call covers what it holds
    return tuple(names)
