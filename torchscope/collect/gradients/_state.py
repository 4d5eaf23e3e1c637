"""What the monitor's hooks record while the loop runs: per-parameter, per-module and per-step
state, kept on the device until the report reads it once."""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from torchscope.collect.freezing import close_names
from torchscope.collect.hooks import iter_modules

# The monitor's statistics that read whole tensors and that kinds judge over many steps (the
# gradients' L1 and L2 norms, how far each step moved the weights, which ReLU units fired,
# the L1 norm of the output gradients a bias sums, the probability check of a loss's scores)
# are taken at every one of the first MEASURE_EVERY_STEP steps of a with block, then at every
# MEASURE_STRIDE-th: those kinds judge conditions that hold step after step or that a bug sets
# off from the start, and a long run's cost per step no longer carries them. What names the
# first non-finite value of a run at the step it arose is taken at every step (max |grad|,
# one sum per module output, the loss), as is what costs a few Python operations (gradients
# arriving, the identity of each .grad, learning rates). A step is an optimizer step (each
# optimizer's own count), or a backward pass while no optimizer has stepped.
MEASURE_EVERY_STEP = 100
MEASURE_STRIDE = 10


def measured_step(step: int) -> bool:
    """Whether the step numbered ``step`` (from 0) has its tensor statistics taken."""
    return step < MEASURE_EVERY_STEP or step % MEASURE_STRIDE == 0


_NORMALISATION = (_BatchNorm, _InstanceNorm)
# modules whose output cannot be non-finite when their input and parameters are finite: not
# worth a pass over their output (normalisation divides by sqrt(var + eps), eps > 0; a
# non-finite parameter comes from a non-finite gradient, reported first)
_PASSTHROUGH = (
    _BatchNorm,
    _InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    _DropoutNd,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Sequential,
)
_SEQUENCE_FIRST = (
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.Transformer,
)
_TRAINING_SENSITIVE = (_DropoutNd, _BatchNorm, _InstanceNorm)


class _Param:
    """One parameter tensor (tied names folded into one) and what the hooks saw of it."""

    __slots__ = (
        "aliases",
        "cancelled_by",
        "copy_stride",
        "index",
        "intended_frozen",
        "key_after_backward",
        "key_after_step",
        "module",
        "name",
        "pending_stale",
        "received",
        "tensor",
    )

    def __init__(
        self, index: int, name: str, aliases: tuple[str, ...], tensor: nn.Parameter, module: str
    ) -> None:
        self.index = index
        self.name = name
        self.aliases = aliases
        self.tensor = tensor
        self.module = module  # qualified name of the module holding it
        self.intended_frozen = False
        self.received = 0  # backward passes that delivered a gradient to it
        self.cancelled_by: str | None = None  # normalisation layer its bias feeds straight into
        # the key of .grad right after the step of the optimizer that holds it
        self.key_after_step: GradKey | None = None
        # max |grad| left over from before that step, carried into this window (not cleared)
        self.pending_stale: tuple[_Clock, torch.Tensor] | None = None
        self.key_after_backward: GradKey | None = None
        # every how many elements (in memory order) its copy before a measured step keeps
        # one: 1 copies it whole; above 1 (max_copy_bytes) its change is read off a sample
        self.copy_stride = 1

    @property
    def sampled(self) -> bool:
        """Its change is read off a sample (a sample that did not change does not say the
        parameter did not)."""
        return self.copy_stride > 1


def _batch_first(module: nn.Module) -> bool:
    if hasattr(module, "batch_first"):
        return bool(module.batch_first)
    attention = getattr(module, "self_attn", None)  # TransformerEncoder/DecoderLayer
    return bool(getattr(attention, "batch_first", False))


