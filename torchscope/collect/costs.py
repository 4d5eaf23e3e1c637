"""Exact FLOP/MAC counting at the aten level, with an explicit list of what could not be counted.

A :class:`CostCounter` is a ``TorchDispatchMode``: it sees every aten op that actually runs
(fused kernels included: the transformer fast path, ``mkldnn_rnn_layer``, flash attention)
and prices it with a formula of our own. Conventions:

- a multiply-accumulate (MAC) is one multiplication and one addition: FLOPs = 2 x MACs for
  matrix products, convolutions, attention and recurrent cells;
- ops without multiply-accumulates (elementwise, reductions, normalisation, softmax,
  pooling) cost 0 MACs; with ``all_ops=True`` they add FLOPs: 1 per output element for
  elementwise ops, 1 per input element for reductions and pooling, 5 per element for
  normalisation and softmax (forward and backward alike);
- ops that only move or view data (copies, reshapes, indexing, concatenation, creation)
  cost nothing;
- any other op that returned a tensor has no formula: it is counted in
  :attr:`CostCounter.uncounted` by name, never silently priced at zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from torchscope.collect._mac_formulas import MAC_FORMULAS, MAC_FORMULAS_BY_NAME, MacFormula
from torchscope.collect._op_kinds import op_category
from torchscope.collect._preserved_state import OpCall, plain_call

__all__ = ["MAC_FORMULAS", "CostCounter", "op_cost"]


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _elements(tensors: list[torch.Tensor]) -> int:
    total = 0
    for t in tensors:
        try:
            total += t.numel()
        except RuntimeError:
            continue
    return total


# What an op is, decided once per OpOverload: a MAC formula, or one of these kinds.
_FREE = "free"  # moves or views data, or has no MACs and all_ops is off
_UNKNOWN = "unknown"  # no formula: listed when it produced a tensor


def _handler(func: Any, all_ops: bool) -> MacFormula | str:
    formula = MAC_FORMULAS.get(func.overloadpacket) or MAC_FORMULAS_BY_NAME.get(
        str(func.overloadpacket)
    )
    if formula is not None:
        return formula
    category = op_category(func)
    if category == "?":
        return _UNKNOWN
    if category == "move" or not all_ops:
        return _FREE
    return category


def _non_mac_flops(category: str, args: Sequence[Any], out: Any) -> int:
    outputs = _tensors_in(out)
    if category == "pointwise":
        return _elements(outputs)
    inputs = _elements(_tensors_in(args[0])) if args else 0
    if category == "reduce":
        return inputs
    return 5 * max(inputs, _elements(outputs[:1]))  # normalisation, softmax


def op_cost(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, *, all_ops: bool
) -> tuple[int, int, bool]:
    """``(macs, flops, counted)`` of one aten op call; ``counted`` is False for unknown ops."""
    return _priced(_handler(func, all_ops), args, kwargs, out)


def _priced(
    handler: MacFormula | str, args: Sequence[Any], kwargs: dict[str, Any], out: Any
) -> tuple[int, int, bool]:
    if handler is _FREE:
        return 0, 0, True
    if handler is _UNKNOWN:
        return 0, 0, not _tensors_in(out)  # an op that produced no tensor moved no data
    if isinstance(handler, str):
        return 0, _non_mac_flops(handler, args, out), True
    main = out[0] if isinstance(out, (tuple, list)) else out
    try:
        macs = handler(args, kwargs, main)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return 0, 0, False  # a layout the formula cannot read (ragged tensors): listed, not guessed
    return macs, 2 * macs, True


class CostCounter(TorchDispatchMode):
    """Counts MACs and FLOPs of every aten op that runs inside it.

    Args:
        attribute_to: returns the key (a module call index) to charge the op to, or None.
        all_ops: also price ops without multiply-accumulates (see the module docstring).
    """

    def __init__(self, attribute_to: Callable[[], int | None], *, all_ops: bool = False) -> None:
        super().__init__()
        self.attribute_to = attribute_to
        self.all_ops = all_ops
        self.backward = False  # set while the backward pass runs
        self.macs: Counter[int | None] = Counter()
        self.flops: Counter[int | None] = Counter()
        self.backward_macs = 0
        self.backward_flops = 0
        self.uncounted: Counter[str] = Counter()
        self._handlers: dict[Any, MacFormula | str] = {}
        #: what runs each op: the op itself, or the handler of a mode of torchscope's that
        #: the counter stands in for (one Python dispatch mode per op instead of several)
        self.run_op: OpCall = plain_call

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # runs for every aten op: keep the common cases (data movement, no-MAC ops) short
        out = self.run_op(func, args, kwargs)
        handler = self._handlers.get(func)
        if handler is None:
            handler = self._handlers[func] = _handler(func, self.all_ops)
        if handler is _FREE:
            return out
        macs, flops, counted = _priced(handler, args, kwargs or {}, out)
        if not counted:
            self.uncounted[str(func.overloadpacket)] += 1
        elif self.backward:
            self.backward_macs += macs
            self.backward_flops += flops
        elif macs or flops:
            key = self.attribute_to()
            self.macs[key] += macs
            self.flops[key] += flops
        return out

    def charge(self, macs: int) -> None:
        """Adds ``macs`` (and 2 FLOPs each) to the module call running now."""
        key = self.attribute_to()
        self.macs[key] += macs
        self.flops[key] += 2 * macs


#: recurrent modules whose forward the summary prices from its weights, running the fused
#: kernel with the Python dispatch modes off (the exact classes: a subclass may do more)
FUSED_RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def recurrent_macs(module: nn.RNNBase, input: Any) -> int:
    """MACs of a recurrent module's forward: every step of every sample multiplies the input
    and the hidden state (and an LSTM's projection) by each layer's and direction's weight
    matrices, whichever kernel runs (fused, cuDNN, one op per step)."""
    data = input.data if isinstance(input, nn.utils.rnn.PackedSequence) else input
    if isinstance(input, nn.utils.rnn.PackedSequence):
        steps_times_batch = int(data.shape[0])  # the sum of the batch sizes
    else:
        steps_times_batch = int(data.numel()) // module.input_size
    weights = sum(
        int(p.numel())
        for name, p in module.named_parameters(recurse=False)
        if name.startswith("weight_")
    )
    return steps_times_batch * weights
