"""GradientMonitor's bounded history (``history.py``): a long run keeps evenly spaced steps of
every per-step series, and exactly what a sample cannot stand for (the first non-finite value
of each kind, whether a parameter's gradient was ever non-zero).

The constants are lowered here (a series keeps 16 steps, dropped entries are read back 8 at a
time) so that thinning shows in a few hundred steps of a small model.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchscope
import torchscope.collect.gradients.history as history
from torchscope.collect.gradients._state import _Clock, _StepRow
from torchscope.collect.gradients.history import Folds, Series, Thinning

from .bugs import CLASSES, MLP

CAP, FOLD = 16, 8


@pytest.fixture
def short_history(monkeypatch):
    monkeypatch.setattr(history, "HISTORY_STEPS", CAP)
    monkeypatch.setattr(history, "FOLD_EVERY", FOLD)


# -- the series themselves ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 700), st.integers(1, 3))
def test_a_series_keeps_evenly_spaced_steps_and_the_first(cap, steps, per_step):
    thinning = Thinning(cap)
    dropped: list[int] = []
    series = thinning.new(clock_of=lambda e: _Clock(e[0], e[0]), dropped=dropped.append)
    appended = 0
    for step in range(steps):
        for k in range(per_step):
            series.append((step, k))
            appended += 1
        thinning.advance(step + 1)
    kept = [step for step, _ in series]
    assert series.total == appended
    assert len(series) + len(dropped) == appended  # each entry kept or handed on, once
    assert len(kept) <= (cap + 1) * per_step + 1  # bounded whatever the run's length
    if steps:
        assert kept[0] == 0  # the first entry stays
        spacing = thinning.spacing
        assert steps <= cap * spacing  # the spacing is no wider than the bound needs
        # every multiple of the spacing is there, all of its entries, and nothing else (but
        # the first): evenly spaced over the whole run
        expected = [s for s in range(steps) if s % spacing == 0 for _ in range(per_step)]
        assert kept == expected or (kept[1:] == expected[1:] and kept[0] == 0)


def test_retain_drops_for_good():
    thinning = Thinning(4)
    series: Series[tuple[_Clock, int]] = thinning.new()
    for k in range(6):
        series.append((_Clock(0, k), k))
    series.retain(lambda e: e[1] % 2 == 0)
    assert [e[1] for e in series] == [0, 2, 4]
    assert series.total == 3


def _row(step: int, index: tuple[int, ...], top: list[float]) -> _StepRow:
    stats = torch.tensor([[0.0] * len(top), [0.0] * len(top), top])
    return _StepRow(_Clock(step, step + 1), True, index, stats, (), None)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([0.0, 1.5, math.nan, math.inf]), min_size=3, max_size=3),
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
def test_folds_count_exactly_in_any_order(tops, rng):
    """Rows reach the folds out of step order (thinning drops older rows after newer ones):
    the counts and the earliest non-finite row do not depend on that order."""
    rows = [_row(step, (0, 2, 5), top) for step, top in enumerate(tops)]
    shuffled = rows[:]
    rng.shuffle(shuffled)
    folds = Folds()
    for row in shuffled:
        folds.row(row)
    folds.flush()
    for k, i in enumerate((0, 2, 5)):
        finite = [t[k] for t in tops if math.isfinite(t[k])]
        assert folds.finite_steps.get(i, 0) == len(finite)
        assert folds.nonzero_steps.get(i, 0) == sum(v != 0 for v in finite)
    bad = [s for s, t in enumerate(tops) if not all(math.isfinite(v) for v in t)]
    assert (folds.first_row.clock.step if folds.first_row else None) == (bad[0] if bad else None)


# -- the monitor over a long run ------------------------------------------------------------------


class Gated(nn.Module):
    """An MLP with a side branch that only odd steps use: its gradient is exactly zero at
    every even step, so at every step a thinned history keeps (a power-of-two spacing)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MLP()
        self.side = nn.Linear(10, CLASSES)
        self.odd = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.side(x) * float(self.odd)