class _Module:
    __slots__ = (
        "batch_dims",
        "biases",
        "checks_output",
        "module",
        "path",
        "read_on_return",
        "relu",
        "sensitive",
        "squash",
    )

    def __init__(self, path: str, module: nn.Module, biases: list[_Param]) -> None:
        self.path = path
        self.module = module
        self.biases = biases
        self.checks_output = not isinstance(module, _PASSTHROUGH)
        self.sensitive = isinstance(module, _TRAINING_SENSITIVE)
        self.relu = isinstance(module, (nn.ReLU, nn.ReLU6))
        self.squash = isinstance(module, (nn.Tanh, nn.Sigmoid))
        # layers that read (time, batch, ...) unless built with batch_first=True
        self.batch_dims = isinstance(module, _SEQUENCE_FIRST) and not _batch_first(module)
        # its output was once changed in place after it returned: from then on it is read
        # when the module returns, off the stride too (monitor._flush_forward_checks)
        self.read_on_return = False


class _Call:
    """One running forward call of a module (an entry of the monitor's call stack)."""

    __slots__ = ("after", "info", "occurrence", "relu_calls", "squash_calls")

    def __init__(self, info: _Module, occurrence: int, after: str | None) -> None:
        self.info = info
        self.occurrence = occurrence  # calls of this module before it in the same forward
        self.after = after  # the module that finished just before this call began
        self.relu_calls = 0
        self.squash_calls = 0


class _ReluSite:
    __slots__ = ("name", "observations", "top")

    def __init__(self, name: str, top: torch.Tensor) -> None:
        self.name = name
        self.top = top  # the max output per unit so far, on the device: fired if > 0 or NaN
        self.observations = 0  # per unit


@dataclass(frozen=True)
class _Clock:
    step: int  # optimizer steps completed before the event
    backward: int  # backward passes completed before the event
    # the round of optimizer steps: inside a step, the steps its optimizer took before it;
    # between steps, the most steps any one optimizer has taken (with one optimizer, its
    # steps; with two stepping in turn, a GAN's, one round covers a step of each)
    round: int = 0


@dataclass(frozen=True)
class _StepRow:
    clock: _Clock
    from_step: bool  # measured at optimizer.step (else at the end of a backward pass)
    grad_index: tuple[int, ...]
    # [3, n]: L1, L2 and max-abs norms of the gradients; [1, n] (max-abs) when not measured
    grad_stats: torch.Tensor
    weight_index: tuple[int, ...]
    weight_stats: torch.Tensor | None  # [2, m]: weight norm before the step, norm of the change
    # biases whose module output got gradients since the previous row, and the L1 norm of
    # those output gradients: the scale of the sum a bias gradient is made of
    output_index: tuple[int, ...] = ()
    output_l1: torch.Tensor | None = None
    # False on a step whose tensor statistics are not taken (measured_step): only the
    # max-abs row is computed (exact for NaN, Inf and zero); L1 and L2 read as NaN
    measured: bool = True


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this process holds: a ``DTensor``'s local shard (FSDP2's
    parameters and gradients), any other tensor itself. Statistics are taken on it and
    combined across the mesh when the report is taken (``shards.combine_shards``)."""
    to_local = getattr(tensor, "to_local", None)
    if to_local is None:
        return tensor
    with torch.no_grad():
        out: torch.Tensor = to_local()
    return out


class GradKey:
    """Which ``.grad`` tensor a parameter holds, and its version counter: equal keys mean the
    same tensor, untouched in place. The tensor is held by a weak reference, so a new
    gradient that Python allocates at a freed one's address (``zero_grad()`` then a new
    backward pass) is never taken for the old one, and no gradient is kept alive."""

    __slots__ = ("ref", "version")

    def __init__(self, grad: torch.Tensor) -> None:
        self.ref = weakref.ref(grad)
        self.version = grad._version

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GradKey):
            return NotImplemented
        mine = self.ref()
        return mine is not None and mine is other.ref() and self.version == other.version

    def __hash__(self) -> int:
        return hash((id(self.ref()), self.version))


def _grad_key(param: torch.Tensor) -> GradKey | None:
    grad = param.grad
    return None if grad is None else GradKey(grad)


# elements per chunk of a CPU L1 norm: large enough that Python's share is small, small
# enough that the temporary |x| stays in cache
_L1_CHUNK = 1 << 18
# on the CPU, tensors up to this many elements get their L1 norm from one fused call (per
# tensor on one thread: 1.9 µs at 1,024 elements against 3.1 for abs().sum(); at 4,096 the
# fused order-1 kernel, which is not vectorised, is the slower, 4.6 against 3.5)
_FUSED_L1_NUMEL = 1 << 11


def l1_norm(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The L1 norm of a tensor (summed in ``dtype`` when given). On the CPU in chunks: ATen's
    CPU kernel for an order-1 norm (``_foreach_norm``, ``vector_norm``) is not vectorised and
    runs 2-4x slower than ``abs().sum()``, whose temporary a chunk keeps small. NaN and inf
    propagate as in the norm."""
    if tensor.device.type != "cpu":
        return torch.linalg.vector_norm(tensor, ord=1, dtype=dtype)
    flat = tensor.reshape(-1)
    if flat.numel() <= _FUSED_L1_NUMEL:  # one call: the slow kernel is not slow yet
        return torch.linalg.vector_norm(flat, ord=1, dtype=dtype)
    if flat.numel() <= _L1_CHUNK:
        return flat.abs().sum(dtype=dtype)
    return torch.stack([c.abs().sum(dtype=dtype) for c in flat.split(_L1_CHUNK)]).sum()


