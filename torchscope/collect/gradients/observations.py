"""What a :class:`GradientMonitor` observed, read back to the host once: the one input of the rules.

The monitor keeps its statistics on the device while the loop runs. :func:`observe` copies
them into an :class:`Observations` (plain Python numbers and tuples), when the monitor's
``with`` block ends and whenever ``report()`` runs inside it. The rules read only this
object, never the monitor, so what a report says is fixed by what the loop did while it was
watched: an optimizer the user has dropped since, or a parameter frozen after the block,
does not change it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from torchscope.collect.gradients._state import _Clock as Clock
from torchscope.collect.gradients.thresholds import GradientThresholds

if TYPE_CHECKING:
    from torchscope.collect.gradients.monitor import GradientMonitor

__all__ = ["Clock", "Fixed", "Observations", "ParamView", "ReluView", "StepView", "observe"]


@dataclass(frozen=True)
class Fixed:
    """Host state copied when the monitor's ``with`` block ends (no device value is read)."""

    held: frozenset[int]  # parameters some observed optimizer held
    requires_grad: tuple[bool, ...]  # per parameter


@dataclass(frozen=True)
class ParamView:
    """One parameter tensor (tied names folded into one) as the rules see it."""

    index: int
    name: str
    aliases: tuple[str, ...]
    module: str  # qualified name of the module holding it
    shape: tuple[int, ...]
    numel: int
    dtype: torch.dtype
    requires_grad: bool
    intended_frozen: bool  # frozen with torchscope.freeze or named in frozen=
    received: int  # backward passes that delivered a gradient to it
    cancelled_by: str | None  # the normalisation layer its bias feeds straight into
    held: bool  # some observed optimizer holds it
    group: int | None  # id of its parameter group in the optimizer that stepped it
    lr: float | None  # that group's learning rate at the last step
    zero_lr_at: Clock | None  # when its group first stepped with lr == 0

    @property
    def trainable(self) -> bool:
        return self.requires_grad and not self.intended_frozen

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point


@dataclass(frozen=True)
class StepView:
    """The statistics of one step (an optimizer step, or a backward pass without one)."""

    clock: Clock
    from_step: bool  # measured at optimizer.step (else at the end of a backward pass)
    grad_index: tuple[int, ...]
    grad_l1: tuple[float, ...]
    grad_l2: tuple[float, ...]
    grad_max_abs: tuple[float, ...]
    weight_index: tuple[int, ...]
    weight_norm: tuple[float, ...]  # before the step
    weight_change: tuple[float, ...]  # L2 norm of what the step changed
    # biases whose module output got gradients, and the L1 norm of those output gradients
    output_index: tuple[int, ...]
    output_l1: tuple[float, ...]
    has_weights: bool


@dataclass(frozen=True)
class ReluView:
    name: str  # the site: an nn.ReLU module, or F.relu inside a module's forward
    units: int
    fired_units: int  # units that fired at least once
    observations: int  # per unit


@dataclass(frozen=True)
class Observations:
    """Everything the rules may read. Clocks count optimizer steps and backward passes."""

    thresholds: GradientThresholds
    params: tuple[ParamView, ...]
    stepped: bool  # an optimizer stepped the model's parameters (else a step is a backward)
    rows: tuple[StepView, ...]  # the steps of that unit, in order
    steps: int
    backwards: int
    backward_calls: int
    accumulation_steps: int
    called: frozenset[str]  # modules that ran in a training forward
    # (clock, module paths, the sum of each module's output) per training forward
    forwards: tuple[tuple[Clock, tuple[str, ...], tuple[float, ...]], ...]
    losses: tuple[tuple[Clock, float], ...]  # what was handed to backward()
    relu_sites: tuple[ReluView, ...]
    windows: tuple[tuple[Clock, int], ...]  # backward passes per optimizer step
    stale: tuple[tuple[Clock, int, float], ...]  # uncleared gradient at the next backward
    cleared_in_window: tuple[tuple[Clock, int], ...]
    eval_root_forwards: tuple[tuple[Clock, tuple[str, ...]], ...]
    eval_sub_forwards: tuple[tuple[Clock, tuple[str, ...]], ...]
    # (clock, loss function, True: softmax output / looks like probabilities, False: not)
    probability_inputs: tuple[tuple[Clock, str, bool, bool], ...]
    batch_of_one: tuple[tuple[Clock, str, tuple[int, ...]], ...]

    def step_of(self, clock: Clock) -> int:
        """The 0-based step an event belongs to, in the report's step unit."""
        return clock.step if self.stepped else clock.backward