def _run(model, steps, *, before=None, loss_extra=None, accumulate=1):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    with torchscope.GradientMonitor(model, optimizer=opt, accumulation_steps=accumulate) as mon:
        for step in range(steps):
            if before is not None:
                before(step, model)
            opt.zero_grad()
            for _ in range(accumulate):
                loss = F.cross_entropy(model(x), y)
                if loss_extra is not None:
                    loss = loss + loss_extra(step)
                (loss / accumulate).backward()
            opt.step()
    return mon


def _series(monitor) -> dict[str, Series]:
    found = {k: v for k, v in vars(monitor).items() if isinstance(v, Series)}
    found.update(
        {f"signals.{k}": v for k, v in vars(monitor._signals).items() if isinstance(v, Series)}
    )
    return found


@pytest.mark.parametrize("accumulate", [1, 3])
def test_every_series_stays_bounded(short_history, accumulate):
    steps = 300
    monitor = _run(MLP(), steps, accumulate=accumulate)
    series = _series(monitor)
    assert {"_rows", "_losses", "_lr_trace", "_windows", "signals.losses"} <= set(series)
    for name, s in series.items():
        assert len(s) <= (CAP + 1) * accumulate + 1, name
    report = monitor.report()
    assert report.steps == steps
    assert len(report.losses) == len(report.loss_steps) <= (CAP + 1) * accumulate + 1
    spacing = monitor._thinning.spacing
    assert spacing > 1 and steps <= CAP * spacing
    assert sorted(set(report.loss_steps)) == list(range(0, steps, spacing))
    assert not report.findings


def test_a_short_run_keeps_every_step():
    steps = 40
    report = _run(MLP(), steps).report()
    assert report.loss_steps == tuple(range(steps))
    assert not report.findings


@pytest.mark.parametrize("step", [101, 203, 277])  # dropped from a 16-step history
def test_a_nan_weight_at_a_dropped_step_is_named_at_its_step(short_history, step):
    def poison(at, model):
        if at == step:
            with torch.no_grad():
                model.fc2.weight[0, 0] = float("nan")

    report = _run(MLP(), 300, before=poison).report()
    errors = [(f.kind, f.where, f.step) for f in report.findings if f.severity == "error"]
    assert errors[0] == ("nonfinite_activation", "fc2", step)


@pytest.mark.parametrize("step", [133, 251])
def test_a_nan_loss_at_a_dropped_step_is_named_at_its_step(short_history, step):
    # a NaN added to the loss alone: module outputs and gradients stay finite
    def extra(at):
        return torch.tensor(-1.0).log() if at == step else 0.0

    report = _run(MLP(), 300, loss_extra=extra).report()
    errors = [(f.kind, f.step) for f in report.findings if f.severity == "error"]
    assert errors == [("nonfinite_loss", step)]


@pytest.mark.parametrize("step", [157, 289])
def test_a_nan_gradient_at_a_dropped_step_is_named_at_its_step(short_history, step):
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = MLP()
            self.scale = nn.Parameter(torch.ones(()))
            self.at_zero = False

        def forward(self, x):
            # sqrt at 0: a finite forward, an infinite derivative times 0 = NaN
            s = torch.sqrt(self.scale * 0.0) if self.at_zero else self.scale
            return self.body(x) * s

    def poison(at, model):
        model.at_zero = at == step

    report = _run(Root(), 300, before=poison).report()
    errors = [(f.kind, f.where, f.step) for f in report.findings if f.severity == "error"]
    assert errors and errors[0] == ("nan_grad", "scale", step)


def test_a_gradient_only_dropped_steps_see_is_not_called_zero(short_history):
    """The look-alike of zero_grad: a branch used on odd steps only. Every step a thinned
    history keeps is even, where its gradient is exactly zero; the folds saw the others."""

    def gate(at, model):
        model.odd = at % 2 == 1

    monitor = _run(Gated(), 300, before=gate)
    assert monitor._thinning.spacing > 1
    kept = [r for r in monitor._rows if r.clock.step > 0]
    assert kept and all(r.clock.step % 2 == 0 for r in kept)
    report = monitor.report()
    assert "zero_grad" not in report.kinds, report


def test_a_branch_never_used_is_still_zero_over_a_long_run(short_history):
    """Its twin: the side branch multiplied by zero at every step has a zero gradient at
    every step, dropped ones included, and is named, with the count of all its steps."""

    class Dead(Gated):
        def forward(self, x):
            return self.body(x) + 0.0 * self.side(x)

    report = _run(Dead(), 300).report()
    zero = [f for f in report.findings if f.kind == "zero_grad"]
    assert {f.where for f in zero} == {"side.weight", "side.bias"}
    assert all("in all 300 " in f.message for f in zero), zero


