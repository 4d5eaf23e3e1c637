"""The monitor's optimizer hooks: what each ``step()`` applied, moved and left behind.

A mixin of :class:`~torchscope.collect.gradients.monitor.GradientMonitor`, whose state it
reads and writes (declared below for type checkers); kept apart because the step is its own
seam: learning rates and weight decay per group, the weights' change, stale gradients
carried into a step, steps with no backward pass since the previous one.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchscope.collect.gradients._state import (
    GradKey,
    _Clock,
    _grad_key,
    _max_abs,
    _norm_rows,
    _Param,
    _StepRow,
    local,
    measured_step,
)

if TYPE_CHECKING:
    from torchscope.collect.gradients.compiled import EagerSampler
    from torchscope.collect.gradients.history import Folds, Series, Thinning
    from torchscope.collect.gradients.structure import Hidden

__all__ = ["MIN_SAMPLE", "OptimizerHooks", "checked_copy_budget", "copy_every", "sample_stride"]


def checked_copy_budget(max_copy_bytes: Any) -> int | None:
    """``max_copy_bytes`` as a whole number of bytes >= 0 (an integral NumPy or torch
    scalar is one), or None."""
    if max_copy_bytes is None:
        return None
    if isinstance(max_copy_bytes, bool):
        raise TypeError("max_copy_bytes takes a number of bytes (an int), not a bool")
    try:
        budget = operator.index(max_copy_bytes)
    except TypeError:
        raise TypeError(
            f"max_copy_bytes takes a whole number of bytes (an int; 0: no copy) or None (copy "
            f"the parameters whole), got {type(max_copy_bytes).__name__} {max_copy_bytes!r}"
        ) from None
    if budget < 0:
        raise ValueError(f"max_copy_bytes must be >= 0 (0: no copy), got {budget}")
    return budget


def copy_every(sizes: list[int], max_copy_bytes: int | None) -> int:
    """About every how many elements of each parameter the weights' copy keeps one, so the
    copy of parameters of ``sizes`` bytes fits ``max_copy_bytes`` (``sample_stride`` picks
    each parameter's own stride from it): 1 copies them whole (no budget, or one they fit
    in), 0 copies nothing."""
    if max_copy_bytes is None:
        return 1
    if max_copy_bytes == 0:
        return 0
    return max(1, math.ceil(sum(sizes) / max_copy_bytes))


# a sampled parameter keeps at least this many elements (all of a smaller one): a bias's
# change is not read off one or two of its units
MIN_SAMPLE = 64


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def sample_stride(shape: tuple[int, ...], every: int) -> int:
    """The stride of one parameter's sample, in memory order: a prime that divides none of
    its dims, the smallest from ``every`` up; lower when that would keep fewer than
    ``MIN_SAMPLE`` elements, down to 1 (the whole parameter).

    A stride that shared a factor with a row's length would take the same few columns of
    every row (the inputs a dead feature leaves at zero); one prime to every dim takes each
    column (each kernel position, each input channel) equally often."""
    numel = math.prod(shape)
    if every <= 1 or numel <= MIN_SAMPLE:
        return 1

    def fits(stride: int) -> bool:
        return _is_prime(stride) and all(d % stride for d in shape)

    stride = every
    while not fits(stride):
        stride += 1
    if math.ceil(numel / stride) >= MIN_SAMPLE:
        return stride
    stride = numel // MIN_SAMPLE
    while stride > 1 and not fits(stride):
        stride -= 1
    return max(stride, 1)


def _sample(tensor: torch.Tensor, stride: int) -> torch.Tensor:
    """A parameter's sample: every ``stride``-th element in memory order (its
    ``_Param.copy_stride``), as a view when the tensor is dense in some order of its dims
    (contiguous, channels-last): the same elements before and after an in-place optimizer
    step. A parameter that is not dense (a strided view made a Parameter) is flattened
    through a copy of it, freed at once."""
    if stride == 1:
        return tensor
    strides = tensor.stride()
    order = sorted(range(tensor.dim()), key=lambda d: -strides[d])
    dense = tensor.permute(order)
    flat = dense.view(-1) if dense.is_contiguous() else dense.reshape(-1)
    return flat[::stride]


@dataclass(frozen=True)
class _StepPlan:
    """The monitor's parameters one optimizer holds, by param group."""

    optimizer: weakref.ref[torch.optim.Optimizer]
    shape: tuple[tuple[int, ...], ...]  # per group: its id and its parameters' ids
    held: list[tuple[_Param, Any]]  # (parameter, its group) in the optimizer's order
    groups: list[tuple[Any, list[_Param]]]  # (group, its parameters)


