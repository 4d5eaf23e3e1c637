"""The functional calls that module hooks cannot see, for the monitor: a TorchFunctionMode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from torchscope.collect.gradients.signals import LOSS_FUNCTIONS

if TYPE_CHECKING:
    from torchscope.collect.gradients.monitor import GradientMonitor

__all__ = ["FunctionWatch"]

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
_CLASSIFICATION_LOSSES = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss"}
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
        if torch.compiler.is_compiling():  # inside a compiled region: see compiled.py
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
            loss_name = _CLASSIFICATION_LOSSES.get(func)
            scores = _argument(args, kwargs, 0, "input")
            if loss_name is not None and isinstance(scores, torch.Tensor):
                monitor._on_classification_loss(loss_name, scores)
            out = func(*args, **kwargs)
            monitor._signals.on_loss(monitor._clock(), func, args, kwargs, out)
            return out
        if func is torch._foreach_mul_ and len(args) > 1 and isinstance(args[1], torch.Tensor):
            grads = args[0]
            if args[1].dim() == 0 and isinstance(grads, (list, tuple)) and grads:
                monitor._on_gradient_scaled(grads[0], args[1])
        if func in _BACKWARD_FUNCTIONS:
            monitor._on_backward_call(args[0] if args else kwargs.get("tensors"))
        return func(*args, **kwargs)


# -- the monitor ---------------------------------------------------------------------------------