# tensors up to this many elements get their max |x| from one fused multi-tensor kernel
# (per-call overhead dominates); larger ones from aminmax, which reads them once with no
# temporary. On one CPU thread the fused |x| then max costs about 2.7 µs a tensor at 4,096
# elements and aminmax 2.9; at 16,384 they cost 5.6 and 3.9, at 65,536 126 and 11 (the
# temporary leaves the cache). ``_foreach_norm(inf)`` is slower than both past 256.
_FUSED_MAX_NUMEL = 1 << 12


def _max_abs(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """max |x| of each tensor as one float32 tensor; NaN propagates, an empty tensor gives 0."""
    sizes = [v.numel() for v in values]
    small = [k for k, n in enumerate(sizes) if 0 < n <= _FUSED_MAX_NUMEL]
    fused = (
        list(torch._foreach_max(torch._foreach_abs([values[k] for k in small]))) if small else []
    )
    if len(small) == len(values):  # small models: one fused pass is all
        return _float32(torch.stack(fused))
    out: list[torch.Tensor | None] = [None] * len(values)
    for k, top in zip(small, fused, strict=True):
        out[k] = top
    for k, v in enumerate(values):
        if out[k] is None:
            if sizes[k]:
                low, high = torch.aminmax(v)
                out[k] = torch.maximum(high, low.neg())
            else:
                out[k] = v.new_zeros(())
    return _float32(torch.stack(out))  # type: ignore[arg-type]


def _plain(tensors: Sequence[torch.Tensor]) -> bool:
    """Dense tensors of one device and dtype, none of them a tensor subclass (a DTensor) or
    needing autograd: the common case, which needs no grouping."""
    first = tensors[0]
    device, dtype = first.device, first.dtype
    return all(
        type(t) is torch.Tensor
        and t.layout == torch.strided
        and not t.requires_grad
        and t.dtype == dtype
        and t.device == device
        for t in tensors
    )


def _norm_rows(
    tensors: Sequence[torch.Tensor], index: Sequence[int], orders: Sequence[float]
) -> tuple[tuple[int, ...], torch.Tensor]:
    """Norms of each tensor for each order as one float32 tensor ``[len(orders), n]``.

    ``torch._foreach_norm`` runs one kernel per group of dtype and device instead of one per
    tensor; the columns come back grouped, so the matching parameter indices come back too.
    The max-abs norm (``math.inf``) uses ``aminmax`` per tensor, several times faster than
    ``_foreach_norm(inf)`` on the CPU; NaN propagates through both.
    """
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]]
    if tensors and _plain(tensors):  # the common case: one group, nothing to convert
        groups = {(tensors[0].device, tensors[0].dtype): (list(index), list(tensors))}
    else:
        groups = {}
        for i, tensor in zip(index, tensors, strict=True):
            tensor = local(tensor)
            if tensor.is_sparse:
                tensor = tensor.coalesce()._values()
            elif tensor.layout != torch.strided:
                tensor = tensor.to_dense()
            ids, values = groups.setdefault((tensor.device, tensor.dtype), ([], []))
            ids.append(i)
            values.append(tensor.detach())
    order_out: list[int] = []
    blocks: list[torch.Tensor] = []
    device = None
    for (dev, dtype), (ids, values) in groups.items():
        kind = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        rows = []
        for o in orders:
            if o == math.inf:
                rows.append(_max_abs(values))
            elif o == 1.0 and dev.type == "cpu":
                rows.append(_cpu_l1(values, kind))
            else:
                rows.append(_float32(torch.stack(torch._foreach_norm(values, o, dtype=kind))))
        block = torch.stack(rows) if len(rows) > 1 else rows[0].unsqueeze(0)
        device = device or dev
        blocks.append(block if dev == device else block.to(device))  # multi-device models only
        order_out.extend(ids)
    return tuple(order_out), torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]


