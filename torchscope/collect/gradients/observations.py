"""What a :class:`GradientMonitor` observed, read back to the host once: the one input of the rules.

The monitor keeps its statistics on the device while the loop runs. :func:`observe` copies
them into an :class:`Observations` (plain Python numbers and tuples), when the monitor's
``with`` block ends and whenever ``report()`` runs inside it. The rules read only this
object, never the monitor, so what a report says is fixed by what the loop did while it was
watched: an optimizer the user has dropped since, or a parameter frozen after the block,
does not change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from torchscope.collect.gradients._state import _Clock as Clock
from torchscope.collect.gradients._state import _StepRow
from torchscope.collect.gradients.thresholds import GradientThresholds

if TYPE_CHECKING:
    from torchscope.collect.gradients.monitor import GradientMonitor

__all__ = [
    "Clock",
    "Fixed",
    "HiddenView",
    "LossView",
    "Observations",
    "ParamView",
    "ReluView",
    "SquashView",
    "StepView",
    "observe",
]


@dataclass(frozen=True)
class Fixed:
    """Host state copied when the monitor's ``with`` block ends (no device value is read)."""

    held: frozenset[int]  # parameters some observed optimizer held
    requires_grad: tuple[bool, ...]  # per parameter
    hidden_held: tuple[bool, ...]  # per hidden tensor group: some optimizer holds them
    hidden_received: tuple[bool, ...]  # per hidden tensor group: a gradient reached them


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
    sampled: bool = False  # how far steps moved it is read off a sample (max_copy_bytes)

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
    frozen: frozenset[int] = frozenset()  # stepped while not requiring grad
    # False on a step whose tensor statistics were not taken (``_state.measured_step``): its
    # max-abs norms are real, its L1 and L2 norms NaN, and it holds no weights or outputs
    measured: bool = True


@dataclass(frozen=True)
class ReluView:
    name: str  # the site: an nn.ReLU module, or F.relu inside a module's forward
    units: int
    fired_units: int  # units that fired at least once
    observations: int  # per unit


@dataclass(frozen=True)
class SquashView:
    name: str
    function: str  # "tanh" or "sigmoid"
    saturated: float  # fraction of outputs pinned at the limits
    total: int
    feeds_loss: bool  # an output layer: its output went straight into a loss
    # called outside every forward and its output never entered a module: on the loss's
    # side of the model (a hand-written loss), an output layer too
    on_output: bool = False


@dataclass(frozen=True)
class LossView:
    clock: Clock
    name: str  # the loss function
    family: str  # "classification", "binary" or "regression"
    value: float | None  # its mean value (reduction="mean")
    chance: float | None  # the loss of the best constant prediction
    batch: int | None
    floor: float | None = None  # the least loss any prediction gets (soft targets)


@dataclass(frozen=True)
class HiddenView:
    path: str
    kind: str  # "module" or "tensor"
    numel: int
    held: bool  # some optimizer holds them after all
    received: bool  # a backward pass reached them (so they take part in training)


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
    # (clock, module paths, the sum of each module's output): the first training forward with
    # a NaN or +Inf sum, if any (the monitor reads them in batches and keeps only that one)
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
    # per optimizer step: {param group: (lr, weight decay, decoupled)}; group -> optimizer class
    lr_trace: tuple[tuple[Clock, dict[int, tuple[float | None, float, bool]]], ...] = ()
    optimizer_kind: dict[int, str] | None = None
    steps_without_backward: tuple[tuple[Clock, str], ...] = ()
    # (when, parameters): a backward pass's gradients all set to None before step()
    cleared_before_step: tuple[tuple[Clock, int], ...] = ()
    clip_coefficients: tuple[tuple[Clock, float], ...] = ()
    loss_calls: tuple[LossView, ...] = ()
    broadcasts: tuple[tuple[Clock, str, tuple[int, ...], tuple[int, ...]], ...] = ()
    probabilities: tuple[tuple[Clock, str], ...] = ()
    clipped: tuple[tuple[Clock, str, str], ...] = ()
    wrong_dim: tuple[tuple[Clock, str, int, int, float], ...] = ()
    squash_sites: tuple[SquashView, ...] = ()
    scaled: tuple[tuple[float, float], ...] = ()  # (value handed to backward, losses' sum)
    sequence_inputs: tuple[tuple[str, tuple[int, ...], Clock], ...] = ()
    input_scale: float | None = None
    rows_identical: dict[int, tuple[bool, bool | None]] | None = None  # (at start, at end)
    # per loss function: its chance level over the whole run's measured calls (the labels'
    # entropy; the targets' variance), where it is kept
    population_chance: dict[str, float] | None = None
    hidden: tuple[HiddenView, ...] = ()
    # the forward ran compiled: its own signals (loss functions inside the model included)
    # were seen on eager samples only
    forward_sampled: bool = False
    # A run longer than history.HISTORY_STEPS steps keeps evenly spaced steps of each series
    # above (rows, losses, lr_trace, ...); of the steps it dropped it keeps exactly: per
    # parameter (steps whose max |grad| was finite, steps where it was finite and non-zero),
    # the earliest row with a non-finite max |grad| and the earliest non-finite loss
    dropped_grad_steps: dict[int, tuple[int, int]] | None = None
    dropped_nonfinite_row: StepView | None = None
    dropped_nonfinite_loss: tuple[Clock, float] | None = None
    # how many events of each kind a bug left (field name -> count), where the field keeps
    # only the first history.HISTORY_STEPS of them; read through total()
    event_totals: dict[str, int] | None = None

    def total(self, name: str) -> int:
        """How many events the field ``name`` saw in all (it keeps the first ones)."""
        return max((self.event_totals or {}).get(name, 0), len(getattr(self, name)))

    def step_of(self, clock: Clock) -> int:
        """The 0-based step an event belongs to, in the report's step unit."""
        return clock.step if self.stepped else clock.backward