def test_eval_mode_counts_every_step_of_a_long_run(short_history):
    model = nn.Sequential(nn.Linear(10, 16), nn.Dropout(0.5), nn.Linear(16, CLASSES))
    model.eval()
    report = _run(model, 300).report()
    found = [f for f in report.findings if f.kind == "eval_mode"]
    assert found and found[0].value == 300 and found[0].step == 0


def test_two_optimizers_in_turn_are_both_kept(short_history):
    """A GAN's two optimizers step in turn, so one takes the even steps and the other the odd
    ones: the spacing counts rounds (the most steps of any one optimizer), not steps."""
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    disc = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    model = nn.ModuleDict({"G": gen, "D": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=0.0)  # a generator that never moves
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    real = torch.randn(32, 4)
    with torchscope.GradientMonitor(model) as monitor:
        for _ in range(150):
            opt_d.zero_grad()
            fake = gen(torch.randn(32, 4)).detach()
            d_loss = F.softplus(-disc(real)).mean() + F.softplus(disc(fake)).mean()
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            F.softplus(-disc(gen(torch.randn(32, 4)))).mean().backward()
            opt_g.step()
    assert monitor._thinning.spacing > 1
    report = monitor.report()
    kept = {name: report.history[name].steps for name in ("G.0.weight", "D.0.weight")}
    assert all(len(steps) > 4 for steps in kept.values()), kept
    assert abs(len(kept["G.0.weight"]) - len(kept["D.0.weight"])) <= 1, kept
    assert {s % 2 for s in report.loss_steps} == {0, 1}  # both optimizers' losses
    not_updated = {f.where for f in report.findings if f.kind == "not_updated"}
    assert {"G.0.weight", "G.2.weight"} <= not_updated and not any(
        w.startswith("D.") for w in not_updated
    )


def test_events_of_a_bug_are_counted_in_full(short_history):
    """A bug's events are capped, not thinned: the first ones are kept, all are counted."""
    model = nn.Sequential(nn.Linear(10, 16), nn.Linear(16, CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(100):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.step()  # a second step with no backward pass in between
    assert len(monitor._steps_without_backward) == CAP
    found = [f for f in monitor.report().findings if f.kind == "step_without_backward"]
    assert found and found[0].value == 100 and "ran 100 time(s)" in found[0].message
    assert found[0].step == 1


@pytest.mark.parametrize("steps", [4, 100])
def test_gradients_never_cleared_are_counted_as_far_as_kept(short_history, steps):
    """Stale gradients leave an event per parameter and step: a run past the cap says how
    many it kept as a floor, a short one exactly."""
    model = nn.Sequential(nn.Linear(10, 16), nn.Linear(16, CLASSES))  # 4 parameters
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()  # no zero_grad()
            opt.step()
    (found,) = [f for f in monitor.report().findings if f.kind == "grad_accumulation"]
    if steps == 4:  # every step after the first, 4 events each: within the cap
        assert "(4 parameter(s), 3 step(s))" in found.message
    else:  # the cap's 16 events are the first 4 stale steps'
        assert "(at least 4 parameter(s), at least 4 step(s))" in found.message


def test_the_first_optimizer_step_starts_the_spacing_afresh(short_history):
    """Backward passes with no optimizer count as steps until one steps: from then on an
    optimizer step is a step, and a run of 40 of them keeps all 40."""
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    with torchscope.GradientMonitor(model) as monitor:
        for _ in range(100):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        assert monitor._thinning.spacing > 1
        for _ in range(CAP):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    report = monitor.report()
    assert report.step_unit == "optimizer step" and report.steps == CAP
    assert report.history["fc1.weight"].steps == tuple(range(CAP))


def test_every_event_series_is_named_after_its_observations_field():
    import dataclasses

    from torchscope.collect.gradients.observations import Observations

    monitor = torchscope.GradientMonitor(MLP())
    names = set(monitor._thinning.events_by_name)
    assert len(names) == 11
    assert names <= {f.name for f in dataclasses.fields(Observations)}