def _cpu_l1(values: list[torch.Tensor], kind: torch.dtype | None) -> torch.Tensor:
    sizes = [v.numel() for v in values]
    if all(n <= _FUSED_L1_NUMEL for n in sizes):
        return _float32(torch.stack(torch._foreach_norm(values, 1, dtype=kind)))
    return _float32(torch.stack([l1_norm(v, kind) for v in values]))


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _unit_dims(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The dims to reduce so one value per unit is left: features (2-D), the last dim
    (batch-first sequences, 3-D) or channels (images and volumes)."""
    if tensor.dim() == 2:
        return (0,)
    if tensor.dim() == 3:
        return (0, 1)
    if tensor.dim() >= 4:
        return (0, *range(2, tensor.dim()))
    return None


def _resolve_frozen(model: nn.Module, targets: list[Any], params: list[_Param]) -> set[int]:
    """Parameter ids named by ``frozen=`` (modules, module types, names, globs, tensors)."""
    chosen: set[int] = set()
    named_modules = list(iter_modules(model))
    module_names = [name for name, _ in named_modules if name]
    for target in targets:
        if isinstance(target, torch.Tensor):
            if id(target) not in {id(p.tensor) for p in params}:
                raise ValueError("a tensor given in frozen= is not a parameter of the model")
            chosen.add(id(target))
            continue
        if isinstance(target, nn.Module) or (
            isinstance(target, type) and issubclass(target, nn.Module)
        ):
            found = [
                m
                for _, m in named_modules
                if (m is target if isinstance(target, nn.Module) else isinstance(m, target))
            ]
        elif isinstance(target, str):
            by_param = [
                p
                for p in params
                if any(fnmatch.fnmatchcase(n, target) for n in (p.name, *p.aliases))
            ]
            chosen.update(id(p.tensor) for p in by_param)
            found = [m for name, m in named_modules if name and fnmatch.fnmatchcase(name, target)]
            if not by_param and not found:
                raise ValueError(
                    f"frozen={target!r} matches no module or parameter"
                    + close_names(target, module_names)
                )
        else:
            raise TypeError(
                "frozen= takes modules, module types, qualified names (globs allowed) or "
                f"parameter tensors; got {type(target).__name__}"
            )
        if not found and not isinstance(target, str):
            raise ValueError(f"frozen={target!r} matches no module of the model")
        for module in found:
            chosen.update(id(p) for p in module.parameters())
    return chosen