def _floats(tensor: torch.Tensor) -> list[float]:
    return [float(v) for v in tensor.tolist()]


def _read(values: list[torch.Tensor | float | None]) -> list[float | None]:
    """Device scalars (and plain numbers) as floats, the tensors read back in one copy."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = (
        iter(_floats(torch.stack([v.float().reshape(()).cpu() for v in tensors])))
        if tensors
        else iter(())
    )
    return [
        next(read) if isinstance(v, torch.Tensor) else (None if v is None else float(v))
        for v in values
    ]


def _probabilities(range_and_sums: list[float], tolerance: float) -> bool:
    """Scores in [0, 1] whose sums over the classes are 1 (NaN compares false): ``[min, max,
    max |sum - 1|]``."""
    low, high, off = range_and_sums
    return low >= 0 and high <= 1 and off <= tolerance


def _step_view(r: _StepRow, frozen_at: dict[int, frozenset[int]]) -> StepView:
    grad = r.grad_stats.detach().cpu().tolist() if r.grad_index else [[], [], []]
    if len(grad) == 1:  # a step not measured: max |grad| only
        grad = [[math.nan] * len(grad[0]), [math.nan] * len(grad[0]), grad[0]]
    l1, l2, linf = grad
    norms: list[float] = []
    changes: list[float] = []
    if r.weight_stats is not None:
        norms, changes = r.weight_stats.cpu().tolist()
    output_l1 = _floats(r.output_l1.cpu()) if r.output_l1 is not None else []
    return StepView(
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
        frozen_at.get(r.clock.step, frozenset()) if r.from_step else frozenset(),
        r.measured,
    )


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
            lr=m._lr_of_group.get(m._group_of.get(e.index, -1)),
            zero_lr_at=m._zero_lr.get(e.index),
            sampled=e.sampled,
        )
        for e in m._params
    )
    frozen_at = {clock.step: frozen for clock, frozen in m._frozen_at_step}
    rows = tuple(_step_view(r, frozen_at) for r in m._rows if r.from_step == stepped)
    folds = m._folds
    folds.flush()
    dropped_row = folds.first_row
    losses: list[float] = _floats(torch.stack([v for _, v in m._losses]).cpu()) if m._losses else []
    relu_sites = tuple(
        ReluView(s.name, s.top.numel(), int((~(s.top <= 0)).sum()), s.observations)
        for s in m._relu_sites.values()
    )
    tolerance = m.thresholds.softmax_tolerance
    measured = [r for _, _, r in m._probability_inputs if r is not None]
    device = measured[0].device if measured else None
    read = iter(
        torch.stack([r.float().to(device) for r in measured]).cpu().tolist() if measured else []
    )
    probability_inputs = tuple(
        (clock, name, True, True)
        if r is None  # a softmax's very output
        else (clock, name, False, _probabilities(next(read), tolerance))
        for clock, name, r in m._probability_inputs
    )
    s = m._signals
    loss_values = _read([c.value for c in s.losses])
    chances = _read([c.chance for c in s.losses])
    floors = _read([c.floor for c in s.losses])
    losses_seen = tuple(
        LossView(c.clock, c.name, c.family, v, ch, c.batch, fl)
        for c, v, ch, fl in zip(s.losses, loss_values, chances, floors, strict=True)
    )
    deviations = _read([d for *_, d in s.wrong_dim])
    saturated = _read([site.saturated for site in s.squash_sites.values()])
    scaled_pairs = _read([v for _, *pair in s.scaled for v in pair])
    identical = _read([v for pair in m._rows_identical.values() for v in pair])
    population = s.population_chance()
    population_read = _read(list(population.values()))
    coefficients = _read([c for _, c in m._clip_coefficients])
    input_scale = _read([m._input_scale])[0]
    hidden_held = fixed.hidden_held if fixed is not None else tuple(m._hidden_held_now())
    hidden_received = (
        fixed.hidden_received if fixed is not None else tuple(m._hidden_received_now())
    )
    extra = dict(
        lr_trace=tuple(m._lr_trace),
        optimizer_kind=dict(m._optimizer_kind),
        steps_without_backward=tuple(m._steps_without_backward),
        cleared_before_step=tuple(m._cleared_before_step),
        clip_coefficients=tuple(
            (c, v)
            for (c, _), v in zip(m._clip_coefficients, coefficients, strict=True)
            if v is not None
        ),
        loss_calls=losses_seen,
        broadcasts=tuple(s.broadcasts),
        probabilities=tuple(s.probabilities),
        clipped=tuple(s.clipped),
        wrong_dim=tuple(
            (c, n, d, k, v if v is not None else 0.0)
            for (c, n, d, k, _), v in zip(s.wrong_dim, deviations, strict=True)
        ),
        squash_sites=tuple(
            SquashView(
                site.name,
                site.function,
                (v or 0.0) / max(site.total, 1),
                site.total,
                site.feeds_loss,
                site.outside and not site.feeds_module,
            )
            for site, v in zip(s.squash_sites.values(), saturated, strict=True)
        ),
        scaled=tuple(
            (scaled_pairs[k] or 0.0, scaled_pairs[k + 1] or 0.0)
            for k in range(0, len(scaled_pairs), 2)
        ),
        sequence_inputs=tuple(m._sequence_inputs),
        input_scale=input_scale,
        forward_sampled=m._sampler.active,
        population_chance={
            n: v for n, v in zip(population, population_read, strict=True) if v is not None
        },
        rows_identical={
            i: (
                bool(identical[2 * k]),
                None if identical[2 * k + 1] is None else bool(identical[2 * k + 1]),
            )
            for k, i in enumerate(m._rows_identical)
        },
        hidden=tuple(
            HiddenView(h.path, h.kind, sum(x.numel() for x in h.tensors), held, received)
            for h, held, received in zip(m._hidden, hidden_held, hidden_received, strict=True)
        ),
    )
    return Observations(
        thresholds=m.thresholds,
        params=params,
        stepped=stepped,
        rows=rows,
        steps=m._steps,
        backwards=m._backwards,
        backward_calls=m._backward_calls,
        accumulation_steps=m._accumulation_steps,
        called=frozenset(m._called),
        forwards=(folds.first_forward,) if folds.first_forward is not None else (),
        losses=tuple((c, v) for (c, _), v in zip(m._losses, losses, strict=True)),
        relu_sites=relu_sites,
        windows=tuple(m._windows),
        stale=tuple((c, i, float(leftover)) for c, i, leftover in m._stale),
        cleared_in_window=tuple(m._cleared_in_window),
        eval_root_forwards=tuple(m._eval_root_forwards),
        eval_sub_forwards=tuple(m._eval_sub_forwards),
        probability_inputs=probability_inputs,
        batch_of_one=tuple(m._batch_of_one),
        dropped_grad_steps={
            i: (count, folds.nonzero_steps.get(i, 0)) for i, count in folds.finite_steps.items()
        },
        dropped_nonfinite_row=(
            _step_view(dropped_row, frozen_at)
            if dropped_row is not None and dropped_row.from_step == stepped
            else None
        ),
        dropped_nonfinite_loss=folds.first_loss,
        event_totals={name: e.total for name, e in m._thinning.events_by_name.items()},
        **extra,  # type: ignore[arg-type]
    )
