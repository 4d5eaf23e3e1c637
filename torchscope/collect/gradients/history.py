"""Bounded per-step series: what the monitor keeps of a long run, and the exact facts it keeps
about what it drops.

Every series the monitor appends to at each step (gradient rows, losses, learning rates,
loss-function calls, ...) holds at most :data:`HISTORY_STEPS` steps. Up to then it keeps
every step; past it, every 2nd, then every 4th, ... (a :class:`Thinning` doubles its spacing
each time the run outgrows it), so what a series holds is always evenly spaced over the whole
run and the fractions and medians the rules take over it are not biased towards any part of
the run. Each series always keeps its first entry, so a finding still names the step an event
was first seen.

The events a bug leaves at every step (a batch of one, a step without backward, a
broadcasting loss, ...) are not thinned but capped (:meth:`Thinning.events`): the first
:data:`HISTORY_STEPS` are kept, the rest only counted.

What a dropped entry carried that a sample cannot stand for is kept exactly by a
:class:`Folds`: the first non-finite value of each kind (a module output, a loss, a
gradient) and, per parameter, at how many steps its max |grad| was finite and at how many it
was non-zero. Dropped entries are read back from the device in batches of
:data:`FOLD_EVERY`: one copy per batch, never one per step.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch

from torchscope.collect.gradients._state import _Clock, _StepRow

__all__ = ["FOLD_EVERY", "HISTORY_STEPS", "Folds", "Series", "Thinning"]

T = TypeVar("T")

HISTORY_STEPS = 2048  # steps a series holds at most (evenly spaced past that)
FOLD_EVERY = 256  # dropped entries read back from the device at once


def _clock_of_first(entry: Any) -> _Clock:
    clock: _Clock = entry[0]
    return clock


class Thinning:
    """Which steps the series keep: every step until the run is :data:`HISTORY_STEPS` steps
    long, then every ``spacing``-th (a power of two), so that no series holds more."""

    __slots__ = ("cap", "events_by_name", "series", "spacing", "stepped")

    def __init__(self, cap: int | None = None) -> None:
        self.cap = HISTORY_STEPS if cap is None else cap
        self.spacing = 1
        self.stepped = False  # a step is an optimizer step (else a backward pass)
        self.series: list[Series[Any]] = []
        self.events_by_name: dict[str, Series[Any]] = {}  # see events()

    def step_of(self, clock: _Clock) -> int:
        """What the spacing counts: rounds of optimizer steps (``_Clock.round``), or backward
        passes before any optimizer stepped."""
        return clock.round if self.stepped else clock.backward

    def keeps(self, clock: _Clock) -> bool:
        return self.step_of(clock) % self.spacing == 0

    def new(
        self,
        clock_of: Callable[[Any], _Clock] = _clock_of_first,
        dropped: Callable[[Any], None] | None = None,
    ) -> Series[Any]:
        """A series whose entries' clocks ``clock_of`` reads; ``dropped`` gets what it drops."""
        series: Series[Any] = Series(self, clock_of, dropped)
        self.series.append(series)
        return series

    def events(self, name: str) -> Series[Any]:
        """A series of the events a bug leaves (none in a healthy run): the first
        :data:`HISTORY_STEPS` are kept and the rest counted (``total``), so a finding names
        the first ones and says how many there were in all. ``name`` is the
        ``Observations`` field it becomes, whose count ``Observations.total`` gives."""
        series: Series[Any] = Series(self, _clock_of_first, None, capped=True)
        self.events_by_name[name] = series
        return series

    def advance(self, steps: int) -> None:
        """``steps`` steps are complete: widen the spacing (and thin every series) when the
        run has outgrown it."""
        if steps <= self.cap * self.spacing:
            return
        while steps > self.cap * self.spacing:
            self.spacing *= 2
        for series in self.series:
            series.thin()


