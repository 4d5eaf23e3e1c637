"""Gradient health: watch the user's own training loop and name what goes wrong in it.

:class:`GradientMonitor` wraps an unchanged loop and observes it through hooks only:

- forward: module forward hooks (activations that turn NaN/Inf, BatchNorm fed a batch of one,
  training forwards in eval mode, a bias feeding straight into a normalisation layer) and a
  :class:`~torch.overrides.TorchFunctionMode` that sees functional calls (ReLU units firing,
  softmax outputs handed to ``cross_entropy``, the tensor handed to ``backward``);
- backward: one hook per trainable parameter (did a gradient arrive, was the previous step's
  gradient cleared first) and an engine callback at the end of every backward pass;
- ``optimizer.step``: step pre/post hooks (gradient norms, how far each parameter moved).

Module full-backward hooks are not used: they break on in-place ops such as the residual adds
of torchvision's resnet50. Statistics stay on the device as tensors and are read once, when
:meth:`GradientMonitor.report` builds the :class:`~torchscope.records.GradientReport`, so the
loop gets no host synchronisation per step.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

import torchscope._util.nested as _nested
from torchscope._util.inputs import unwrap
from torchscope.collect.freezing import close_names, frozen_parameters, is_frozen, is_pinned
from torchscope.collect.hooks import HookSet, iter_modules, preserved_rng
from torchscope.distributed import all_gather_objects, is_distributed
from torchscope.errors import TorchscopeError
from torchscope.records import SEVERITIES, Finding, GradientReport, ParameterHistory

__all__ = ["GradientMonitor", "GradientThresholds", "check_gradients"]


@dataclass(frozen=True)
class GradientThresholds:
    """Where a statistic becomes a finding; override any field with ``thresholds={...}``.

    Attributes:
        exploding_norm: a parameter whose gradient L2 norm exceeds this in any step.
        vanishing_ratio: a parameter whose gradient RMS, in the median step, is below this
            fraction of the largest gradient RMS of any parameter in the same step.
        dead_fraction: a ReLU site where at least this fraction of units never fired.
        dead_min_observations: observations per unit (samples x positions) needed before a
            unit that never fired counts as dead.
        not_updated_min_change: a step counts against ``not_updated`` only when the expected
            change (lr x the smaller of ||grad|| and sqrt(numel)) is at least this fraction of
            the weight norm: smaller updates can round away in floating point.
        softmax_tolerance: how close to 1 the rows of a ``cross_entropy`` input must sum to be
            taken for probabilities.
    """

    exploding_norm: float = 1e3
    vanishing_ratio: float = 1e-6
    dead_fraction: float = 0.5
    dead_min_observations: int = 8
    not_updated_min_change: float = 1e-5
    softmax_tolerance: float = 1e-3


def _thresholds(value: GradientThresholds | Mapping[str, float] | None) -> GradientThresholds:
    if value is None:
        return GradientThresholds()
    if isinstance(value, GradientThresholds):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"thresholds must be a GradientThresholds or a dict, got {type(value).__name__}"
        )
    known = [f.name for f in fields(GradientThresholds)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; known ones are {known}")
    for key, number in value.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
            raise ValueError(f"threshold {key!r} must be a non-negative number, got {number!r}")
    return GradientThresholds(**value)  # type: ignore[arg-type]


# -- what the monitor knows about the model ------------------------------------------------------

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
_TRAINING_SENSITIVE = (_DropoutNd, _BatchNorm, _InstanceNorm)
# a bias gradient under this many machine epsilons of its output gradients' L1 norm is
# rounding, not signal (see _Judge._rounding_zero): 1.2e-4 in float32, 2.3e-13 in float64
_ROUNDING_FACTOR = 2.0**10


class _Param:
    """One parameter tensor (tied names folded into one) and what the hooks saw of it."""

    __slots__ = (
        "aliases",
        "cancelled_by",
        "index",
        "intended_frozen",
        "key_after_backward",
        "key_after_step",
        "module",
        "name",
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
        self.key_after_step: tuple[int, int] | None = None
        self.key_after_backward: tuple[int, int] | None = None


class _Module:
    __slots__ = ("biases", "checks_output", "module", "path", "relu", "sensitive")

    def __init__(self, path: str, module: nn.Module, biases: list[_Param]) -> None:
        self.path = path
        self.module = module
        self.biases = biases
        self.checks_output = not isinstance(module, _PASSTHROUGH)
        self.sensitive = isinstance(module, _TRAINING_SENSITIVE)
        self.relu = isinstance(module, (nn.ReLU, nn.ReLU6))


class _Call:
    """One running forward call of a module (an entry of the monitor's call stack)."""

    __slots__ = ("after", "info", "occurrence", "relu_calls")

    def __init__(self, info: _Module, occurrence: int, after: str | None) -> None:
        self.info = info
        self.occurrence = occurrence  # calls of this module before it in the same forward
        self.after = after  # the module that finished just before this call began
        self.relu_calls = 0


class _ReluSite:
    __slots__ = ("fired", "name", "observations")

    def __init__(self, name: str, fired: torch.Tensor) -> None:
        self.name = name
        self.fired = fired  # bool per unit, on the device
        self.observations = 0  # per unit


@dataclass(frozen=True)
class _Clock:
    step: int  # optimizer steps completed before the event
    backward: int  # backward passes completed before the event


@dataclass(frozen=True)
class _StepRow:
    clock: _Clock
    from_step: bool  # measured at optimizer.step (else at the end of a backward pass)
    grad_index: tuple[int, ...]
    grad_stats: torch.Tensor  # [3, n]: L1, L2 and max-abs norms of the gradients
    weight_index: tuple[int, ...]
    weight_stats: torch.Tensor | None  # [2, m]: weight norm before the step, norm of the change
    # biases whose module output got gradients since the previous row, and the L1 norm of
    # those output gradients: the scale of the sum a bias gradient is made of
    output_index: tuple[int, ...] = ()
    output_l1: torch.Tensor | None = None


def _grad_key(param: torch.Tensor) -> tuple[int, int] | None:
    grad = param.grad
    return None if grad is None else (id(grad), grad._version)


def _norm_rows(
    tensors: Sequence[torch.Tensor], index: Sequence[int], orders: Sequence[float]
) -> tuple[tuple[int, ...], torch.Tensor]:
    """Norms of each tensor for each order as one float32 tensor ``[len(orders), n]``.

    ``torch._foreach_norm`` runs one kernel per group of dtype and device instead of one per
    tensor; the columns come back grouped, so the matching parameter indices come back too.
    The max-abs norm (``math.inf``) uses ``aminmax`` per tensor, several times faster than
    ``_foreach_norm(inf)`` on the CPU; NaN propagates through both.
    """
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[int], list[torch.Tensor]]] = {}
    for i, tensor in zip(index, tensors, strict=True):
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
                extremes = [
                    torch.aminmax(v) if v.numel() else (v.new_zeros(()),) * 2 for v in values
                ]
                low = torch.stack([lo for lo, _ in extremes]).float()
                high = torch.stack([hi for _, hi in extremes]).float()
                rows.append(torch.maximum(high, low.neg()))
            else:
                rows.append(torch.stack(torch._foreach_norm(values, o, dtype=kind)).float())
        block = torch.stack(rows)
        device = device or dev
        blocks.append(block if dev == device else block.to(device))  # multi-device models only
        order_out.extend(ids)
    return tuple(order_out), torch.cat(blocks, dim=1)


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