def _floats(tensor: torch.Tensor) -> list[float]:
    return [float(v) for v in tensor.tolist()]


def observe(monitor: GradientMonitor) -> Observations:
    """Read the monitor's statistics back from the device (one copy of each) into plain data."""
    m = monitor
    m._flush_forward_checks()
    stepped = bool(m._optimizers)
    fixed = m._fixed if not m._active else None
    held = fixed.held if fixed is not None else m._held_now()
    params = tuple(
        ParamView(
            index=e.index,
            name=e.name,
            aliases=e.aliases,
            module=e.module,
            shape=tuple(e.tensor.shape),
            numel=e.tensor.numel(),
            dtype=e.tensor.dtype,
            requires_grad=(
                fixed.requires_grad[e.index] if fixed is not None else e.tensor.requires_grad
            ),
            intended_frozen=e.intended_frozen,
            received=e.received,
            cancelled_by=e.cancelled_by,
            held=e.index in held,
            group=m._group_of.get(e.index),
            lr=m._lr_of.get(e.index),
            zero_lr_at=m._zero_lr.get(e.index),
        )
        for e in m._params
    )
    rows = []
    for r in m._rows:
        if r.from_step != stepped:
            continue
        grad = r.grad_stats.detach().cpu()
        l1, l2, linf = grad.tolist() if r.grad_index else ([], [], [])
        norms: list[float] = []
        changes: list[float] = []
        if r.weight_stats is not None:
            norms, changes = r.weight_stats.cpu().tolist()
        output_l1 = _floats(r.output_l1.cpu()) if r.output_l1 is not None else []
        rows.append(
            StepView(
                r.clock,
                r.from_step,
                r.grad_index,
                tuple(l1),
                tuple(l2),
                tuple(linf),
                r.weight_index,
                tuple(norms),
                tuple(changes),
                r.output_index,
                tuple(output_l1),
                r.weight_stats is not None,
            )
        )
    losses: list[float] = _floats(torch.stack([v for _, v in m._losses]).cpu()) if m._losses else []
    relu_sites = tuple(
        ReluView(s.name, s.fired.numel(), int(s.fired.sum()), s.observations)
        for s in m._relu_sites.values()
    )
    probability_inputs = tuple(
        (clock, name, flag is None, flag is None or bool(flag))
        for clock, name, flag in m._probability_inputs
    )
    return Observations(
        thresholds=m.thresholds,
        params=params,
        stepped=stepped,
        rows=tuple(rows),
        steps=m._steps,
        backwards=m._backwards,
        backward_calls=m._backward_calls,
        accumulation_steps=m._accumulation_steps,
        called=frozenset(m._called),
        forwards=tuple((c, p, tuple(_floats(v.cpu()))) for c, p, v in m._forwards),
        losses=tuple((c, v) for (c, _), v in zip(m._losses, losses, strict=True)),
        relu_sites=relu_sites,
        windows=tuple(m._windows),
        stale=tuple((c, i, float(leftover)) for c, i, leftover in m._stale),
        cleared_in_window=tuple(m._cleared_in_window),
        eval_root_forwards=tuple(m._eval_root_forwards),
        eval_sub_forwards=tuple(m._eval_sub_forwards),
        probability_inputs=probability_inputs,
        batch_of_one=tuple(m._batch_of_one),
    )
