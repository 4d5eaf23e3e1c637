"""Habits of the training loop: when gradients are cleared against when the optimizer steps."""

from __future__ import annotations

from collections.abc import Iterator

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


@rule("grad_accumulation")
def grad_accumulation(ev: Evidence) -> Iterator[Finding]:
    o = ev.observed
    n = o.accumulation_steps
    # a parameter no optimizer holds is never cleared by zero_grad: not_updated names it
    stale = [(c, i) for c, i, leftover in o.stale if ev.params[i].held and leftover != 0]
    if stale:
        clock, index = stale[0]
        count = len({i for _, i in stale})
        steps = len({c.step for c, _ in stale})
        # a long run keeps the first events only (history.Thinning.events): a floor
        floor = "at least " if o.total("stale") > len(o.stale) else ""
        yield ev.finding(
            "grad_accumulation", "error", ev.params[index].name, clock, float(steps), None,
            f"gradients were not cleared after an optimizer step ({floor}{count} "
            f"parameter(s), {floor}{steps} step(s)): each step adds to the previous steps' "
            "gradients. Call "
            "optimizer.zero_grad() once per step"
            + (f", every {n} backward passes" if n > 1 else ""),
        )  # fmt: skip
    if n <= 1:
        return
    if o.cleared_in_window:
        clock, index = o.cleared_in_window[0]
        yield ev.finding(
            "grad_accumulation", "error", ev.params[index].name, clock, None, None,
            f"gradients were cleared between the backward passes of one accumulation "
            f"window (accumulation_steps={n}): only the last "
            "micro-batch reaches the optimizer. Call zero_grad() only after step()",
        )  # fmt: skip
    short = [(c, k) for c, k in o.windows if k < n]
    if len(short) > 1 and len(short) == len(o.windows):
        clock, k = short[0]
        yield ev.finding(
            "grad_accumulation", "warning", "optimizer", clock, float(k), float(n),
            f"the optimizer stepped after {k} backward pass(es) although "
            f"accumulation_steps={n}: step() should run once "
            "every accumulation_steps micro-batches",
        )  # fmt: skip


@rule("step_without_backward")
def step_without_backward(ev: Evidence) -> Iterator[Finding]:
    seen = ev.observed.steps_without_backward
    if not seen:
        return
    clock, optimizer = seen[0]
    times = ev.observed.total("steps_without_backward")
    yield ev.finding(
        "step_without_backward", "error", "optimizer", clock, float(times), None,
        f"{optimizer}.step() ran {times} time(s) with no backward pass since its "
        "previous step: it applies the same gradients again (and advances momentum, Adam's "
        "moments and weight decay) as if the batch were seen twice. Call step() once per "
        "backward pass (once per accumulation window); look for a helper that steps too",
    )  # fmt: skip
