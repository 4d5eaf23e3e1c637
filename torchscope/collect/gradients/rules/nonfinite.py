"""Non-finite values: name the first one of the run, in the order it was computed (forward,
loss, gradients of one pass); whatever turns non-finite after it is its consequence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.observations import Clock, StepView
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


@dataclass(frozen=True)
class _First:
    what: str  # "activation", "loss" or "gradient"
    then: str  # what went non-finite after it, as a sentence tail
    clock: Clock
    where: str = ""
    value: float = math.nan
    before: str | None = None  # the module that finished just before a non-finite activation
    row: StepView | None = None


def _first(evidence: Evidence) -> _First | None:
    o = evidence.observed
    events: list[tuple[tuple[int, int], _First]] = []
    # a long run's series are thinned: the earliest of what they dropped is kept apart
    losses = [*o.losses, *([o.dropped_nonfinite_loss] if o.dropped_nonfinite_loss else [])]
    bad_losses = [(clock, value) for clock, value in losses if not math.isfinite(value)]
    if bad_losses:
        clock, value = min(bad_losses, key=lambda loss: loss[0].backward)
        events.append(((clock.backward, 1), _First("loss", "", clock, "loss", value)))
    rows = [*o.rows, *([o.dropped_nonfinite_row] if o.dropped_nonfinite_row else [])]
    bad_rows = [
        (row.clock.backward - 1 if row.from_step else row.clock.backward, row)
        for row in rows
        if not all(math.isfinite(v) for v in row.grad_max_abs)  # exact, unlike L2
    ]
    if bad_rows:
        backward_pass, row = min(bad_rows, key=lambda bad: bad[0])
        events.append(((backward_pass, 2), _First("gradient", "", row.clock, row=row)))
    # -inf is a legitimate mask value; so is +inf where neither the loss nor any gradient
    # ever goes non-finite (a distance masked "infinitely far", then negated into logits:
    # masked_fill passes no gradient to what it masks). An overflow to +inf poisons them.
    poisoned = bool(events)
    for clock, paths, values in o.forwards:
        bad = [k for k, v in enumerate(values) if math.isnan(v) or (poisoned and v == math.inf)]
        if bad:
            k = bad[0]
            before = paths[k - 1] if k > 0 else None
            events.append(
                ((clock.backward, 0), _First("activation", "", clock, paths[k], values[k], before))
            )
            break
    if not events:
        return None
    _, first = min(events, key=lambda event: event[0])
    later = [e.what for _, e in events if e.what != first.what]
    then = f"; the {' and '.join(later)} went non-finite after it" if later else ""
    return _First(first.what, then, first.clock, first.where, first.value, first.before, first.row)


def _kind_of(value: float) -> str:
    return "NaN" if math.isnan(value) else "Inf"


@rule("nonfinite_activation")
def nonfinite_activation(ev: Evidence) -> Iterator[Finding]:
    first = ev.shared(_first)
    if first is None or first.what != "activation":
        return
    path, value, before = first.where, first.value, first.before
    where = (
        f"; the module that finished just before it ({before}) was finite, so the "
        f"values arose inside {path or 'the model'} or in code between the two"
        if before is not None
        else ""
    )
    yield ev.finding(
        "nonfinite_activation", "error", path or "<model>", first.clock, value, None,
        f"the output of {path or 'the model'} contains {_kind_of(value)}, the first "
        f"non-finite value of the run{where}{first.then}. Look for log/sqrt/division of "
        "values that can reach 0 or below, exp overflow, or weights blown up by a "
        "too-high learning rate",
    )  # fmt: skip


@rule("nonfinite_loss")
def nonfinite_loss(ev: Evidence) -> Iterator[Finding]:
    first = ev.shared(_first)
    if first is None or first.what != "loss":
        return
    yield ev.finding(
        "nonfinite_loss", "error", "loss", first.clock, first.value, None,
        f"the loss is {_kind_of(first.value)} while every module output was finite"
        f"{first.then}: the loss computation itself overflows or divides by zero (log(0), "
        "0/0, the mean of an empty batch); clamp its inputs or use the fused, stable form "
        "(cross_entropy on logits, BCEWithLogitsLoss)",
    )  # fmt: skip


def _nonfinite_gradients(ev: Evidence, nan: bool) -> Iterator[Finding]:
    first = ev.shared(_first)
    if first is None or first.what != "gradient" or first.row is None:
        return
    row = first.row
    for i, norm in zip(row.grad_index, row.grad_max_abs, strict=True):
        if math.isfinite(norm) or math.isnan(norm) != nan:
            continue
        name = ev.params[i].name
        kind = "nan_grad" if nan else "inf_grad"
        yield ev.finding(
            kind, "error", name, row.clock, norm, None,
            f"the gradient of {name} contains {'NaN' if nan else 'Inf'} "
            f"while the forward and the loss were finite{first.then}: an op with an "
            "unbounded derivative at the value it saw (sqrt or norm at 0, pow with a "
            "fractional exponent at 0, acos/asin at +-1, a division by a value near 0)",
        )  # fmt: skip


@rule("nan_grad")
def nan_grad(ev: Evidence) -> Iterator[Finding]:
    return _nonfinite_gradients(ev, nan=True)


@rule("inf_grad")
def inf_grad(ev: Evidence) -> Iterator[Finding]:
    return _nonfinite_gradients(ev, nan=False)