class Series(Generic[T]):
    """One per-step series, thinned by its :class:`Thinning`; reads like a list of what it
    kept. ``total`` counts every entry appended, kept or not."""

    __slots__ = ("_capped", "_clock_of", "_dropped", "_entries", "_thinning", "total")

    def __init__(
        self,
        thinning: Thinning,
        clock_of: Callable[[T], _Clock],
        dropped: Callable[[T], None] | None,
        *,
        capped: bool = False,
    ) -> None:
        self._thinning = thinning
        self._clock_of = clock_of
        self._dropped = dropped
        self._capped = capped  # keeps its first entries (Thinning.events), never thinned
        self._entries: list[T] = []
        self.total = 0

    def append(self, entry: T) -> None:
        self.total += 1
        t = self._thinning
        if self._capped:
            if len(self._entries) < t.cap:
                self._entries.append(entry)
            return
        if t.spacing != 1 and self.total != 1:  # (keeps(), inlined: called at every step)
            clock = self._clock_of(entry)
            if (clock.round if t.stepped else clock.backward) % t.spacing:
                if self._dropped is not None:
                    self._dropped(entry)
                return
        self._entries.append(entry)

    def thin(self) -> None:
        if self._capped:
            return
        keeps, clock_of = self._thinning.keeps, self._clock_of
        kept = self._entries[:1]  # the first entry of the run stays
        for entry in self._entries[1:]:
            if keeps(clock_of(entry)):
                kept.append(entry)
            elif self._dropped is not None:
                self._dropped(entry)
        self._entries = kept

    def retain(self, keep: Callable[[T], bool]) -> None:
        """Drop, for good and unfolded, the entries ``keep`` rejects."""
        self._entries = [e for e in self._entries if keep(e)]
        self.total = len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __getitem__(self, index: int) -> T:
        return self._entries[index]


def _order(clock: _Clock) -> tuple[int, int]:
    return (clock.backward, clock.step)


def _bad(value: float) -> bool:
    """NaN or +Inf in a module output (-Inf is a legitimate mask value)."""
    return value != value or value == math.inf


def _carried(values: list[float], changed: tuple[int, ...]) -> list[float]:
    """One forward's output maxima, where an output changed in place after its module
    returned (read at the end of the forward, once: the module is read when it returns from
    then on) counts as bad unless the next output of the forward is finite: then the
    in-place op wrote the NaN or Inf, and nothing carried it on (``masked_fill_(mask, inf)``
    before an ``amin``). The last output of a forward counts as it reads."""
    if not changed:
        return values
    values = list(values)
    for k in changed:
        if k + 1 < len(values) and _bad(values[k]) and not _bad(values[k + 1]):
            values[k] = 0.0
    return values


