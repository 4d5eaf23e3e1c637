"""The summary's forward without the arithmetic of its heavy ops.

A summary needs shapes, not values: :class:`ShapeOnly` is a dispatch mode that lets every op
run, except the expensive ones that have a MAC formula (convolutions, matrix products,
attention, and their backward): for those it asks the op's meta kernel for the output's
shape, dtype and strides, and returns an uninitialised tensor of that layout on the op's
device. A resnet50 convolution at batch 8 then costs about 0.1 ms instead of 36 ms.

The values of those outputs, and of everything computed from them, are garbage: the mode
marks them (taint). Shapes can depend on values only through ops PyTorch tags as such
(``nonzero``, ``masked_select``, ``unique``, ``.item()``, ``bool(tensor)``, boolean-mask
indexing), or through another library's ops (torchvision's ``nms``), whose tags say
nothing: when one of them reads a marked tensor, the mode raises :class:`NeedsValues` and
the summary runs the forward again on the real values. Any other exception in a
shape-only forward (a garbage index out of range) does the same. What no op sees (reading a
marked tensor with ``.tolist()`` or ``.numpy()`` to decide a shape) is not caught.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from torchscope.collect._mac_formulas import MAC_FORMULAS, MAC_FORMULAS_BY_NAME
from torchscope.collect._preserved_state import OpCall, plain_call

__all__ = ["NeedsValues", "ShapeOnly", "shape_only_allowed"]


#: an op is skipped when its tensor arguments hold at least this many elements...
MIN_ELEMENTS = 1 << 15
#: ...and its formula gives at least this many MACs (well above the meta kernel's cost)
MIN_MACS = 1 << 21
#: an op without MACs that reads a marked tensor is answered from its meta kernel from this
#: many elements in its tensor arguments: many meta kernels are Python references that
#: take milliseconds (batch norm's 4 ms), which a pointwise op on 4 M floats takes too
MIN_MARKED_ELEMENTS = 1 << 22

_READS_VALUES = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
_ALSO_READS_VALUES = frozenset({torch.ops.aten.is_nonzero.default})
_INDEX = frozenset({torch.ops.aten.index.Tensor, torch.ops.aten._unsafe_index.Tensor})
#: ops whose meta kernel does not describe the real output: the fused attention of
#: ``nn.MultiheadAttention``'s fast path returns no weights (None) where the meta kernel
#: returns an empty tensor, which the module would then return
_RUN_ALWAYS = frozenset({torch.ops.aten._native_multi_head_attention.default})


def _aliases(func: Any) -> bool:
    """Whether an output of the op may alias an input (its schema says so)."""
    return any(r.alias_info is not None for r in func._schema.returns)


def _leaves(*values: Any) -> list[Any]:
    """The leaves of aten op arguments or outputs: tensors, scalars and ``None``, held in
    tuples, lists and dicts (what aten schemas take: ``Tensor[]``, ``Tensor?[]``); a few
    times cheaper than ``tree_flatten``, which this runs on every op once a value is
    marked."""
    leaves: list[Any] = []
    stack = list(reversed(values))
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(reversed(value))
        elif isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        else:
            leaves.append(value)
    return leaves


def _mapped(fn: Any, value: Any) -> Any:
    """``value`` with ``fn`` applied to each leaf, through tuples, lists and dicts (aten op
    arguments and outputs), keeping their types; cheaper than ``tree_map``."""
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_mapped(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _mapped(fn, v) for k, v in value.items()}
    return fn(value)


class NeedsValues(Exception):
    """An op read a value the shape-only forward does not have."""

    def __init__(self, func: Any) -> None:
        super().__init__(f"{func} read the values of a tensor computed without arithmetic")
        self.func = func


class ShapeOnly(TorchDispatchMode):
    """Skips the arithmetic of heavy MAC-formula ops; raises :class:`NeedsValues` when a
    shape or a host value would depend on their (garbage) outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0  # calls answered from the meta kernel
        self._marked: dict[int, weakref.ref[torch.Tensor]] = {}
        self._decisions: dict[Any, Any] = {}
        self._replaceable_ops: dict[Any, bool] = {}
        #: what runs an op that is not skipped: the op itself, or the handler of a mode of
        #: torchscope's below this one (the summary runs this mode inside its cost counter's
        #: handler, with the parameter-write guard's after it: one Python mode per op)
        self.run_op: OpCall = plain_call

    # -- marks -----------------------------------------------------------------------------------

    def mark(self, tensors: Iterable[Any]) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                key = id(tensor)
                self._marked[key] = weakref.ref(tensor, self._forget(key))

    def _forget(self, key: int) -> Any:
        def forget(_: object) -> None:
            self._marked.pop(key, None)

        return forget

    def marked(self, tensors: Iterable[Any]) -> bool:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                ref = self._marked.get(id(tensor))
                if ref is not None and ref() is tensor:
                    return True
        return False

    # -- dispatch --------------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.call(func, args, kwargs)

    def call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        """Runs one aten op, or answers it from its meta kernel (the mode's handler)."""
        kwargs = kwargs or {}
        if not self._marked and self._formula(func) is None:
            return self.run_op(func, args, kwargs)  # the common case: no garbage yet, a light op
        leaves = _leaves(args, kwargs)
        tainted = bool(self._marked) and self.marked(leaves)
        if tainted and func.namespace != "aten":
            raise NeedsValues(func)  # another library's op (nms): its shapes may read values
        if tainted and self._reads_values(func):
            read = _leaves(args[1:]) if func in _INDEX else leaves  # the indices only
            if func not in _INDEX or self.marked(read):
                raise NeedsValues(func)
        formula = self._formula(func)
        if formula is not None or (tainted and self._replaceable(func)):
            out = self._without_arithmetic(func, formula, args, kwargs, leaves)
            if out is not None:
                self.skipped += 1
                self.mark(_leaves(out))
                return out
        out = self.run_op(func, args, kwargs)
        if tainted:
            self.mark(_leaves(out))
        return out

    def _reads_values(self, func: Any) -> bool:
        return func in _ALSO_READS_VALUES or any(tag in func.tags for tag in _READS_VALUES)

    def _formula(self, func: Any) -> Any:
        decision = self._decisions.get(func, ...)
        if decision is ...:
            formula = MAC_FORMULAS.get(func.overloadpacket) or MAC_FORMULAS_BY_NAME.get(
                str(func.overloadpacket)
            )
            decision = (
                None
                if formula is None or func._schema.is_mutable or func in _RUN_ALWAYS
                else formula
            )
            self._decisions[func] = decision
        return decision

    def _replaceable(self, func: Any) -> bool:
        """An op whose result would be garbage anyway (it reads a marked tensor) and may be
        answered from its meta kernel: it neither writes to an argument nor returns a view
        (those keep their aliasing, so they run)."""
        decision = self._replaceable_ops.get(func)
        if decision is None:
            decision = self._replaceable_ops[func] = not (
                func.is_view or func._schema.is_mutable or _aliases(func) or func in _RUN_ALWAYS
            )
        return decision

    def _without_arithmetic(
        self, func: Any, formula: Any, args: Any, kwargs: dict[str, Any], leaves: list[Any]
    ) -> Any:
        """The op's output from its meta kernel (None: run the op). With a MAC ``formula``,
        only past ``MIN_MACS``; without one (garbage in, garbage out), only for outputs of
        at least ``MIN_MARKED_ELEMENTS``, where the meta kernel is the cheaper."""
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        least = MIN_ELEMENTS if formula is not None else MIN_MARKED_ELEMENTS
        if not tensors or sum(t.numel() for t in tensors) < least:
            return None
        device = tensors[0].device
        if device.type == "meta" or any(
            t.is_nested or t.layout != torch.strided or t.device != device for t in tensors
        ):
            return None
        to_meta = lambda value: value.to("meta") if isinstance(value, torch.Tensor) else value  # noqa: E731
        try:
            meta_out = func(*_mapped(to_meta, args), **_mapped(to_meta, kwargs))
            main = meta_out[0] if isinstance(meta_out, (tuple, list)) else meta_out
            if formula is not None and formula(args, kwargs, main) < MIN_MACS:
                return None
        except Exception:  # a meta kernel or formula that cannot take these: just run the op
            return None

        def real(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return torch.empty_strided(
                    value.shape, value.stride(), dtype=value.dtype, device=device
                )
            return value

        return _mapped(real, meta_out)


def shape_only_allowed(model: nn.Module, modules: Iterable[nn.Module], scripted: bool) -> bool:
    """Whether the forward may skip its heavy arithmetic (``_shape_only``): not when hooks of
    your own are registered (they see real values, as in any forward), not for TorchScript,
    and not for tensor subclasses (quantised weights, DTensor)."""
    if scripted:
        return False
    for tensor in [*model.parameters(), *model.buffers()]:
        if type(tensor.data) is not torch.Tensor or tensor.is_quantized:
            return False
    from torch.nn.modules import module as torch_module

    if (
        torch_module._global_forward_pre_hooks
        or torch_module._global_forward_hooks
        or torch_module._global_backward_pre_hooks
        or torch_module._global_backward_hooks
    ):
        return False
    return not any(
        m._forward_pre_hooks or m._forward_hooks or m._backward_pre_hooks or m._backward_hooks
        for m in modules
    )