class _FunctionWatch(TorchFunctionMode):
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


class GradientMonitor:
    """Watches the user's own training loop and reports gradient health.

    Example::

        with torchscope.GradientMonitor(model, optimizer=opt) as mon:
            for x, y in loader:
                opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step()
        print(mon.report())

    Args:
        model: the module being trained (DataParallel/DDP/``torch.compile`` wrappers are
            looked through).
        optimizer: the optimizer whose ``step()`` ends a training step. If None, every
            optimizer that steps one of the model's parameters while the monitor is active is
            observed; if none does, each backward pass counts as a step.
        accumulation_steps: backward passes per optimizer step the loop intends; gradients
            must then be cleared after each step and only then.
        frozen: parts that are meant not to train: modules, module types, qualified module or
            parameter names (globs allowed) or parameter tensors. Parameters frozen with
            :func:`torchscope.freeze` are known without this.
        thresholds: a :class:`GradientThresholds` or a dict overriding some of its fields.

    Everything attached is removed on exit, also on exception. Costs: hooks per module and
    parameter call, a few norms per step, and one copy of the optimizer's parameters (kept to
    measure how far each step moved them).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        accumulation_steps: int = 1,
        frozen: Iterable[Any] | None = None,
        thresholds: GradientThresholds | Mapping[str, float] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GradientMonitor needs the model (an nn.Module) as its first argument, "
                f"got {type(model).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if (
            not isinstance(accumulation_steps, int)
            or isinstance(accumulation_steps, bool)
            or accumulation_steps < 1
        ):
            raise ValueError(
                f"accumulation_steps must be a positive integer, got {accumulation_steps!r}"
            )
        if isinstance(frozen, (str, nn.Module, torch.Tensor, type)):
            frozen = [frozen]
        self._model = unwrap(model, caller="GradientMonitor")
        self._optimizer = optimizer
        self._accumulation_steps = accumulation_steps
        self._frozen_targets = list(frozen or ())
        self.thresholds = _thresholds(thresholds)
        self._hooks = HookSet()
        self._mode: _FunctionWatch | None = None
        self._active = False
        self._reset()

    # -- lifecycle -------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._params: list[_Param] = []
        self._by_id: dict[int, _Param] = {}
        self._modules: list[_Module] = []
        self._called: set[str] = set()
        self._stack: list[_Call] = []
        self._occurrences: dict[str, int] = {}  # module calls so far in the current forward
        self._last_finished: str | None = None
        self._steps = 0
        self._backwards = 0
        self._backward_calls = 0
        self._backwards_since_step = 0
        self._windows: list[tuple[_Clock, int]] = []  # backward passes per optimizer step
        self._callback_queued = False
        self._optimizers: dict[int, weakref.ref[torch.optim.Optimizer]] = {}
        self._rows: list[_StepRow] = []
        self._pending: tuple[Any, ...] | None = None
        self._snapshots: dict[int, torch.Tensor] = {}
        self._forward_checks: list[tuple[str, torch.Tensor]] = []
        self._forwards: list[tuple[_Clock, tuple[str, ...], torch.Tensor]] = []
        self._produced: dict[int, tuple[weakref.ref[torch.Tensor], _Module]] = {}
        self._output_l1: dict[int, torch.Tensor] = {}  # bias index -> sum of |output grad|
        self._eval_pending: list[str] | None = None
        self._eval_root_forwards: list[tuple[_Clock, tuple[str, ...]]] = []
        self._eval_sub_forwards: list[tuple[_Clock, tuple[str, ...]]] = []
        self._forward_eval: set[str] = set()
        self._forward_root_eval = False
        self._losses: list[tuple[_Clock, torch.Tensor]] = []
        self._relu_sites: dict[tuple[str, int], _ReluSite] = {}
        self._softmax_outputs: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._probability_inputs: list[tuple[_Clock, str, torch.Tensor | None]] = []
        self._batch_of_one: list[tuple[_Clock, str, tuple[int, ...]]] = []
        self._stale: list[tuple[_Clock, int, torch.Tensor]] = []
        self._cleared_in_window: list[tuple[_Clock, int]] = []
        self._zero_lr: dict[int, _Clock] = {}
        self._group_of: dict[int, int] = {}  # parameter index -> id of its param group
        self._lr_of: dict[int, float | None] = {}  # parameter index -> its group's lr

    def __enter__(self) -> GradientMonitor:
        if self._active:
            raise TorchscopeError(
                "this GradientMonitor is already active; leave its `with` block before "
                "entering it again, or create a second monitor"
            )
        self._reset()
        try:
            self._index_parameters()
            self._attach_module_hooks()
            self._attach_parameter_hooks()
            self._attach_optimizer_hooks()
            self._mode = _FunctionWatch(self)
            self._mode.__enter__()
        except BaseException:
            self._detach()
            raise
        self._active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._detach()

    def _detach(self) -> None:
        mode, self._mode = self._mode, None
        try:
            if mode is not None:
                mode.__exit__(None, None, None)
        finally:
            self._active = False
            self._snapshots.clear()
            self._stack.clear()
            self._produced.clear()
            self._hooks.remove_all()

    # -- attaching -------------------------------------------------------------------------------

    def _index_parameters(self) -> None:
        names: dict[int, list[str]] = {}
        for name, param in self._model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        owners: dict[int, str] = {}
        for path, module in iter_modules(self._model):
            for held in module._parameters.values():
                if held is not None:
                    owners.setdefault(id(held), path)
        for param in self._model.parameters():
            if not (param.is_floating_point() or param.is_complex()):
                continue
            aliases = names[id(param)]
            entry = _Param(
                len(self._params), aliases[0], tuple(aliases[1:]), param, owners[id(param)]
            )
            self._params.append(entry)
            self._by_id[id(param)] = entry
        intended = _resolve_frozen(self._model, self._frozen_targets, self._params)
        intended |= {id(p) for p in frozen_parameters(self._model).values()}
        for entry in self._params:
            entry.intended_frozen = id(entry.tensor) in intended or is_frozen(entry.tensor)

    def _attach_module_hooks(self) -> None:
        for path, module in iter_modules(self._model):
            biases = [
                self._by_id[id(p)]
                for local, p in module._parameters.items()
                if local == "bias" and p is not None and id(p) in self._by_id
            ]
            info = _Module(path, module, biases)
            self._modules.append(info)
            self._hooks.add(
                module.register_forward_pre_hook(
                    lambda m, args, info=info: self._on_forward_pre(info, args), prepend=True
                )
            )
            self._hooks.add(
                module.register_forward_hook(
                    lambda m, args, out, info=info: self._on_forward(info, out), always_call=True
                )
            )

    def _attach_parameter_hooks(self) -> None:
        for entry in self._params:
            if entry.tensor.requires_grad:
                self._hooks.add(
                    entry.tensor.register_hook(lambda grad, entry=entry: self._on_gradient(entry))
                )

    def _attach_optimizer_hooks(self) -> None:
        if self._optimizer is not None:
            self._hooks.add(self._optimizer.register_step_pre_hook(self._on_step_pre))
            self._hooks.add(self._optimizer.register_step_post_hook(self._on_step_post))
        else:  # observe any optimizer that steps one of our parameters
            self._hooks.add(register_optimizer_step_pre_hook(self._on_step_pre))
            self._hooks.add(register_optimizer_step_post_hook(self._on_step_post))

    # -- forward ---------------------------------------------------------------------------------

    def _clock(self) -> _Clock:
        return _Clock(self._steps, self._backwards)

    def _on_forward_pre(self, info: _Module, args: tuple[Any, ...]) -> None:
        # a new outermost call starts a forward: the root's, or a submodule's called directly
        # (Lightning's training_step calling self.net(x)); per-forward counters restart
        if info.module is self._model or not self._stack:
            self._occurrences = {}
            self._last_finished = None
        occurrence = self._occurrences.get(info.path, 0)
        self._occurrences[info.path] = occurrence + 1
        self._stack.append(_Call(info, occurrence, self._last_finished))
        if not torch.is_grad_enabled():
            return
        module = info.module
        self._called.add(info.path)
        if module is self._model:
            self._forward_root_eval = not module.training
            self._forward_eval = set()
        if info.sensitive and not module.training and not self._meant_to_be_eval(module):
            self._forward_eval.add(info.path)
        if isinstance(module, _NORMALISATION) and args and isinstance(args[0], torch.Tensor):
            self._check_normalisation_input(info, args[0])

    def _meant_to_be_eval(self, module: nn.Module) -> bool:
        """Frozen normalisation layers are kept in eval mode on purpose."""
        if is_pinned(module):
            return True
        own = [p for p in module.parameters(recurse=False)]
        return bool(own) and all(
            not p.requires_grad or self._by_id[id(p)].intended_frozen
            for p in own
            if id(p) in self._by_id
        )

    def _check_normalisation_input(self, info: _Module, x: torch.Tensor) -> None:
        module = info.module
        batch_statistics = module.training or not getattr(module, "track_running_stats", True)
        if not batch_statistics:
            return
        if isinstance(module, _BatchNorm) and module.training and x.dim() >= 2 and x.shape[0] == 1:
            self._batch_of_one.append((self._clock(), info.path, tuple(x.shape)))
        producer = self._produced.get(id(x))
        if producer is not None and producer[0]() is x:
            for bias in producer[1].biases:
                bias.cancelled_by = info.path

    def _on_forward(self, info: _Module, output: Any) -> None:
        if self._stack and self._stack[-1].info is info:
            self._stack.pop()
        self._last_finished = info.path
        if not torch.is_grad_enabled():
            return
        if info.checks_output:
            for tensor in _nested.tensors(output):
                if tensor.is_floating_point():
                    kind = None if tensor.dtype == torch.float64 else torch.float32
                    self._forward_checks.append((info.path, tensor.detach().sum(dtype=kind)))
        if info.biases and isinstance(output, torch.Tensor):
            self._produced[id(output)] = (weakref.ref(output), info)
            if output.requires_grad and output.is_floating_point():
                output.register_hook(lambda grad, info=info: self._on_output_gradient(info, grad))
        if info.module is self._model:
            self._end_forward()

    def _end_forward(self) -> None:
        self._flush_forward_checks()
        self._produced.clear()
        if self._forward_eval:
            names = tuple(sorted(self._forward_eval))
            if self._forward_root_eval:
                self._eval_pending = list(names)
            else:
                self._eval_sub_forwards.append((self._clock(), names))
            self._forward_eval = set()

    def _flush_forward_checks(self) -> None:
        if self._forward_checks:
            paths = tuple(path for path, _ in self._forward_checks)
            values = torch.stack([value for _, value in self._forward_checks])
            self._forwards.append((self._clock(), paths, values))
            self._forward_checks = []

    # -- functional calls (from _FunctionWatch) --------------------------------------------------

    def _on_relu(self, func: Any, out: Any) -> None:
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor)):
            return
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
        fired = ~(values.amax(dim=dims) <= 0)  # NaN: not known to be dead
        key = (key_name, fired.numel())
        site = self._relu_sites.get(key)
        if site is None:
            name = f"{key_name} (after {after})" if after else key_name
            self._relu_sites[key] = site = _ReluSite(name, fired)
        else:
            site.fired = site.fired | fired
        site.observations += values.numel() // max(fired.numel(), 1)

    def _on_classification_loss(self, loss_name: str, scores: torch.Tensor) -> None:
        if not scores.is_floating_point() or scores.numel() == 0:
            return
        if scores in self._softmax_outputs:
            self._probability_inputs.append((self._clock(), loss_name, None))
            return
        s = scores.detach()
        class_dim = 1 if s.dim() >= 2 else 0
        looks_like_probabilities = (
            (s.amin() >= 0)
            & (s.amax() <= 1)
            & ((s.sum(dim=class_dim) - 1).abs().amax() <= self.thresholds.softmax_tolerance)
        )
        self._probability_inputs.append((self._clock(), loss_name, looks_like_probabilities))

    def _on_backward_call(self, tensors: Any) -> None:
        self._backward_calls += 1
        for tensor in _nested.tensors(tensors):
            if tensor.is_floating_point() or tensor.is_complex():
                value = tensor.detach()
                value = value if value.dim() == 0 else value.sum()
                self._losses.append((self._clock(), value.float()))

    # -- backward --------------------------------------------------------------------------------

    def _on_output_gradient(self, info: _Module, grad: torch.Tensor) -> None:
        # A bias gradient is a sum of the module's output gradients; when a normalisation
        # cancels the bias that sum is zero up to rounding, whose size is set by this scale,
        # not by the other parameters' gradients (see _Judge.rounding_zero).
        if not self._active:
            return
        scale = grad.detach().abs().sum(dtype=torch.float32)
        for bias in info.biases:
            previous = self._output_l1.get(bias.index)
            self._output_l1[bias.index] = scale if previous is None else previous + scale

    def _on_gradient(self, entry: _Param) -> None:
        # called before the incoming gradient is added to .grad, so .grad is still last step's
        entry.received += 1
        key = _grad_key(entry.tensor)
        if entry.key_after_step is not None:  # first backward pass since an optimizer step
            grad = entry.tensor.grad
            if key == entry.key_after_step and grad is not None:
                # untouched since the step; stale unless it was zeroed before the step
                leftover = torch.linalg.vector_norm(grad.detach(), ord=math.inf)
                self._stale.append((self._clock(), entry.index, leftover))
            entry.key_after_step = None
        elif (
            self._accumulation_steps > 1
            # a clear at a window boundary is right even when no step was seen: a GradScaler
            # skips optimizer.step() on inf/NaN gradients and the loop still clears them
            and self._backwards_since_step % self._accumulation_steps != 0
            and entry.key_after_backward is not None
            and key != entry.key_after_backward
        ):
            self._cleared_in_window.append((self._clock(), entry.index))
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._callback_queued = False
        self._flush_forward_checks()
        if self._eval_pending is not None:
            self._eval_root_forwards.append((self._clock(), tuple(self._eval_pending)))
            self._eval_pending = None
        for entry in self._params:
            entry.key_after_backward = _grad_key(entry.tensor)
        if not self._optimizers:  # no optimizer seen yet: every backward pass is a step
            row = self._gradient_row(from_step=False)
            if row is not None:
                self._rows.append(row)
        self._backwards += 1
        self._backwards_since_step += 1

    def _gradient_row(
        self, *, from_step: bool, weights: tuple[tuple[int, ...], torch.Tensor] | None = None
    ) -> _StepRow | None:
        with_grad = [e for e in self._params if e.tensor.grad is not None]
        if not with_grad:
            return None
        index, stats = _norm_rows(
            [e.tensor.grad for e in with_grad],  # type: ignore[misc]
            [e.index for e in with_grad],
            (1.0, 2.0, math.inf),
        )
        weight_index, weight_stats = weights if weights is not None else ((), None)
        output_index, output_l1 = self._take_output_l1()
        return _StepRow(
            self._clock(), from_step, index, stats, weight_index, weight_stats,
            output_index, output_l1,
        )  # fmt: skip

    def _take_output_l1(self) -> tuple[tuple[int, ...], torch.Tensor | None]:
        scales, self._output_l1 = self._output_l1, {}
        if not scales:
            return (), None
        device = next(iter(scales.values())).device
        return tuple(scales), torch.stack([v.to(device) for v in scales.values()])

    # -- optimizer -------------------------------------------------------------------------------

    def _held(self, optimizer: torch.optim.Optimizer) -> list[tuple[_Param, Any]]:
        held = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = self._by_id.get(id(param))
                if entry is not None:
                    held.append((entry, group))
        return held

    def _on_step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        held = self._held(optimizer)
        if not held:
            return
        if not self._optimizers:  # from now on a step is an optimizer step
            last = self._rows[-1] if self._rows and not self._rows[-1].from_step else None
            if last is not None and last.output_l1 is not None:
                # the backward pass just before this step filled the gradients it steps with
                for i, scale in zip(last.output_index, last.output_l1, strict=True):
                    previous = self._output_l1.get(i)
                    self._output_l1[i] = scale if previous is None else previous + scale
            self._rows = [row for row in self._rows if row.from_step]
        self._optimizers[id(optimizer)] = weakref.ref(optimizer)
        params = [entry.tensor for entry, _ in held]
        snapshots = []
        for entry, group in held:
            self._group_of[entry.index] = id(group)
            lr = group.get("lr")
            self._lr_of[entry.index] = float(lr) if isinstance(lr, (int, float)) else None
            if isinstance(lr, (int, float)) and lr == 0 and entry.index not in self._zero_lr:
                self._zero_lr[entry.index] = self._clock()
            snap = self._snapshots.get(entry.index)
            if snap is None or snap.shape != entry.tensor.shape or snap.dtype != entry.tensor.dtype:
                snap = self._snapshots[entry.index] = torch.empty_like(entry.tensor.detach())
            snapshots.append(snap)
        with torch.no_grad():
            weight_index, weight_norms = _norm_rows(params, [e.index for e, _ in held], (2.0,))
            torch._foreach_copy_(snapshots, [p.detach() for p in params])
        self._pending = (optimizer, held, snapshots, weight_index, weight_norms)

    def _on_step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not optimizer:
            return
        _, held, snapshots, weight_index, weight_norms = pending
        with torch.no_grad():
            params = [entry.tensor.detach() for entry, _ in held]
            torch._foreach_sub_(snapshots, params)  # snapshot - new value: the step's change
            change_index, change = _norm_rows(snapshots, [e.index for e, _ in held], (2.0,))
        # snapshots share their parameters' dtypes and devices, so the columns line up
        assert change_index == weight_index
        weights = torch.cat([weight_norms, change])
        row = self._gradient_row(from_step=True, weights=(weight_index, weights))
        if row is None:  # nothing had a gradient; still record how far the step moved them
            row = _StepRow(self._clock(), True, (), torch.zeros(3, 0), weight_index, weights)
        self._rows.append(row)
        self._windows.append((self._clock(), self._backwards_since_step))
        self._backwards_since_step = 0
        self._steps += 1
        for entry in self._params:
            entry.key_after_step = _grad_key(entry.tensor)

    # -- the report ------------------------------------------------------------------------------

    def report(self, *, gather: bool | None = None) -> GradientReport:
        """Read the statistics gathered so far back from the device and judge them.

        Under ``torch.distributed`` with more than one process this is a collective: every
        rank must call it, and every rank gets the same report. Findings seen on several
        ranks are listed once, their message saying on which ranks; a parameter that got
        gradients on some ranks and none on others is named (``no_grad``) with the ranks that
        left it out. Histories, steps and backward passes are rank 0's (DDP averages the
        gradients, so the ranks agree); the losses are the mean over ranks.

        DistributedDataParallel with ``find_unused_parameters=False`` (its default) cannot
        get that far: the rank that leaves a parameter out never finishes the all-reduce of
        its backward pass, the other ranks wait inside theirs, and its next forward raises
        "Expected to have finished reduction in the prior iteration before starting a new
        one", naming no parameter. What the monitor saw up to then is on that rank alone:
        call ``report(gather=False)`` in its error handler (a collective would hang on ranks
        out of step) and the local report names the parameter (``no_grad``).

        Args:
            gather: merge the findings of every rank; default: when ``torch.distributed`` is
                initialised with more than one process. False gives this rank's own report.
        """
        self._flush_forward_checks()
        local = _Judge(self).report()
        world = _world_size()
        if gather is None:
            gather = world > 1
        if not gather:
            return local
        if world == 0:
            raise TorchscopeError(
                "report(gather=True) needs torch.distributed: call "
                "torch.distributed.init_process_group (or torchscope.distributed.init_from_env "
                "under torchrun) first, or leave gather out"
            )
        view = _RankView(
            # the histories are rank 0's (the all-reduce makes them agree): only it sends them
            report=local if dist.get_rank() == 0 else replace(local, parameters=()),
            backward_passes=max(self._backwards, self._backward_calls),
            received={e.name: e.received for e in self._params if _trainable(e)},
            module_ran={
                e.name: not e.module
                or e.module in self._called
                or _ran_inside(e.module, self._called)
                for e in self._params
                if _trainable(e)
            },
        )
        return _merge_ranks(all_gather_objects(view))


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


# -- turning statistics into findings ------------------------------------------------------------


class _Judge:
    """Reads a monitor's statistics once and turns them into a GradientReport."""

    def __init__(self, monitor: GradientMonitor) -> None:
        self.m = monitor
        self.t = monitor.thresholds
        self.findings: list[Finding] = []
        self.folded_zero = 0  # zero-gradient parameters explained by a dead layer
        self.stepped = bool(monitor._optimizers)
        rows = [r for r in monitor._rows if r.from_step == self.stepped]
        self.rows = rows
        # one host copy of everything
        self.grad = [r.grad_stats.detach().cpu() for r in rows]
        self.weights = [None if r.weight_stats is None else r.weight_stats.cpu() for r in rows]
        self.forwards = [(c, p, v.cpu()) for c, p, v in monitor._forwards]
        values = torch.stack([v for _, v in monitor._losses]).tolist() if monitor._losses else []
        self.losses = [(c, v) for (c, _), v in zip(monitor._losses, values, strict=True)]
        self.rounding_zero = self._rounding_zero()

    def _rounding_zero(self) -> set[int]:
        """Biases whose gradient is zero up to floating-point rounding in the median step.

        A bias gradient is the sum of its module's output gradients. When a normalisation
        right after it removes per-channel shifts (however the tensor reaches it: a reshape,
        ``F.batch_norm``, a one-channel-per-group GroupNorm) that sum is mathematically zero
        and what is left is rounding: about eps x the summed magnitudes, and how much
        depends on which kernels the CPU picks. Judged against that scale, not against other
        parameters' gradients, the verdict is the same on every machine: rounding stays under
        1e-6 of the scale in float32 (1e-4 in bfloat16), real bias gradients are 1e-2 and up
        (1/sqrt(positions) when signs are random), and the threshold sits between.
        """
        ratios: dict[int, list[float]] = {}
        for row, grad in zip(self.rows, self.grad, strict=True):
            if row.output_l1 is None:
                continue
            l1 = dict(zip(row.grad_index, grad[0].tolist(), strict=True))
            if not any(v > 0 for v in l1.values()):
                continue  # every gradient was cleared before the step: nothing to judge here
            for i, scale in zip(row.output_index, row.output_l1.cpu().tolist(), strict=True):
                if i in l1 and scale > 0 and math.isfinite(scale) and math.isfinite(l1[i]):
                    ratios.setdefault(i, []).append(l1[i] / scale)
        zero = set()
        for e in self.m._params:
            values = sorted(ratios.get(e.index, ()))
            if values and e.tensor.is_floating_point():
                tolerance = min(_ROUNDING_FACTOR * torch.finfo(e.tensor.dtype).eps, 1e-3)
                if values[len(values) // 2] <= tolerance:
                    zero.add(e.index)
        return zero

    def when(self, clock: _Clock) -> int:
        return clock.step if self.stepped else clock.backward

    def add(
        self,
        kind: str,
        severity: str,
        where: str,
        when: _Clock | int | None,
        value: float | None,
        threshold: float | None,
        message: str,
    ) -> None:
        step = self.when(when) if isinstance(when, _Clock) else when
        self.findings.append(Finding(kind, severity, where, step, value, threshold, message))

    def report(self) -> GradientReport:
        m = self.m
        history = self.history()
        self.nonfinite()
        self.gradients(history)
        self.updates(history)
        self.dead_units()
        self.loop_habits()
        findings = tuple(
            sorted(
                self.findings,
                key=lambda f: (
                    SEVERITIES.index(f.severity),
                    f.step if f.step is not None else -1,
                    f.kind,
                ),
            )
        )
        return GradientReport(
            findings=findings,
            parameters=tuple(history[e.index] for e in m._params),
            steps=m._steps if self.stepped else m._backwards,
            backward_passes=max(m._backwards, m._backward_calls),
            losses=tuple(value for _, value in self.losses),
            step_unit="optimizer step" if self.stepped else "backward pass",
        )

    # per-parameter history ----------------------------------------------------------------------

    def history(self) -> dict[int, ParameterHistory]:
        m = self.m
        steps: dict[int, list[int]] = {e.index: [] for e in m._params}
        l1: dict[int, list[float]] = {e.index: [] for e in m._params}
        l2: dict[int, list[float]] = {e.index: [] for e in m._params}
        linf: dict[int, list[float]] = {e.index: [] for e in m._params}
        ratios: dict[int, list[float | None]] = {e.index: [] for e in m._params}
        for row, grad, weights in zip(self.rows, self.grad, self.weights, strict=True):
            ratio: dict[int, float] = {}
            if weights is not None:
                norms, changes = weights.tolist()
                for i, w, change in zip(row.weight_index, norms, changes, strict=True):
                    ratio[i] = change / w if w > 0 else (math.inf if change > 0 else 0.0)
            step = self.when(row.clock)
            row_l1, row_l2, row_linf = grad.tolist() if row.grad_index else ([], [], [])
            for k, i in enumerate(row.grad_index):
                steps[i].append(step)
                l1[i].append(row_l1[k])
                l2[i].append(row_l2[k])
                linf[i].append(row_linf[k])
                ratios[i].append(ratio.get(i))
        out = {}
        for e in m._params:
            numel = max(e.tensor.numel(), 1)
            out[e.index] = ParameterHistory(
                name=e.name,
                shape=tuple(e.tensor.shape),
                numel=e.tensor.numel(),
                trainable=e.tensor.requires_grad and not e.intended_frozen,
                steps=tuple(steps[e.index]),
                grad_norm=tuple(l2[e.index]),
                grad_mean_abs=tuple(v / numel for v in l1[e.index]),
                grad_max_abs=tuple(linf[e.index]),
                update_ratio=tuple(ratios[e.index]),
            )
        return out

    # non-finite values: report the root cause, fold its consequences ----------------------------

    def nonfinite(self) -> None:
        """Name the first non-finite value of the run, in the order it was computed (forward,
        loss, gradients of one pass); whatever turns non-finite after it is its consequence."""
        events: list[tuple[tuple[int, int], str, Any]] = []
        for clock, paths, values in self.forwards:
            bad = torch.isnan(values) | (values == math.inf)  # -inf is a legitimate mask value
            if bool(bad.any()):
                k = int(bad.nonzero()[0, 0])
                before = paths[k - 1] if k > 0 else None
                events.append(
                    ((clock.backward, 0), "activation", (clock, paths[k], values[k].item(), before))
                )
                break
        for clock, value in self.losses:
            if not math.isfinite(value):
                events.append(((clock.backward, 1), "loss", (clock, value)))
                break
        for row, grad in zip(self.rows, self.grad, strict=True):
            bad = ~torch.isfinite(grad[2])  # max |grad|: exact, unlike L2 which can overflow
            if bool(bad.any()):
                backward_pass = row.clock.backward - 1 if row.from_step else row.clock.backward
                events.append(((backward_pass, 2), "gradient", (row, grad[2])))
                break
        if not events:
            return
        _, what, detail = min(events, key=lambda event: event[0])
        later = [w for _, w, _ in events if w != what]
        then = f"; the {' and '.join(later)} went non-finite after it" if later else ""
        if what == "activation":
            clock, path, value, before = detail
            where = (
                f"; the module that finished just before it ({before}) was finite, so the "
                f"values arose inside {path or 'the model'} or in code between the two"
                if before is not None
                else ""
            )
            self.add(
                "nonfinite_activation", "error", path or "<model>", clock, value, None,
                f"the output of {path or 'the model'} contains {_kind_of(value)}, the first "
                f"non-finite value of the run{where}{then}. Look for log/sqrt/division of "
                "values that can reach 0 or below, exp overflow, or weights blown up by a "
                "too-high learning rate",
            )  # fmt: skip
        elif what == "loss":
            clock, value = detail
            self.add(
                "nonfinite_loss", "error", "loss", clock, value, None,
                f"the loss is {_kind_of(value)} while every module output was finite{then}: "
                "the loss computation itself overflows or divides by zero (log(0), 0/0, the "
                "mean of an empty batch); clamp its inputs or use the fused, stable form "
                "(cross_entropy on logits, BCEWithLogitsLoss)",
            )  # fmt: skip
        else:
            row, norms = detail
            for i, norm in zip(row.grad_index, norms.tolist(), strict=True):
                if math.isfinite(norm):
                    continue
                name = self.m._params[i].name
                kind = "nan_grad" if math.isnan(norm) else "inf_grad"
                self.add(
                    kind, "error", name, row.clock, norm, None,
                    f"the gradient of {name} contains {'NaN' if kind == 'nan_grad' else 'Inf'} "
                    f"while the forward and the loss were finite{then}: an op with an "
                    "unbounded derivative at the value it saw (sqrt or norm at 0, pow with a "
                    "fractional exponent at 0, acos/asin at +-1, a division by a value near 0)",
                )  # fmt: skip

    # gradients ---------------------------------------------------------------------------------

    def gradients(self, history: dict[int, ParameterHistory]) -> None:
        m = self.m
        t = self.t
        saw_backward = max(m._backwards, m._backward_calls) > 0
        fully_dead = self._fully_dead_sites()
        zero: list[tuple[_Param, ParameterHistory, int]] = []
        exploding: set[int] = set()
        judged: list[tuple[_Param, ParameterHistory]] = []
        for e in m._params:
            h = history[e.index]
            trainable = e.tensor.requires_grad and not e.intended_frozen
            if not trainable:
                continue
            if not (e.received > 0 or h.steps):
                if saw_backward:
                    self._no_grad(e)
                continue
            # max |grad| is exact (the L2 norm of fp32 values under ~1e-19 underflows to 0)
            finite = [v for v in h.grad_max_abs if math.isfinite(v)]
            if finite and all(v == 0 for v in finite):
                if e.cancelled_by is None and e.index not in self.rounding_zero:
                    zero.append((e, h, len(finite)))
                continue
            big = [
                (step, norm)
                for step, norm, top in zip(h.steps, h.grad_norm, h.grad_max_abs, strict=True)
                if norm > t.exploding_norm and math.isfinite(top)  # L2 may overflow to inf
            ]
            if big:
                exploding.add(e.index)
                value = max(v for _, v in big)
                self.add(
                    "exploding", "warning", e.name, big[0][0], value, t.exploding_norm,
                    f"the gradient norm of {e.name} reached {value:.3g} (threshold "
                    f"{t.exploding_norm:g}) in {len(big)} of {len(h.steps)} steps: lower the "
                    "learning rate, clip gradients (clip_grad_norm_), normalise inputs, or check "
                    "the initialisation and the loss reduction (sum vs mean)",
                )  # fmt: skip
            judged.append((e, h))
        if not fully_dead:
            self._vanishing(judged, exploding)
        self._zero_gradients(zero, history, fully_dead)

    def _vanishing(
        self, judged: list[tuple[_Param, ParameterHistory]], exploding: set[int]
    ) -> None:
        """Mean |grad| against the largest mean |grad| of a parameter in the same step (one
        that is not itself exploding: next to an exploding layer everything looks small)."""
        largest: dict[int, float] = {}
        for e, h in judged:
            if e.index in exploding:
                continue
            for step, mean in zip(h.steps, h.grad_mean_abs, strict=True):
                if math.isfinite(mean) and mean > largest.get(step, 0.0):
                    largest[step] = mean
        threshold = self.t.vanishing_ratio
        for e, h in judged:
            if e.cancelled_by is not None or e.index in exploding or e.index in self.rounding_zero:
                continue
            ratios = sorted(
                mean / largest[step]
                for step, mean in zip(h.steps, h.grad_mean_abs, strict=True)
                if largest.get(step, 0.0) > 0 and math.isfinite(mean)
            )
            if not ratios:
                continue
            median = ratios[len(ratios) // 2]
            if median < threshold:
                self.add(
                    "vanishing", "warning", e.name, h.steps[0], median, threshold,
                    f"the mean |gradient| of {e.name} is {median:.2g} times the largest in "
                    f"the model (median step; threshold {threshold:g}): it barely trains. "
                    "Typical causes: deep stacks of saturating activations (sigmoid/tanh), no "
                    "normalisation or residual connections, or a too-small initialisation",
                )  # fmt: skip

    def _zero_gradients(
        self,
        zero: list[tuple[_Param, ParameterHistory, int]],
        history: dict[int, ParameterHistory],
        fully_dead: list[_ReluSite],
    ) -> None:
        if fully_dead:  # every unit of a layer is dead: zero gradients around it follow
            self.folded_zero = len(zero)
            return
        with_gradient = [
            e
            for e in self.m._params
            if e.tensor.requires_grad and not e.intended_frozen and history[e.index].steps
        ]
        everything = self.stepped and len(zero) == len(with_gradient) > 0
        for e, h, observed in zero:
            enough = self.stepped and observed >= 2
            cause = (
                "every trainable parameter had a zero gradient when step() ran, which is what "
                "zero_grad() between backward() and step() does"
                if everything
                else "something with a zero derivative sits between it and the loss (round, "
                "argmax, sign, a comparison, a hard threshold) or every unit after it is dead"
            )
            self.add(
                "zero_grad", "warning" if enough else "info", e.name, h.steps[0], 0.0, 0.0,
                f"the gradient of {e.name} was exactly zero in all {observed} observed "
                f"steps: {cause}"
                + ("" if enough else "; seen in fewer than 2 optimizer steps, so a "
                   "zero-initialised branch is also possible"),
            )  # fmt: skip

    def _no_grad(self, e: _Param) -> None:
        module = e.module
        if module and module not in self.m._called and not _ran_inside(module, self.m._called):
            cause = (
                f"its module {module} never ran in a training forward (unused layer, or a "
                "branch the forward never takes)"
            )
        else:
            cause = (
                "its output does not reach the loss: a .detach(), .data, .item(), "
                "torch.no_grad() or a new tensor built from its values in the forward"
            )
        self.add(
            "no_grad", "error", e.name, None, None, None,
            f"{e.name} requires grad but never received a gradient: {cause}. If it is meant "
            "to stay fixed, freeze it (torchscope.freeze) or pass it in frozen=",
        )  # fmt: skip

    def _fully_dead_sites(self) -> list[_ReluSite]:
        return [
            s
            for s in self.m._relu_sites.values()
            if s.observations >= self.t.dead_min_observations and not bool(s.fired.any())
        ]

    # optimizer updates -------------------------------------------------------------------------

    def held(self) -> set[int]:
        """Indices of the parameters some observed optimizer holds."""
        held: set[int] = set()
        for ref in self.m._optimizers.values():
            optimizer = ref()
            if optimizer is not None:
                held.update(e.index for e, _ in self.m._held(optimizer))
        return held

    def updates(self, history: dict[int, ParameterHistory]) -> None:
        m = self.m
        if not self.stepped:
            return
        held = self.held()
        changed: dict[int, list[tuple[int, float, float]]] = {}  # index -> (step, change, w)
        for row, weights in zip(self.rows, self.weights, strict=True):
            if weights is None:
                continue
            for k, i in enumerate(row.weight_index):
                changed.setdefault(i, []).append(
                    (self.when(row.clock), float(weights[1, k]), float(weights[0, k]))
                )
        moved_groups: dict[int, set[int]] = {}
        for i, moves_of_param in changed.items():
            for step, change, _ in moves_of_param:
                if change > 0 and i in m._group_of:
                    moved_groups.setdefault(step, set()).add(m._group_of[i])
        for e in m._params:
            trainable = e.tensor.requires_grad and not e.intended_frozen
            moves = changed.get(e.index, [])
            moved = [(s, c) for s, c, _ in moves if c != 0]
            if not trainable:
                if moved:
                    step, amount = moved[0]
                    self.add(
                        "frozen_but_updated", "error", e.name, step, amount, 0.0,
                        f"{e.name} is frozen (requires_grad=False"
                        f"{' or frozen=' if e.intended_frozen else ''}) yet optimizer.step() "
                        f"changed it by {amount:.3g} (L2) in {len(moved)} step(s): it is still "
                        "in the optimizer, and momentum, weight decay or a stale zero gradient "
                        "moves it. Remove it from the optimizer, set its .grad to None, or "
                        "freeze with torchscope.freeze(..., optimizer=opt)",
                    )  # fmt: skip
                continue
            h = history[e.index]
            got_gradient = any(v > 0 and math.isfinite(v) for v in h.grad_max_abs)
            if not got_gradient:
                continue
            if e.index not in held:
                self.add(
                    "not_updated", "error", e.name, None, None, None,
                    f"{e.name} receives gradients but no optimizer holds it, so step() never "
                    "changes it: was the optimizer created before this layer was added or "
                    "replaced? Build the optimizer after the model is final, or add it with "
                    "optimizer.add_param_group",
                )  # fmt: skip
                continue
            if e.index in m._zero_lr:
                self.add(
                    "not_updated", "warning", e.name, m._zero_lr[e.index],
                    0.0, None,
                    f"{e.name} is in a parameter group whose learning rate is 0: step() "
                    "leaves it unchanged. Check the scheduler (warm-up from 0 is fine for a "
                    "few steps) and the group's lr",
                )  # fmt: skip
                continue
            norms = dict(zip(h.steps, h.grad_norm, strict=True))
            group = m._group_of.get(e.index)
            # a step counts when the gradient is large enough for its update not to round away
            # and the rest of its parameter group moved (else the lr is just tiny)
            lr = m._lr_of.get(e.index)
            rate = lr if lr is not None else 1.0
            root_n = math.sqrt(max(e.tensor.numel(), 1))
            significant = [
                (s, c)
                for s, c, w in moves
                if math.isfinite(norms.get(s, math.nan))
                # SGD moves lr*||g||, Adam about lr*sqrt(n): take the smaller as the expectation
                and rate * min(norms[s], root_n) > self.t.not_updated_min_change * w
                and group in moved_groups.get(s, ())
            ]
            if significant and all(c == 0 for _, c in significant):
                self.add(
                    "not_updated", "warning", e.name, significant[0][0], 0.0, None,
                    f"{e.name} had a non-zero gradient in {len(significant)} step(s) but "
                    "step() never changed it: is its .grad replaced or cleared between "
                    "backward() and step(), or its value restored after the step?",
                )  # fmt: skip

    # dead ReLU units ---------------------------------------------------------------------------

    def dead_units(self) -> None:
        t = self.t
        for site in self.m._relu_sites.values():
            if site.observations < t.dead_min_observations:
                continue
            fired = site.fired.cpu()
            units = fired.numel()
            dead = units - int(fired.sum())
            fraction = dead / units
            if dead and fraction >= t.dead_fraction:
                self.add(
                    "dead_activation", "warning", site.name, None, fraction, t.dead_fraction,
                    f"{dead} of {units} units ({fraction:.0%}) after {site.name} never fired "
                    f"over {site.observations} observations each (threshold "
                    f"{t.dead_fraction:.0%}): no gradient flows through them to the layers "
                    "before. Typical causes: a large negative bias, a too-high learning "
                    "rate, or inputs far from the scale the layer expects; LeakyReLU/GELU "
                    "or a lower learning rate help"
                    + (f". {self.folded_zero} parameter tensor(s) get exactly zero gradients "
                       "as a consequence" if self.folded_zero and fraction == 1 else ""),
                )  # fmt: skip

    # habits of the loop ------------------------------------------------------------------------

    def loop_habits(self) -> None:
        m = self.m
        held = self.held()
        # a parameter no optimizer holds is never cleared by zero_grad: not_updated names it
        stale = [(c, i) for c, i, leftover in m._stale if i in held and float(leftover) != 0]
        if stale:
            clock, index = stale[0]
            count = len({i for _, i in stale})
            steps = len({c.step for c, _ in stale})
            self.add(
                "grad_accumulation", "error", m._params[index].name, clock, float(steps), None,
                f"gradients were not cleared after an optimizer step ({count} parameter(s), "
                f"{steps} step(s)): each step adds to the previous steps' gradients. Call "
                "optimizer.zero_grad() once per step"
                + (f", every {m._accumulation_steps} backward passes" if m._accumulation_steps > 1 else ""),
            )  # fmt: skip
        if m._accumulation_steps > 1:
            if m._cleared_in_window:
                clock, index = m._cleared_in_window[0]
                self.add(
                    "grad_accumulation", "error", m._params[index].name, clock, None, None,
                    f"gradients were cleared between the backward passes of one accumulation "
                    f"window (accumulation_steps={m._accumulation_steps}): only the last "
                    "micro-batch reaches the optimizer. Call zero_grad() only after step()",
                )  # fmt: skip
            short = [(c, n) for c, n in m._windows if n < m._accumulation_steps]
            if len(short) > 1 and len(short) == len(m._windows):
                clock, n = short[0]
                self.add(
                    "grad_accumulation", "warning", "optimizer", clock, float(n),
                    float(m._accumulation_steps),
                    f"the optimizer stepped after {n} backward pass(es) although "
                    f"accumulation_steps={m._accumulation_steps}: step() should run once "
                    "every accumulation_steps micro-batches",
                )  # fmt: skip
        if m._eval_root_forwards:
            clock, names = m._eval_root_forwards[0]
            self.add(
                "eval_mode", "warning", "<model>", clock, float(len(m._eval_root_forwards)), None,
                f"{len(m._eval_root_forwards)} training step(s) ran with the model in eval "
                f"mode, so {_names(names)} behave as at inference (dropout off, BatchNorm "
                "frozen statistics). Call model.train() before the training loop, and again "
                "after each evaluation",
            )  # fmt: skip
        elif m._eval_sub_forwards:
            clock, names = m._eval_sub_forwards[0]
            self.add(
                "eval_mode", "info", names[0], clock, float(len(m._eval_sub_forwards)), None,
                f"{_names(names)} ran in eval mode inside a model in training mode; fine if "
                "intended (frozen statistics), otherwise call .train() on them",
            )  # fmt: skip
        for clock, loss_name, flag in m._probability_inputs:
            if flag is None or bool(flag):
                how = (
                    "the output of softmax"
                    if flag is None
                    else "values that look like probabilities (in [0, 1], rows summing to 1)"
                )
                self.add(
                    "softmax_into_cross_entropy", "error", loss_name, clock, None, None,
                    f"{loss_name} received {how}. It expects raw logits"
                    f"{' (log_softmax first for nll_loss)' if loss_name == 'nll_loss' else ''}"
                    ": softmax is applied twice, which squashes the gradients. Remove the "
                    "softmax from the model's training output",
                )  # fmt: skip
                break
        if m._batch_of_one:
            clock, path, shape = m._batch_of_one[0]
            self.add(
                "batchnorm_batch_of_one", "warning", path, clock, 1.0, None,
                f"{path} normalised a batch of one sample in training mode (input shape "
                f"{list(shape)}), {len(m._batch_of_one)} time(s): its statistics come from a "
                "single sample, and the running averages are skewed. Use drop_last=True in the "
                "DataLoader, a larger batch, or GroupNorm/LayerNorm",
            )  # fmt: skip


def _kind_of(value: float) -> str:
    return "NaN" if math.isnan(value) else "Inf"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _ran_inside(module: str, called: set[str]) -> bool:
    prefix = module + "."
    return any(name.startswith(prefix) for name in called)


# -- one report for all the ranks of a distributed run -------------------------------------------


def _world_size() -> int:
    """Processes in the default group; 0 when torch.distributed is not initialised."""
    if not is_distributed():
        return 0
    return dist.get_world_size()


def _trainable(entry: _Param) -> bool:
    return entry.tensor.requires_grad and not entry.intended_frozen


@dataclass(frozen=True)
class _RankView:
    """What one rank sends to the others at report time (pickled by ``all_gather_object``)."""

    report: GradientReport
    backward_passes: int
    received: dict[str, int]  # trainable parameter -> backward passes that delivered a gradient
    module_ran: dict[str, bool]  # trainable parameter -> its module ran in a training forward


_NONFINITE_ROOTS = ("nonfinite_activation", "nonfinite_loss")
_NONFINITE_GRADIENTS = ("nan_grad", "inf_grad")


def _merge_ranks(views: Sequence[_RankView]) -> GradientReport:
    """One report from every rank's (the same on every rank: it depends only on ``views``).

    A parameter that got gradients on some ranks and none on others is invisible to each
    rank alone: with ``find_unused_parameters=True`` DDP fills in the others' average, so
    only the gradient counts gathered here show it. A NaN/Inf that one rank's forward or loss
    produced reaches every rank's gradients through the all-reduce; the ranks that only
    received it would blame their gradients, so their ``nan_grad``/``inf_grad`` from that
    step on are folded into the root finding.
    """
    world = len(views)
    names = list(dict.fromkeys(name for view in views for name in view.received))
    uneven: dict[str, Finding] = {}
    for name in names:
        missing = [
            r for r, v in enumerate(views) if v.backward_passes and v.received.get(name) == 0
        ]
        reached = [r for r, v in enumerate(views) if v.received.get(name, 0) > 0]
        if not (missing and reached):
            continue
        if not any(views[r].module_ran.get(name, True) for r in missing):
            cause = "its module never ran there: the forward branches on the rank or its data"
        else:
            cause = (
                "its output did not reach the loss there (a branch on the rank or its data, "
                "a .detach() or torch.no_grad())"
            )
        uneven[name] = Finding(
            "no_grad", "warning", name, None, None, None,
            f"{name} received no gradient on {_ranks(missing, world)} but did on "
            f"{_ranks(reached, world)}: {cause}. DistributedDataParallel then needs "
            "find_unused_parameters=True, and averages zeros from those ranks into its "
            "gradient; without it DDP stops at the next forward with \"Expected to have "
            "finished reduction in the prior iteration before starting a new one\", naming no "
            "parameter. Use it in the loss on every rank, or freeze it if it is not meant to "
            "train",
        )  # fmt: skip
    # a non-finite activation or loss on one rank reaches every rank's gradients through the
    # all-reduce: there the gradients look like the first non-finite values, but are not
    root_steps = [
        f.step if f.step is not None else -1
        for view in views
        for f in view.report.findings
        if f.kind in _NONFINITE_ROOTS
    ]
    first_root = min(root_steps) if root_steps else None
    carried = False
    merged: dict[tuple[str, str], tuple[Finding, list[int]]] = {}
    for rank, view in enumerate(views):
        own_root = any(f.kind in _NONFINITE_ROOTS for f in view.report.findings)
        for finding in view.report.findings:
            if finding.kind == "no_grad" and finding.where in uneven:
                continue  # the rank-by-rank finding above says more
            if (
                finding.kind in _NONFINITE_GRADIENTS
                and first_root is not None
                and not own_root
                and (finding.step if finding.step is not None else -1) >= first_root
            ):
                carried = True
                continue
            key = (finding.kind, finding.where)
            if key not in merged:
                merged[key] = (finding, [rank])
                continue
            kept, ranks = merged[key]
            ranks.append(rank)
            if SEVERITIES.index(finding.severity) < SEVERITIES.index(kept.severity):
                merged[key] = (finding, ranks)
    findings = [*uneven.values()]
    for finding, ranks in merged.values():
        seen = "every rank" if len(ranks) == world else _ranks(ranks, world)
        if carried and finding.kind in _NONFINITE_ROOTS:
            seen += "; DDP's all-reduce carried it into the gradients of the other ranks"
        findings.append(replace(finding, message=f"{finding.message} (seen on {seen})"))
    findings.sort(
        key=lambda f: (SEVERITIES.index(f.severity), f.step if f.step is not None else -1, f.kind)
    )
    first = views[0].report
    losses = first.losses
    if len({len(v.report.losses) for v in views}) == 1:  # DDP keeps the ranks in step
        losses = tuple(
            sum(values) / world for values in zip(*(v.report.losses for v in views), strict=True)
        )
    return replace(first, findings=tuple(findings), losses=losses)


def _ranks(ranks: Sequence[int], world: int) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]} of {world}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]} of {world}"


