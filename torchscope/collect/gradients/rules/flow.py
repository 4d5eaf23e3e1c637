"""Does the gradient reach each trainable parameter, and at a useful size?"""

from __future__ import annotations

import math
from collections.abc import Iterator

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


@rule("no_grad")
def no_grad(ev: Evidence) -> Iterator[Finding]:
    if not ev.saw_backward:
        return
    for e in ev.without_gradient:
        if not ev.ran(e.module):
            cause = (
                f"its module {e.module} never ran in a training forward (unused layer, or a "
                "branch the forward never takes)"
            )
        else:
            cause = (
                "its output does not reach the loss: a .detach(), .data, .item(), "
                "torch.no_grad() or a new tensor built from its values in the forward"
            )
        yield ev.finding(
            "no_grad", "error", e.name, None, None, None,
            f"{e.name} requires grad but never received a gradient: {cause}. If it is meant "
            "to stay fixed, freeze it (torchscope.freeze) or pass it in frozen=",
        )  # fmt: skip


@rule("exploding")
def exploding(ev: Evidence) -> Iterator[Finding]:
    t = ev.t
    for e, h in ev.with_gradient:
        big = ev.exploding.get(e.index)
        if not big:
            continue
        value = max(v for _, v in big)
        threshold = ev.exploding_threshold
        scaled = (
            f" = {t.exploding_norm:g} x the targets' std {ev.target_scale:.3g}"
            if ev.target_scale > 1
            else ""
        )
        yield ev.finding(
            "exploding", "warning", e.name, big[0][0], value, threshold,
            f"the gradient norm of {e.name} reached {value:.3g} (threshold "
            f"{threshold:.3g}{scaled}) in {len(big)} of {len(h.steps)} steps: lower the "
            "learning rate, clip gradients (clip_grad_norm_), normalise inputs, or check "
            "the initialisation and the loss reduction (sum vs mean)",
        )  # fmt: skip


@rule("vanishing")
def vanishing(ev: Evidence) -> Iterator[Finding]:
    """Mean |grad| against the largest mean |grad| of a parameter in the same step (one that
    is not itself exploding: next to an exploding layer everything looks small)."""
    if ev.fully_dead_sites:  # every unit of a layer is dead: dead_activation says why
        return
    largest: dict[int, float] = {}
    for e, h in ev.with_gradient:
        if e.index in ev.exploding:
            continue
        for step, mean in zip(h.steps, h.grad_mean_abs, strict=True):
            if math.isfinite(mean) and mean > largest.get(step, 0.0):
                largest[step] = mean
    threshold = ev.t.vanishing_ratio
    for e, h in ev.with_gradient:
        if e.cancelled_by is not None or e.index in ev.exploding or e.index in ev.rounding_zero:
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
            yield ev.finding(
                "vanishing", "warning", e.name, h.steps[0], median, threshold,
                f"the mean |gradient| of {e.name} is {median:.2g} times the largest in "
                f"the model (median step; threshold {threshold:g}): it barely trains. "
                "Typical causes: deep stacks of saturating activations (sigmoid/tanh), no "
                "normalisation or residual connections, or a too-small initialisation",
            )  # fmt: skip


@rule("zero_grad")
def zero_grad(ev: Evidence) -> Iterator[Finding]:
    cleared = ev.cleared_before_steps
    if cleared:
        clock, filled = ev.observed.cleared_before_step[0]
        yield ev.finding(
            "zero_grad", "warning", "optimizer", clock, float(cleared), None,
            f"in {cleared} of {ev.observed.steps} optimizer steps every gradient the backward "
            f"pass had filled ({filled} parameters) was None when step() ran: zero_grad() "
            "(set_to_none=True, its default) was called between backward() and step(), so "
            "the optimizer skips every parameter and nothing trains. Clear the gradients "
            "before the forward (or right after step()), never between backward() and step()",
        )  # fmt: skip
        return
    if ev.fully_dead_sites:  # zero gradients around a fully dead layer are its consequence
        return
    zero = ev.zero_gradient
    stepped = ev.observed.stepped
    everything = ev.every_gradient_zero
    for e, h, observed in zero:
        enough = stepped and observed >= 2
        cause = (
            "every trainable parameter had a zero gradient when step() ran, which is what "
            "zero_grad() between backward() and step() does"
            if everything
            else "something with a zero derivative sits between it and the loss (round, "
            "argmax, sign, a comparison, a hard threshold) or every unit after it is dead"
        )
        yield ev.finding(
            "zero_grad", "warning" if enough else "info", e.name, h.steps[0], 0.0, 0.0,
            f"the gradient of {e.name} was exactly zero in all {observed} observed "
            f"steps: {cause}"
            + ("" if enough else "; seen in fewer than 2 optimizer steps, so a "
               "zero-initialised branch is also possible"),
        )  # fmt: skip
