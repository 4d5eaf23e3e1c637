"""The functional calls that module hooks cannot see, for the monitor: a TorchFunctionMode."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import torchscope._util.nested as _nested
from torchscope.collect.gradients._state import (
    _Call,
    _Clock,
    _Param,
    _ReluSite,
    _unit_dims,
)
from torchscope.collect.gradients.signals import LOSS_FUNCTIONS, CallSignals, loss_copy

if TYPE_CHECKING:
    from torch.utils.weak import WeakIdKeyDictionary

    from torchscope.collect.gradients.history import Series
    from torchscope.collect.gradients.monitor import GradientMonitor
    from torchscope.collect.gradients.thresholds import GradientThresholds

__all__ = ["SATURATION_WINDOW", "FunctionCalls", "FunctionWatch", "transforming"]

# backward passes over which tanh/sigmoid saturation is measured, from the monitor's start
SATURATION_WINDOW = 10

_RELU_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
    F.relu,
    F.relu_,
    F.relu6,
}
_SOFTMAX_FUNCTIONS = {torch.softmax, torch.Tensor.softmax, F.softmax}
_LOG_SOFTMAX_FUNCTIONS = {torch.log_softmax, torch.Tensor.log_softmax, F.log_softmax}
_BACKWARD_FUNCTIONS = {torch.Tensor.backward, torch.autograd.backward}
_SQUASH_FUNCTIONS = {
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
    F.tanh: "tanh",
}
_CLAMP_FUNCTIONS = {
    torch.clamp,
    torch.Tensor.clamp,
    torch.clip,
    torch.Tensor.clip,
    torch.clamp_min,
    torch.Tensor.clamp_min,
}


# every function FunctionWatch looks at; any other call goes straight through on one set test
_WATCHED = frozenset(
    _RELU_FUNCTIONS
    | _SOFTMAX_FUNCTIONS
    | _LOG_SOFTMAX_FUNCTIONS
    | _BACKWARD_FUNCTIONS
    | set(_SQUASH_FUNCTIONS)
    | _CLAMP_FUNCTIONS
    | set(LOSS_FUNCTIONS)
    | {torch._foreach_mul_}
)


_peek_transform = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)


def transforming() -> bool:
    """Inside a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``: per-sample
    gradients, ensembles, physics-informed losses). Its tensors are wrappers with no storage
    and its derivatives never reach ``.grad``: the monitor leaves those calls alone."""
    return _peek_transform() is not None


def _argument(args: Sequence[Any], kwargs: Mapping[str, Any], position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


class FunctionWatch(TorchFunctionMode):
    """Sees the functional calls that module hooks cannot: F.relu inside a forward, softmax
    outputs, the loss handed to ``cross_entropy`` and to ``backward``. Every other call goes
    straight through."""

    def __init__(self, monitor: GradientMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func not in _WATCHED:  # most calls: the optimizer's, the model's own arithmetic
            return func(*args, **kwargs)
        if torch.compiler.is_compiling():  # inside a compiled region: see compiled.py
            return func(*args, **kwargs)
        if transforming():  # inside torch.func.grad/vmap: see transforming
            return func(*args, **kwargs)
        monitor = self.monitor
        if func in _RELU_FUNCTIONS:
            out = func(*args, **kwargs)
            monitor._on_relu(func, out)
            monitor._signals.on_clipped(out, "relu")
            return out
        if func in _SOFTMAX_FUNCTIONS or func in _LOG_SOFTMAX_FUNCTIONS:
            out = func(*args, **kwargs)
            log = func in _LOG_SOFTMAX_FUNCTIONS
            if isinstance(out, torch.Tensor) and not log:
                monitor._softmax_outputs[out] = True
            source = _argument(args, kwargs, 0, "input")
            monitor._signals.on_normalised(source, out, _argument(args, kwargs, 1, "dim"), log=log)
            return out
        squash = _SQUASH_FUNCTIONS.get(func)
        if squash is not None:
            out = func(*args, **kwargs)
            monitor._on_squash(squash, out)
            return out
        if func in _CLAMP_FUNCTIONS:
            out = func(*args, **kwargs)
            low = _argument(args, kwargs, 1, "min")
            high = (
                None
                if func in (torch.clamp_min, torch.Tensor.clamp_min)
                else (_argument(args, kwargs, 2, "max"))
            )
            if isinstance(low, (int, float)) and low == 0 and high is None:
                monitor._signals.on_clipped(out, "clamp(min=0)")
            return out
        loss = LOSS_FUNCTIONS.get(func)
        if loss is not None:
            if monitor._stack:  # inside the model's forward: the mode stays for forwards
                monitor._loss_in_forward = True
            loss_name, family = loss
            scores = _argument(args, kwargs, 0, "input")
            if family == "classification" and isinstance(scores, torch.Tensor):
                monitor._on_classification_loss(loss_name, scores)
            out = func(*args, **kwargs)
            monitor._signals.on_loss(
                monitor._clock(), func, args, kwargs, out, measured=monitor._measuring()
            )
            return out
        if func is torch._foreach_mul_ and len(args) > 1 and isinstance(args[1], torch.Tensor):
            grads = args[0]
            if args[1].dim() == 0 and isinstance(grads, (list, tuple)) and grads:
                monitor._on_gradient_scaled(grads[0], args[1])
        if func in _BACKWARD_FUNCTIONS:
            monitor._on_backward_call(args[0] if args else kwargs.get("tensors"))
            # Tensor.backward(gradient, retain_graph, create_graph) and
            # autograd.backward(tensors, grad_tensors, retain_graph, create_graph): a graph
            # kept for another backward (create_graph keeps it too)
            monitor._retained = bool(_argument(args, kwargs, 2, "retain_graph")) or bool(
                _argument(args, kwargs, 3, "create_graph")
            )
        return func(*args, **kwargs)


# -- the monitor ---------------------------------------------------------------------------------


class FunctionCalls:
    """What the monitor does with the calls :class:`FunctionWatch` sees: a mixin of
    :class:`~torchscope.collect.gradients.monitor.GradientMonitor`, whose state it updates
    (declared below for type checkers)."""

    if TYPE_CHECKING:
        thresholds: GradientThresholds
        _stack: list[_Call]
        _last_finished: str | None
        _relu_sites: dict[tuple[str, int], _ReluSite]
        _backwards: int
        _backward_calls: int
        _signals: CallSignals
        _params: list[_Param]
        _clip_coefficients: Series[tuple[_Clock, torch.Tensor]]
        _softmax_outputs: WeakIdKeyDictionary
        _probability_inputs: Series[tuple[_Clock, str, torch.Tensor | None]]
        _losses: Series[tuple[_Clock, torch.Tensor]]
        _retained: bool
        _loss_in_forward: bool
        _backward_roots: list[Any]
        _clock: Callable[[], _Clock]
        _measuring: Callable[[], bool]
        _model_returned: bool

    def _on_relu(self, func: Any, out: Any) -> None:
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor)):
            return
        if not self._measuring():
            return  # a unit that never fires never fires on the steps measured either
        if not out.is_floating_point() or out.numel() == 0:
            return
        dims = _unit_dims(out)
        if dims is None:
            return
        call = self._stack[-1] if self._stack else None
        if call is not None and call.info.relu:  # an nn.ReLU module, maybe called repeatedly
            key_name = call.info.path + (f"#{call.occurrence}" if call.occurrence else "")
            after = call.after
        else:  # F.relu & co. inside some module's forward
            owner = call.info.path if call is not None else ""
            index = 0
            if call is not None:
                index, call.relu_calls = call.relu_calls, call.relu_calls + 1
            key_name = f"{owner or '<model>'}:{getattr(func, '__name__', 'relu')}#{index}"
            after = self._last_finished
        values = out.detach()
        if values.dim() >= 4:  # feature maps: a unit has H*W chances per sample to fire, so
            # four samples of each batch are plenty, and a contiguous slice is cheap to read
            values = values[:4]
        top = values.amax(dim=dims)  # a unit fired when its max is > 0 (or NaN: not dead)
        key = (key_name, top.numel())
        site = self._relu_sites.get(key)
        if site is None:
            name = f"{key_name} (after {after})" if after else key_name
            self._relu_sites[key] = site = _ReluSite(name, top)
        else:
            torch.maximum(site.top, top, out=site.top)  # NaN propagates
        site.observations += values.numel() // max(top.numel(), 1)

    def _on_squash(self, function: str, out: Any) -> None:
        if self._backwards >= SATURATION_WINDOW:
            return  # saturation that a bug causes is there from the start; later it can be
            # confidence the model has learned (large weights on separable data)
        call = self._stack[-1] if self._stack else None
        if call is None:
            # outside every forward: after the model returned, in a hand-written loss (focal,
            # dice: its output squashed, an output layer; judged only if what it gives then
            # enters a module, SquashSite.feeds_module); before, in a model the loop writes
            # out itself (layers called one by one, weights used directly): judged
            outside = self._model_returned
            self._signals.on_squash(function, f"<loop>:{function}", out, outside=outside)
            return
        if call.info.squash:  # an nn.Tanh / nn.Sigmoid module
            name = call.info.path
        else:
            index, call.squash_calls = call.squash_calls, call.squash_calls + 1
            name = f"{call.info.path or '<model>'}:{function}#{index}"
        self._signals.on_squash(function, name, out)

    def _on_gradient_scaled(self, first: Any, factor: torch.Tensor) -> None:
        """``torch._foreach_mul_(grads, factor)``: how clip_grad_norm_ scales the gradients."""
        if isinstance(first, torch.Tensor) and any(e.tensor.grad is first for e in self._params):
            self._clip_coefficients.append((self._clock(), factor.detach().float()))

    def _on_classification_loss(self, loss_name: str, scores: torch.Tensor) -> None:
        if not scores.is_floating_point() or scores.numel() == 0 or not self._measuring():
            return
        if scores in self._softmax_outputs:
            self._probability_inputs.append((self._clock(), loss_name, None))
            return
        s = scores.detach()
        class_dim = 1 if s.dim() >= 2 else 0
        # min, max, and how far the sums over the classes are from 1: judged in observe()
        low, high = torch.aminmax(s)
        off = torch.linalg.vector_norm(s.sum(dim=class_dim) - 1, ord=math.inf)
        range_and_sums = torch.stack([low.to(off.dtype), high.to(off.dtype), off])
        self._probability_inputs.append((self._clock(), loss_name, range_and_sums))

    def _on_backward_call(self, tensors: Any) -> None:
        self._backward_calls += 1
        self._backward_roots = []
        values = []
        clock = self._clock()
        last = self._signals.last_loss
        for tensor in _nested.tensors(tensors):
            if tensor.grad_fn is not None:
                self._backward_roots.append(tensor.grad_fn)
            if tensor.is_floating_point() or tensor.is_complex():
                if last is not None and last[0]() is tensor and last[1] == tensor._version:
                    value = last[2]  # the loss function's output, unchanged since: its copy
                else:
                    value = loss_copy(tensor)
                self._losses.append((clock, value))
                values.append(value)
        if values:  # backward([l1, l2]) is handed their sum, as (l1 + l2).backward() is
            total = values[0] if len(values) == 1 else torch.stack(values).sum()
            self._signals.on_backward(clock, total)