# -- the one-shot check --------------------------------------------------------------------------


def check_gradients(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 3,
) -> GradientReport:
    """Run a few steps of a standard training loop on copies and report gradient health.

    The model and the optimizer are deep-copied together (so the copy's optimizer holds the
    copy's parameters); the originals, their gradients and the global RNGs are untouched.

    Args:
        model: the model to check; it runs in training mode.
        inputs: the forward's input: a tensor, a tuple of positional arguments, or a dict of
            keyword arguments.
        target: passed to ``loss_fn`` after the output. Without ``loss_fn``: integer targets
            mean ``cross_entropy``, floating-point targets ``mse_loss``.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` without a target).
            Without it and without a target, the loss is the output's sum weighted by fixed
            random numbers, so every output element gets a gradient.
        optimizer: the optimizer to copy; default SGD with lr=0.01 over trainable parameters.
        steps: training steps to run.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"check_gradients needs the model (an nn.Module) first, got {type(model).__name__}"
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    with preserved_rng():
        try:
            model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
        except Exception as e:
            raise TorchscopeError(
                f"check_gradients could not deep-copy the model ({type(e).__name__}: {e}); "
                "it trains a copy so that yours is untouched. Use GradientMonitor around your "
                "own loop instead"
            ) from e
        if optimizer_copy is None:
            trainable = [p for p in model_copy.parameters() if p.requires_grad]
            if not trainable:
                raise ValueError("the model has no trainable parameters: nothing to check")
            optimizer_copy = torch.optim.SGD(trainable, lr=0.01)
        args, kwargs = _call_arguments(inputs)
        compute_loss = _loss_function(loss_fn, target)
        model_copy.train()
        with GradientMonitor(model_copy, optimizer_copy) as monitor:
            for _ in range(steps):
                optimizer_copy.zero_grad(set_to_none=True)
                output = model_copy(*args, **kwargs)
                loss = compute_loss(output)
                loss.backward()
                optimizer_copy.step()
        return monitor.report()


def _call_arguments(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)) and not _nested.is_namedtuple(inputs):
        return tuple(inputs), {}
    return (inputs,), {}


def _loss_function(
    loss_fn: Callable[..., torch.Tensor] | None, target: Any
) -> Callable[[Any], torch.Tensor]:
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        return (lambda out: loss_fn(out)) if target is None else (lambda out: loss_fn(out, target))
    if target is not None:
        if not isinstance(target, torch.Tensor):
            raise TypeError("without loss_fn, target must be a tensor (class indices or values)")
        if target.is_floating_point():
            return lambda out: F.mse_loss(_only_tensor(out), target)
        return lambda out: F.cross_entropy(_only_tensor(out), target)
    weights: dict[tuple[Any, ...], torch.Tensor] = {}

    def projection(out: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for k, tensor in enumerate(_nested.tensors(out)):
            if not (tensor.is_floating_point() and tensor.requires_grad):
                continue
            key = (k, tuple(tensor.shape), tensor.dtype, tensor.device)
            if key not in weights:
                generator = torch.Generator().manual_seed(k)
                weights[key] = torch.randn(
                    tensor.shape, generator=generator, dtype=torch.float32
                ).to(tensor.device, tensor.dtype)
            term = (tensor * weights[key]).sum() / max(tensor.numel(), 1)
            total = term if total is None else total + term
        if total is None:
            raise ValueError(
                "the model's output has no floating-point tensor that requires grad; pass "
                "loss_fn= to say how its output becomes a loss"
            )
        return total

    return projection


def _only_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"the model returned {type(out).__name__}; pass loss_fn= to say how it becomes a loss"
    )