# How far each step moves the weights (a copy of them before the step, the difference after,
# two norms: four passes over the parameters) is measured on the steps that
# _state.measured_step picks, like every statistic that reads whole tensors: the kinds that
# read it (frozen_but_updated, not_updated, tiny_updates and its causes,
# weight_decay_collapse, symmetric_weights) judge conditions that hold step after step.


class OptimizerHooks:
    """Step pre/post hooks and what they keep (see the module docstring)."""

    if TYPE_CHECKING:
        _by_id: dict[int, _Param]
        _params: list[_Param]
        _optimizer: torch.optim.Optimizer | None
        _optimizers: dict[int, weakref.ref[torch.optim.Optimizer]]
        _held_indices: set[int]
        _group_of: dict[int, int]
        _lr_of_group: dict[int, float | None]
        _plans: dict[int, _StepPlan]
        _optimizer_kind: dict[int, str]
        _zero_lr: dict[int, _Clock]
        _snapshots: dict[int, torch.Tensor]
        _copy_every: int
        _lr_trace: Series[tuple[_Clock, dict[int, tuple[float | None, float, bool]]]]
        _frozen_at_step: Series[tuple[_Clock, frozenset[int]]]
        _steps: int
        _round: int
        _backwards: int
        _backwards_since_step: int
        _pending: tuple[Any, ...] | None
        _rows: Series[_StepRow]
        _output_l1: dict[int, torch.Tensor]
        _windows: Series[tuple[_Clock, int]]
        _last_step_backwards: dict[int, int]
        _written_grads: bool
        _step_tops: dict[int, tuple[tuple[int, ...], torch.Tensor]]
        _cleared_before_step: Series[tuple[_Clock, int]]
        _steps_of: dict[int, int]
        _steps_without_backward: Series[tuple[_Clock, str]]
        _stale: Series[tuple[_Clock, int, torch.Tensor]]
        _thinning: Thinning
        _folds: Folds
        _hidden: list[Hidden]
        _hidden_keys: list[list[GradKey | None]]
        _clock: Callable[[], _Clock]
        _gradient_row: Callable[..., _StepRow | None]
        _sampler: EagerSampler
        _mode_off: Callable[[], None]
        _mode_on: Callable[[], None]
        _rest: Callable[[], None]
        _eager_forwards: int
        _retained: bool
        _stack: list[Any]
        _flush_forward_checks: Callable[[], None]

    def _held(self, optimizer: torch.optim.Optimizer) -> list[tuple[_Param, Any]]:
        held = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = self._by_id.get(id(param))
                if entry is not None:
                    held.append((entry, group))
        return held

    def _plan(self, optimizer: torch.optim.Optimizer) -> _StepPlan:
        """What a step of ``optimizer`` holds, kept while its param groups hold the same
        parameters (``add_param_group``, or a ``params`` list edited, makes a new plan)."""
        shape = tuple((id(g), *map(id, g["params"])) for g in optimizer.param_groups)
        plan = self._plans.get(id(optimizer))
        if plan is not None and plan.optimizer() is optimizer and plan.shape == shape:
            return plan
        held = self._held(optimizer)
        groups: dict[int, tuple[Any, list[_Param]]] = {}
        for entry, group in held:
            groups.setdefault(id(group), (group, []))[1].append(entry)
            self._group_of[entry.index] = id(group)
        for group, _ in groups.values():
            self._optimizer_kind[id(group)] = type(optimizer).__name__
        self._held_indices.update(entry.index for entry, _ in held)
        plan = _StepPlan(weakref.ref(optimizer), shape, held, list(groups.values()))
        for key in [key for key, kept in self._plans.items() if kept.optimizer() is None]:
            del self._plans[key]  # an optimizer dropped since: its groups go with it
        self._plans[id(optimizer)] = plan
        return plan

    def _on_step_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling():
            return  # a compiled training step: observed on its eager samples (compiled.py)
        if (args[1] if len(args) > 1 else kwargs.get("closure")) is None:  # args[0]: self
            # nothing in a step is the mode's business, yet under a TorchFunctionMode each
            # tensor attribute the optimizer reads costs a Python call; a closure's forward
            # and backward (LBFGS) are, so the mode stays for those
            self._mode_off()
        plan = self._plan(optimizer)
        held = plan.held
        if not held:
            return
        if self._backwards_since_step:
            self._check_cleared()
        if self._last_step_backwards.get(id(optimizer)) == self._backwards:
            self._written_grads = self._grads_written_since(optimizer, held)
        if not self._optimizers:  # from now on a step is an optimizer step
            last = self._rows[-1] if self._rows and not self._rows[-1].from_step else None
            if last is not None and last.output_l1 is not None:
                # the backward pass just before this step filled the gradients it steps with
                for i, scale in zip(last.output_index, last.output_l1, strict=True):
                    previous = self._output_l1.get(i)
                    self._output_l1[i] = scale if previous is None else previous + scale
            self._rows.retain(lambda row: row.from_step)
            self._folds.forget_rows()
            # from now on a step is an optimizer step: counted afresh, kept every one
            self._thinning.stepped = True
            self._thinning.spacing = 1
        known = self._optimizers.get(id(optimizer))
        if known is None or known() is not optimizer:
            self._optimizers[id(optimizer)] = weakref.ref(optimizer)
        elif len(self._optimizers) > 1:  # a parameter two optimizers hold: its last group
            for entry, group in held:
                self._group_of[entry.index] = id(group)
        # what this step records is of this optimizer's round: its own steps so far, which
        # its measurement stride counts too (thinned rows and measured rows then line up)
        self._round = self._steps_of.get(id(optimizer), 0)
        clock = self._clock()
        groups: dict[int, tuple[float | None, float, bool]] = {}
        for group, entries in plan.groups:
            lr = group.get("lr")
            lr = float(lr) if isinstance(lr, (int, float)) else None  # a tensor lr: not read
            decay = group.get("weight_decay", 0.0)
            decoupled = bool(group.get("decoupled_weight_decay", False)) or isinstance(
                optimizer, torch.optim.AdamW
            )
            groups[id(group)] = (
                lr,
                float(decay) if isinstance(decay, (int, float)) else 0.0,
                decoupled,
            )
            self._lr_of_group[id(group)] = lr
            if lr == 0:
                for entry in entries:
                    if entry.index not in self._zero_lr:
                        self._zero_lr[entry.index] = clock
        for entry, _ in held:
            if entry.pending_stale is not None:  # carried over since this optimizer's last step
                when, leftover = entry.pending_stale
                grad = entry.tensor.grad
                if grad is not None:
                    if _grad_key(entry.tensor) != entry.key_after_backward:
                        # changed in place since (clipped, unscaled or zeroed): stale only if
                        # something is left at all
                        now = torch.linalg.vector_norm(local(grad.detach()), ord=math.inf)
                        leftover = leftover * (now > 0)
                    self._stale.append((when, entry.index, leftover))
                entry.pending_stale = None
        self._lr_trace.append((clock, groups))
        frozen = [e.index for e, _ in held if not e.tensor.requires_grad]
        if frozen:
            self._frozen_at_step.append((clock, frozenset(frozen)))
        if not measured_step(self._round):
            self._pending = (optimizer, held, None, (), None)
            return
        if self._copy_every == 0:  # max_copy_bytes=0: how far steps move weights is not read
            self._pending = (optimizer, held, None, (), None)
            return
        params = [entry.tensor for entry, _ in held]
        shards = [local(p.detach()) for p in params]  # a sharded parameter: its shard
        # max_copy_bytes below the parameters' size: an evenly spaced sample of each
        samples = [_sample(s, e.copy_stride) for (e, _), s in zip(held, shards, strict=True)]
        snapshots = []
        for (entry, _), sample in zip(held, samples, strict=True):
            snap = self._snapshots.get(entry.index)
            if snap is None or snap.shape != sample.shape or snap.dtype != sample.dtype:
                snap = self._snapshots[entry.index] = torch.empty_like(sample)
            snapshots.append(snap)
        with torch.no_grad():
            weight_index, weight_norms = _norm_rows(shards, [e.index for e, _ in held], (2.0,))
            torch._foreach_copy_(snapshots, samples)
        self._pending = (optimizer, held, snapshots, weight_index, weight_norms)

    def _grads_written_since(
        self, optimizer: torch.optim.Optimizer, held: list[tuple[_Param, Any]]
    ) -> bool:
        """No backward pass since this optimizer's last step, yet new gradients to step with:
        assigned by hand (per-sample ones from torch.func, an evolution-strategies estimate),
        as new tensors or written into the old ones with new values. The last step's
        gradients rescaled in place (clip_grad_norm_, GradScaler's unscale_, ``mul_``) are
        the same gradients: every one scaled by one factor. Read on the host, on this rare
        path only."""
        changed = [
            e
            for e, _ in held
            if e.key_after_step is not None and _grad_key(e.tensor) != e.key_after_step
        ]
        if not changed:
            return False
        if any(e.tensor.grad is not e.key_after_step.ref() for e in changed):  # type: ignore[union-attr]
            return True  # new tensors
        last = self._step_tops.get(id(optimizer))
        if last is None:
            return True
        index, tops = last
        before = dict(zip(index, tops.tolist(), strict=True))
        grads = [(e.index, e.tensor.grad) for e, _ in held if e.tensor.grad is not None]
        now = _max_abs([g for _, g in grads]).tolist() if grads else []
        ratios = [
            top / before[i]
            for (i, _), top in zip(grads, now, strict=True)
            if before.get(i, 0.0) > 0 and math.isfinite(before[i]) and math.isfinite(top)
        ]
        if not ratios:
            return True
        return max(ratios) - min(ratios) > 1e-3 * max(ratios)  # not one factor: new values

    def _check_cleared(self) -> None:
        """A backward pass filled gradients since the last step and every one of them is None
        now, whichever optimizer holds them: zero_grad() (set_to_none=True, its default) ran
        between backward() and step(), and the optimizers skip every parameter. (Some cleared
        and others kept is a choice: a backbone kept still while a head trains.)"""
        filled = 0
        for entry in self._params:
            if entry.key_after_backward is not None:
                if entry.tensor.grad is not None:
                    return  # the usual step: stops at the first parameter with a gradient
                filled += 1
        if filled:
            self._cleared_before_step.append((self._clock(), filled))

    def _on_step_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling():
            return
        try:
            self._after_step(optimizer)
        finally:
            # a step runs between forwards: what is on the call stack now was left by a
            # forward that raised half way (a loop that calls a submodule, never the root,
            # would never see its stack empty again), and what it held is read now
            self._stack.clear()
            self._flush_forward_checks()
            # rest when every forward so far had its backward (not when step() came before
            # backward(), nor after a backward that kept its graph for another) and nothing
            # runs compiled (a compiled frame resumed after a step must find the mode stack
            # as dynamo traced it)
            if self._eager_forwards == 0 and not self._retained and not self._sampler.active:
                self._rest()
            else:
                self._mode_on()

    def _after_step(self, optimizer: torch.optim.Optimizer) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not optimizer:
            return
        _, held, snapshots, weight_index, weight_norms = pending
        measured = None
        if snapshots is not None:
            with torch.no_grad():
                params = [_sample(local(e.tensor.detach()), e.copy_stride) for e, _ in held]
                torch._foreach_sub_(snapshots, params)  # snapshot - new value: the step's change
                change_index, change = _norm_rows(snapshots, [e.index for e, _ in held], (2.0,))
                if self._copy_every > 1:  # a sample's change, scaled to the whole parameter's
                    entries = {e.index: e for e, _ in held}
                    scale = [
                        math.sqrt(n / max(math.ceil(n / entries[i].copy_stride), 1))
                        for i in change_index
                        for n in (local(entries[i].tensor).numel(),)
                    ]
                    change = change * torch.tensor(scale, device=change.device)
            # snapshots share their parameters' dtypes and devices, so the columns line up
            assert change_index == weight_index
            measured = (weight_index, torch.cat([weight_norms, change]))
        # each optimizer's own count: two that step in turn (a GAN's) would otherwise take
        # one parity of the shared count each, and the second would never land on the stride
        own_steps = self._steps_of.get(id(optimizer), 0)
        self._steps_of[id(optimizer)] = own_steps + 1
        full = measured_step(own_steps)
        row = self._gradient_row(from_step=True, weights=measured, measured=full)
        if row is None:  # nothing had a gradient; still record the step (and how far it moved)
            weight_index, weight_stats = measured if measured is not None else ((), None)
            row = _StepRow(
                self._clock(), True, (), torch.zeros(3, 0), weight_index, weight_stats,
                measured=full,
            )  # fmt: skip
        self._rows.append(row)
        if row.grad_index:  # max |grad| of what it stepped with (see _grads_written_since)
            self._step_tops[id(optimizer)] = (row.grad_index, row.grad_stats[-1])
        self._windows.append((self._clock(), self._backwards_since_step))
        # a closure (LBFGS) runs its backward inside step(): counted by now
        last = self._last_step_backwards.get(id(optimizer))
        written, self._written_grads = self._written_grads, False
        if last is not None and self._backwards == last and not written:
            self._steps_without_backward.append((self._clock(), type(optimizer).__name__))
        self._last_step_backwards[id(optimizer)] = self._backwards
        self._backwards_since_step = 0
        self._steps += 1
        # the series are thinned by rounds: two optimizers stepping in turn (a GAN's) take
        # the even and the odd steps, and a spacing of steps would keep one of them only;
        # between steps, a round is the most steps any one optimizer has taken
        self._round = max(self._steps_of.values())
        self._thinning.advance(self._round)
        self._sampler.after_step(self._steps)
        for entry, _ in held:  # only the parameters this optimizer applied gradients to
            entry.key_after_step = _grad_key(entry.tensor)

    def _hidden_held_now(self) -> list[bool]:
        """Per hidden tensor group: some optimizer seen (or given) holds one of them."""
        optimizers = [ref() for ref in self._optimizers.values()] + [self._optimizer]
        ids = {
            id(p)
            for optimizer in optimizers
            if optimizer is not None
            for group in optimizer.param_groups
            for p in group["params"]
        }
        return [any(id(x) in ids for x in h.tensors) for h in self._hidden]

    def _hidden_received_now(self) -> list[bool]:
        return [
            any(_grad_key(x) != key for x, key in zip(h.tensors, keys, strict=True))
            for h, keys in zip(self._hidden, self._hidden_keys, strict=True)
        ]

    def _held_now(self) -> set[int]:
        """Parameters held by an optimizer seen stepping them (alive or since dropped)."""
        held = set(self._held_indices)
        for ref in self._optimizers.values():
            optimizer = ref()
            if optimizer is not None:
                held.update(e.index for e, _ in self._held(optimizer))
        return held
