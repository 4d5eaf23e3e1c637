"""Do the optimizer's steps move what should train, and leave alone what should not?"""

from __future__ import annotations

import math
from collections.abc import Iterator

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


@rule("frozen_but_updated")
def frozen_but_updated(ev: Evidence) -> Iterator[Finding]:
    if not ev.observed.stepped:
        return
    for e in ev.params:
        # only the steps taken while it was frozen: unfreezing later, or freezing half way
        # through a fine-tune, does not make the earlier steps wrong
        moved = [
            (m.step, m.change)
            for m in ev.moves.get(e.index, [])
            if m.change != 0 and (m.frozen or e.intended_frozen)
        ]
        if not moved:
            continue
        step, amount = moved[0]
        yield ev.finding(
            "frozen_but_updated", "error", e.name, step, amount, 0.0,
            f"{e.name} is frozen (requires_grad=False"
            f"{' or frozen=' if e.intended_frozen else ''}) yet optimizer.step() "
            f"changed it by {amount:.3g} (L2) in {len(moved)} measured step(s): it is still "
            "in the optimizer, and momentum, weight decay or a stale zero gradient "
            "moves it. Remove it from the optimizer, set its .grad to None, or "
            "freeze with torchscope.freeze(..., optimizer=opt)",
        )  # fmt: skip


def _zero_lr_fraction(ev: Evidence, group: int | None) -> float:
    steps = ev.group_lrs.get(group, []) if group is not None else []
    return sum(lr == 0 for lr in steps) / len(steps) if steps else 0.0


@rule("not_updated")
def not_updated(ev: Evidence) -> Iterator[Finding]:
    if not ev.observed.stepped:
        return
    for e in ev.params:
        if not e.trainable:
            continue
        h = ev.history[e.index]
        if not ev.grad_steps[e.index][1]:
            continue  # no gradient: no_grad or zero_grad says why
        if not e.held:
            yield ev.finding(
                "not_updated", "error", e.name, None, None, None,
                f"{e.name} receives gradients but no optimizer holds it, so step() never "
                "changes it: was the optimizer created before this layer was added or "
                "replaced? Build the optimizer after the model is final, or add it with "
                "optimizer.add_param_group",
            )  # fmt: skip
            continue
        if e.zero_lr_at is not None and _zero_lr_fraction(ev, e.group) >= 0.5:
            yield ev.finding(
                "not_updated", "warning", e.name, e.zero_lr_at, 0.0, None,
                f"{e.name} is in a parameter group whose learning rate was 0 in "
                f"{_zero_lr_fraction(ev, e.group):.0%} of its steps: step() leaves it "
                "unchanged. Check the scheduler (a warm-up from 0 that is never stepped stays "
                "at 0; a few leading steps at 0 are fine) and the group's lr",
            )  # fmt: skip
            continue
        norms = dict(zip(h.steps, h.grad_norm, strict=True))
        # a step counts when the gradient is large enough for its update not to round away
        # and the rest of its parameter group moved (else the lr is just tiny)
        rate = e.lr if e.lr is not None else 1.0
        root_n = math.sqrt(max(e.numel, 1))
        significant = [
            (m.step, m.change)
            for m in ev.moves.get(e.index, [])
            if math.isfinite(norms.get(m.step, math.nan))
            # SGD moves lr*||g||, Adam about lr*sqrt(n): take the smaller as the expectation
            and rate * min(norms[m.step], root_n) > ev.t.not_updated_min_change * m.weight_norm
            and e.group in ev.moved_groups.get(m.step, ())
        ]
        # a sample that stayed put (max_copy_bytes) may have missed the elements that moved
        if significant and all(c == 0 for _, c in significant) and not e.sampled:
            yield ev.finding(
                "not_updated", "warning", e.name, significant[0][0], 0.0, None,
                f"{e.name} had a non-zero gradient in {len(significant)} step(s) but "
                "step() never changed it: is its .grad replaced or cleared between "
                "backward() and step(), or its value restored after the step?",
            )  # fmt: skip