def _to_host(tensors: list[torch.Tensor], *, stack: bool) -> torch.Tensor:
    """Many small device tensors (stacked: of one shape; else 1-D, concatenated) as one
    float64 CPU tensor, in one copy."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    device = tensors[0].device
    if any(t.device != device for t in tensors):  # a model spread over devices
        tensors = [t.to(device) for t in tensors]
    joined = torch.stack(tensors) if stack else torch.cat(tensors)  # cat promotes dtypes
    return joined.detach().cpu().double()


class Folds:
    """Exact facts about the entries the series drop (see the module docstring)."""

    __slots__ = (
        "_forwards",
        "_losses",
        "_rows",
        "finite_steps",
        "first_forward",
        "first_loss",
        "first_row",
        "nonzero_steps",
    )

    def __init__(self) -> None:
        self._rows: list[_StepRow] = []
        # per forward: its clock, the modules whose outputs were read, in call order, the
        # max of each output (0-d tensors), and which of them were changed in place after
        # their module returned (read at the end of the forward)
        self._forwards: list[tuple[_Clock, list[str], list[torch.Tensor], tuple[int, ...]]] = []
        self._losses: list[tuple[_Clock, torch.Tensor]] = []
        # per parameter index, over the dropped rows: steps whose max |grad| was finite, and
        # finite and non-zero
        self.finite_steps: dict[int, int] = {}
        self.nonzero_steps: dict[int, int] = {}
        self.first_row: _StepRow | None = None  # the earliest dropped row with a non-finite max
        # the earliest forward with a NaN or +Inf module output sum, its sums read back
        self.first_forward: tuple[_Clock, tuple[str, ...], tuple[float, ...]] | None = None
        self.first_loss: tuple[_Clock, float] | None = None  # the earliest non-finite loss

    def row(self, row: _StepRow) -> None:
        self._rows.append(row)
        if len(self._rows) >= FOLD_EVERY:
            self._fold_rows()

    def forward(self, entry: tuple[_Clock, list[str], list[torch.Tensor], tuple[int, ...]]) -> None:
        self._forwards.append(entry)
        if len(self._forwards) >= FOLD_EVERY:
            self._fold_forwards()

    def loss(self, entry: tuple[_Clock, torch.Tensor]) -> None:
        self._losses.append(entry)
        if len(self._losses) >= FOLD_EVERY:
            self._fold_losses()

    def forget_rows(self) -> None:
        """The rows dropped so far were of another step unit (backward passes, before an
        optimizer first stepped): they no longer count."""
        self._rows = []
        self.finite_steps, self.nonzero_steps, self.first_row = {}, {}, None

    def flush(self) -> None:
        """Fold what is pending (the report reads the folds after this)."""
        self._fold_rows()
        self._fold_forwards()
        self._fold_losses()

    def _fold_rows(self) -> None:
        rows, self._rows = self._rows, []
        groups: dict[tuple[int, ...], list[_StepRow]] = {}
        for r in rows:  # rows of the same parameters: one matrix, read back in one copy
            if r.grad_index:
                groups.setdefault(r.grad_index, []).append(r)
        for index, members in groups.items():
            top = _to_host([r.grad_stats[-1] for r in members], stack=True)  # max |grad|
            finite = top.isfinite()
            counts = finite.sum(0).tolist()
            nonzero = (finite & (top != 0)).sum(0).tolist()
            for i, count, moving in zip(index, counts, nonzero, strict=True):
                self.finite_steps[i] = self.finite_steps.get(i, 0) + count
                self.nonzero_steps[i] = self.nonzero_steps.get(i, 0) + moving
            for k in (~finite).any(1).nonzero().flatten().tolist():
                r = members[k]  # dropped in batches that need not be in step order
                if self.first_row is None or _order(r.clock) < _order(self.first_row.clock):
                    self.first_row = r

    def _fold_forwards(self) -> None:
        forwards, self._forwards = self._forwards, []
        if not forwards:
            return
        checked = [v for _, _, maxima, _ in forwards for v in maxima]
        dtype = checked[0].dtype
        if any(v.dtype != dtype for v in checked):  # mixed precisions
            checked = [v.double() for v in checked]
        values = _to_host(checked, stack=True)
        bad = (values.isnan() | (values == torch.inf)).nonzero()
        if not len(bad):
            return  # the usual batch: every output finite
        ends = list(itertools.accumulate(len(paths) for _, paths, _, _ in forwards))
        k = bisect.bisect_right(ends, int(bad[0]))  # the forward holding the first bad value
        for (clock, paths, _, changed), end in zip(forwards[k:], ends[k:], strict=True):
            mine = _carried(values[end - len(paths) : end].tolist(), changed)
            if not any(_bad(v) for v in mine):
                continue  # forwards come in order: the first bad one is kept
            if self.first_forward is None or _order(clock) < _order(self.first_forward[0]):
                self.first_forward = (clock, tuple(paths), tuple(mine))
            break

    def _fold_losses(self) -> None:
        losses, self._losses = self._losses, []
        if not losses:
            return
        values = _to_host([v for _, v in losses], stack=True)
        for k in (~values.isfinite()).nonzero().flatten().tolist():
            # dropped when thinned or when appended: a batch need not be in step order
            clock = losses[k][0]
            if self.first_loss is None or _order(clock) < _order(self.first_loss[0]):
                self.first_loss = (clock, float(values[k]))
