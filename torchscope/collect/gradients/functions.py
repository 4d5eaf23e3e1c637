"""The functional calls that module hooks cannot see, for the monitor: a TorchFunctionMode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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
_CLASSIFICATION_LOSSES = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss"}
_BACKWARD_FUNCTIONS = {torch.Tensor.backward, torch.autograd.backward}


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
        if func in _RELU_FUNCTIONS:
            out = func(*args, **kwargs)
            self.monitor._on_relu(func, out)
            return out
        if func in _SOFTMAX_FUNCTIONS:
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                self.monitor._softmax_outputs[out] = True
            return out
        loss_name = _CLASSIFICATION_LOSSES.get(func)
        if loss_name is not None:
            scores = args[0] if args else kwargs.get("input")
            if isinstance(scores, torch.Tensor):
                self.monitor._on_classification_loss(loss_name, scores)
        elif func in _BACKWARD_FUNCTIONS:
            self.monitor._on_backward_call(args[0] if args else kwargs.get("tensors"))
        return func(*args, **kwargs)


# -- the monitor ---------------------------------------------------------------------------------
