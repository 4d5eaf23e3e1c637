"""Facts that several gradient rules share, derived once from an :class:`Observations`.

A rule reads the observations and these facts, never another rule's findings, so the rules
run in any order. Each fact is computed on first use and kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import torch

from torchscope.collect.gradients.observations import (
    Clock,
    LossView,
    Observations,
    ParamView,
    ReluView,
)
from torchscope.collect.gradients.thresholds import GradientThresholds
from torchscope.records import Finding, ParameterHistory

__all__ = ["ChanceTail", "Evidence", "Move"]

T = TypeVar("T")

# a bias gradient under this many machine epsilons of its output gradients' L1 norm is
# rounding, not signal (see Evidence.rounding_zero): 1.2e-4 in float32, 2.3e-13 in float64
ROUNDING_FACTOR = 2.0**10
MIN_STEPS_FOR_UPDATES = 20  # optimizer steps before "most of the run" means anything
# a loss below this fraction of the chance level has learned most of what there is
CONVERGED_FRACTION = 0.3
# a gradient below this fraction of its weights' norm (the median weight matrix, median
# measured step) has little left to teach: a trained model, or a loss scaled far down. At
# initialisation gradients measure 1e-2 to 1 of the weights; a converged model's 1e-6 to 1e-4
SMALL_GRADIENT = 1e-3
# a chance level read per batch (a regression's variance) or per class count (ln C) stands
# unless the whole run's differs by this factor: batches that do not sample the data evenly
# (a time series in order), labels far from balanced
UNREPRESENTATIVE = 0.7


@dataclass(frozen=True)
class ChanceTail:
    family: str  # of the loss function
    calls: int  # its training calls
    tail: int  # the calls averaged: the last quarter
    value: float  # mean loss over them
    chance: float  # mean chance level over them
    floor: float = 0.0  # the least loss any prediction gets (soft targets' entropy), mean
    whole_run: bool = False  # the chance level is the whole run's, not the batches' (ln C's)

    @property
    def to_chance(self) -> float:
        """How far the loss sits from its floor, against how far a constant prediction's
        does: 0 at the floor, 1 at chance."""
        return (self.value - self.floor) / (self.chance - self.floor)


@dataclass(frozen=True)
class Move:
    step: int
    change: float  # L2 norm of what the optimizer step changed
    weight_norm: float  # before the step
    frozen: bool = False  # the parameter did not require grad at that step


class Evidence:
    """An :class:`Observations` with the facts that rules share."""

    def __init__(self, observed: Observations) -> None:
        self.observed = observed
        self.t: GradientThresholds = observed.thresholds
        self.params = observed.params
        self._shared: dict[Callable[..., Any], Any] = {}

    def shared(self, compute: Callable[[Evidence], T]) -> T:
        """``compute(self)``, computed once: a fact that a family of rules shares."""
        if compute not in self._shared:
            self._shared[compute] = compute(self)
        result: T = self._shared[compute]
        return result

    def finding(
        self,
        kind: str,
        severity: str,
        where: str,
        when: Clock | int | None,
        value: float | None,
        threshold: float | None,
        message: str,
    ) -> Finding:
        step = self.observed.step_of(when) if isinstance(when, Clock) else when
        return Finding(kind, severity, where, step, value, threshold, message)

    # per-parameter history ----------------------------------------------------------------------

    @cached_property
    def history(self) -> dict[int, ParameterHistory]:
        o = self.observed
        steps: dict[int, list[int]] = {e.index: [] for e in o.params}
        l1: dict[int, list[float]] = {e.index: [] for e in o.params}
        l2: dict[int, list[float]] = {e.index: [] for e in o.params}
        linf: dict[int, list[float]] = {e.index: [] for e in o.params}
        ratios: dict[int, list[float | None]] = {e.index: [] for e in o.params}
        for row in o.rows:
            if not row.measured:  # only max |grad|: it serves the non-finite rules
                continue
            ratio: dict[int, float] = {}
            for i, w, change in zip(
                row.weight_index, row.weight_norm, row.weight_change, strict=True
            ):
                ratio[i] = change / w if w > 0 else (math.inf if change > 0 else 0.0)
            step = o.step_of(row.clock)
            for k, i in enumerate(row.grad_index):
                steps[i].append(step)
                l1[i].append(row.grad_l1[k])
                l2[i].append(row.grad_l2[k])
                linf[i].append(row.grad_max_abs[k])
                ratios[i].append(ratio.get(i))
        out = {}
        for e in o.params:
            numel = max(e.numel, 1)
            out[e.index] = ParameterHistory(
                name=e.name,
                shape=e.shape,
                numel=e.numel,
                trainable=e.trainable,
                steps=tuple(steps[e.index]),
                grad_norm=tuple(l2[e.index]),
                grad_mean_abs=tuple(v / numel for v in l1[e.index]),
                grad_max_abs=tuple(linf[e.index]),
                update_ratio=tuple(ratios[e.index]),
            )
        return out

    @cached_property
    def grad_steps(self) -> dict[int, tuple[int, int]]:
        """Parameter index -> (steps whose max |grad| was finite, steps where it was finite and
        non-zero), over every step it had a gradient: the histories hold the steps whose full
        statistics were taken (``_state.measured_step``), this every row, and the steps a
        long run's thinned rows dropped (``history.Folds``)."""
        o = self.observed
        finite = {e.index: 0 for e in o.params}
        nonzero = dict(finite)
        for row in o.rows:
            for i, top in zip(row.grad_index, row.grad_max_abs, strict=True):
                if math.isfinite(top):
                    finite[i] += 1
                    nonzero[i] += top != 0
        for i, (count, moving) in (o.dropped_grad_steps or {}).items():
            if i in finite:
                finite[i] += count
                nonzero[i] += moving
        return {i: (finite[i], nonzero[i]) for i in finite}

    @cached_property
    def rounding_zero(self) -> set[int]:
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
        for row in self.observed.rows:
            if not row.output_index or not row.measured:
                continue
            l1 = dict(zip(row.grad_index, row.grad_l1, strict=True))
            if not any(v > 0 for v in l1.values()):
                continue  # every gradient was cleared before the step: nothing to judge here
            for i, scale in zip(row.output_index, row.output_l1, strict=True):
                if i in l1 and scale > 0 and math.isfinite(scale) and math.isfinite(l1[i]):
                    ratios.setdefault(i, []).append(l1[i] / scale)
        zero = set()
        for e in self.params:
            values = sorted(ratios.get(e.index, ()))
            if values and e.floating:
                tolerance = min(ROUNDING_FACTOR * torch.finfo(e.dtype).eps, 1e-3)
                if values[len(values) // 2] <= tolerance:
                    zero.add(e.index)
        return zero

    # who got gradients -----------------------------------------------------------------------

    @property
    def saw_backward(self) -> bool:
        return max(self.observed.backwards, self.observed.backward_calls) > 0

    @cached_property
    def without_gradient(self) -> list[ParamView]:
        """Trainable parameters that no backward pass reached."""
        return [
            e
            for e in self.params
            if e.trainable and not (e.received > 0 or self.history[e.index].steps)
        ]

    @cached_property
    def _gradient_split(
        self,
    ) -> tuple[
        list[tuple[ParamView, ParameterHistory, int]], list[tuple[ParamView, ParameterHistory]]
    ]:
        zero: list[tuple[ParamView, ParameterHistory, int]] = []
        judged: list[tuple[ParamView, ParameterHistory]] = []
        for e in self.params:
            h = self.history[e.index]
            if not e.trainable or not (e.received > 0 or h.steps):
                continue
            # max |grad| is exact (the L2 norm of fp32 values under ~1e-19 underflows to 0),
            # and taken at every step, on the stride or off it
            finite, nonzero = self.grad_steps[e.index]
            if finite and not nonzero:
                if e.cancelled_by is None and e.index not in self.rounding_zero:
                    zero.append((e, h, finite))
                continue
            judged.append((e, h))
        return zero, judged

    @property
    def zero_gradient(self) -> list[tuple[ParamView, ParameterHistory, int]]:
        """Trainable parameters whose gradient was exactly zero in every observed step (not
        explained by a normalisation or rounding), with the number of steps observed."""
        return self._gradient_split[0]

    @property
    def with_gradient(self) -> list[tuple[ParamView, ParameterHistory]]:
        """Trainable parameters that got non-zero gradients."""
        return self._gradient_split[1]

    @cached_property
    def target_scale(self) -> float:
        """How large a healthy gradient is in the loss's own units: 1, or for ``mse_loss``
        the targets' standard deviation (the square root of its chance level) when that is
        above 1. A squared error's gradient is 2 (prediction - target): a regression on
        targets in their own units (prices, counts, 25 to 346) has gradients in the
        thousands from its first step, and trains well."""
        variances = sorted(
            c.chance
            for c in self.observed.loss_calls
            if c.name == "mse_loss" and c.chance is not None and math.isfinite(c.chance)
        )
        if not variances:
            return 1.0
        return max(1.0, math.sqrt(variances[len(variances) // 2]))

    @property
    def exploding_threshold(self) -> float:
        return self.t.exploding_norm * self.target_scale

    @cached_property
    def exploding(self) -> dict[int, list[tuple[int, float]]]:
        """Parameter index -> the (step, L2 norm) above the threshold, for those that have any."""
        out = {}
        threshold = self.exploding_threshold
        for e, h in self.with_gradient:
            big = [
                (step, norm)
                for step, norm, top in zip(h.steps, h.grad_norm, h.grad_max_abs, strict=True)
                if norm > threshold and math.isfinite(top)  # L2 may overflow to inf
            ]
            if big:
                out[e.index] = big
        return out

    @cached_property
    def fully_dead_sites(self) -> list[ReluView]:
        """ReLU sites observed enough where no unit ever fired."""
        return [
            s
            for s in self.observed.relu_sites
            if s.observations >= self.t.dead_min_observations and s.fired_units == 0
        ]

    # optimizer steps -------------------------------------------------------------------------

    @cached_property
    def moves(self) -> dict[int, list[Move]]:
        """Parameter index -> how far each optimizer step moved it."""
        out: dict[int, list[Move]] = {}
        for row in self.observed.rows:
            step = self.observed.step_of(row.clock)
            for i, w, change in zip(
                row.weight_index, row.weight_norm, row.weight_change, strict=True
            ):
                out.setdefault(i, []).append(Move(step, change, w, i in row.frozen))
        return out

    @cached_property
    def step_update_ratios(self) -> list[float]:
        """Per optimizer step, the median over trainable weights of ||change|| / ||weight||."""
        out = []
        for row in self.observed.rows:
            ratios = sorted(
                change / w
                for i, w, change in zip(
                    row.weight_index, row.weight_norm, row.weight_change, strict=True
                )
                if w > 0
                and math.isfinite(change)
                and self.params[i].trainable
                and len(self.params[i].shape) >= 2
                and i not in row.frozen
            )
            if ratios:
                out.append(ratios[len(ratios) // 2])
        return out

    @cached_property
    def tiny_update_fraction(self) -> float:
        """The fraction of optimizer steps whose median update ratio is below the threshold
        (0 when there are too few steps to say)."""
        ratios = self.step_update_ratios
        if len(ratios) < MIN_STEPS_FOR_UPDATES:
            return 0.0
        return sum(r < self.t.tiny_update_ratio for r in ratios) / len(ratios)

    @cached_property
    def loss_improvement(self) -> float | None:
        """How far the loss handed to backward() fell: 1 - mean(last quarter) / mean(first
        tenth); None with too few steps, or losses that are not all positive and finite."""
        values = [v for _, v in self.observed.losses]
        if len(values) < MIN_STEPS_FOR_UPDATES or not all(
            math.isfinite(v) and v > 0 for v in values
        ):
            return None
        head = values[: max(len(values) // 10, 1)]
        tail = values[-max(len(values) // 4, 1) :]
        return 1 - (sum(tail) / len(tail)) / (sum(head) / len(head))

    @cached_property
    def chance_tails(self) -> dict[str, ChanceTail]:
        """Per loss function that has a chance level (above 0.05: not a GAN's one-label
        batches), its mean value and mean chance level over the last quarter of its calls."""
        by_name: dict[str, list[LossView]] = {}
        for c in self.observed.loss_calls:
            if c.value is not None and c.chance is not None and c.chance - (c.floor or 0) > 0.05:
                by_name.setdefault(c.name, []).append(c)
        out = {}
        for name, calls in by_name.items():
            tail = calls[-max(len(calls) // 4, 1) :]
            value = sum(c.value for c in tail if c.value is not None) / len(tail)
            chance = sum(c.chance for c in tail if c.chance is not None) / len(tail)
            floor = sum(c.floor or 0.0 for c in tail) / len(tail)
            population = (self.observed.population_chance or {}).get(name)
            if (
                population is not None
                and population > 0.05
                and floor == 0.0
                and (
                    population < UNREPRESENTATIVE * chance
                    if calls[0].family == "classification"
                    else chance < UNREPRESENTATIVE * population
                )
            ):
                # the best constant of the whole run where one batch's is far from it: a time
                # series batched in order has a fraction of its variance within a batch;
                # imbalanced labels' entropy is well below ln C
                out[name] = ChanceTail(
                    calls[0].family, len(calls), len(tail), value, population, floor, True
                )
                continue
            out[name] = ChanceTail(calls[0].family, len(calls), len(tail), value, chance, floor)
        if self.observed.forward_sampled and len(out) == 1:
            name, seen = next(iter(out.items()))
            proxy = self._tail_from_backward(seen.family, by_name[name])
            if proxy is not None and proxy.calls > seen.calls:
                out[name] = proxy
        return out

    def _tail_from_backward(self, family: str, calls: list[LossView]) -> ChanceTail | None:
        """A compiled model that calls its loss function inside its forward shows that call on
        eager samples only; the value handed to ``backward()`` is seen at every step. Where
        the samples show it to be that loss function's value (or its 1/N for N accumulated
        micro-batches), every backward value stands for one call, at the samples' mean
        chance level."""
        o = self.observed
        ratios = sorted(b / s for b, s in o.scaled if s > 0 and math.isfinite(b / s))
        if not ratios:
            return None
        expected = [1.0, 1.0 / o.accumulation_steps]
        if not all(any(abs(r / e - 1) < 0.02 for e in expected) for r in ratios):
            return None  # something besides the loss (a penalty, an auxiliary loss) is added
        scale = ratios[len(ratios) // 2]
        values = [v / scale for _, v in o.losses]
        if not values or not all(math.isfinite(v) for v in values):
            return None
        tail = values[-max(len(values) // 4, 1) :]
        chance = sum(c.chance for c in calls if c.chance is not None) / len(calls)
        floor = sum(c.floor or 0.0 for c in calls) / len(calls)
        return ChanceTail(family, len(values), len(tail), sum(tail) / len(tail), chance, floor)

    @property
    def loss_to_chance(self) -> float | None:
        """The training loss of the last quarter of the run over the loss of a constant
        prediction (the most used loss function that has one); None when none is known."""
        if not self.chance_tails:
            return None
        tail = max(self.chance_tails.values(), key=lambda t: t.calls)
        return tail.to_chance

    @cached_property
    def gradient_and_weight(self) -> dict[int, list[tuple[float, float]]]:
        """Trainable weight matrix index -> (||grad||, ||weight||) at each measured step that
        has both, finite (the gradient the step received, after any clipping)."""
        out = {}
        for e in self.params:
            if not e.trainable or len(e.shape) < 2:
                continue
            norms = {m.step: m.weight_norm for m in self.moves.get(e.index, [])}
            h = self.history[e.index]
            out[e.index] = [
                (g, norms[step])
                for step, g in zip(h.steps, h.grad_norm, strict=True)
                if step in norms and math.isfinite(g) and math.isfinite(norms[step])
            ]
        return out

    @cached_property
    def gradient_to_weight(self) -> float | None:
        """The median over trainable weight matrices of ||grad|| / ||weight|| in their median
        measured step; None when no matrix has both measured."""
        medians = []
        for pairs in self.gradient_and_weight.values():
            values = sorted(g / w for g, w in pairs if w > 0)
            if values:
                medians.append(values[len(values) // 2])
        return sorted(medians)[len(medians) // 2] if medians else None

    @property
    def every_gradient_zero(self) -> bool:
        """Optimizer steps ran and every trainable parameter with a gradient had an exactly
        zero one in all of them (what zero_grad() between backward() and step() leaves)."""
        with_gradient = [e for e in self.params if e.trainable and self.history[e.index].steps]
        return self.observed.stepped and len(self.zero_gradient) == len(with_gradient) > 0

    @property
    def cleared_before_steps(self) -> int:
        """Optimizer steps that found every gradient of the backward pass before them set to
        None (zero_grad() between backward() and step()), when that is most of them."""
        times = self.observed.total("cleared_before_step")
        return times if times and times >= 0.5 * max(self.observed.steps, 1) else 0

    @property
    def barely_learning(self) -> bool:
        """Most steps barely move the weights, the loss barely fell, and it is not low
        already (a converged or fine-tuned model takes small steps because its gradients
        are small: nothing is left to learn)."""
        improvement = self.loss_improvement
        to_chance = self.loss_to_chance
        return (
            self.tiny_update_fraction >= 0.5
            and improvement is not None
            and improvement < self.t.min_loss_improvement
            and (to_chance is None or to_chance >= CONVERGED_FRACTION)
        )

    @cached_property
    def group_lrs(self) -> dict[int, list[float | None]]:
        """Parameter group -> its learning rate at each of its steps (None: not a number)."""
        out: dict[int, list[float | None]] = {}
        for _, groups in self.observed.lr_trace:
            for group, (lr, _, _) in groups.items():
                out.setdefault(group, []).append(lr)
        return out

    @cached_property
    def moved_groups(self) -> dict[int, set[int]]:
        """Step -> the parameter groups in which some parameter moved."""
        out: dict[int, set[int]] = {}
        for i, moves in self.moves.items():
            group = self.params[i].group
            for move in moves:
                if move.change > 0 and group is not None:
                    out.setdefault(move.step, set()).add(group)
        return out

    def ran(self, module: str) -> bool:
        """The module (or one inside it) ran in a training forward."""
        called = self.observed.called
        prefix = module + "."
        return not module or module in called or any(n.startswith(prefix) for n in called)
