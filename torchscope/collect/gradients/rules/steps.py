"""Steps that do not move the weights (and why), and weight decay that shrinks them away."""

from __future__ import annotations

from collections.abc import Iterator

from torchscope.collect.gradients.evidence import (
    CONVERGED_FRACTION,
    MIN_STEPS_FOR_UPDATES,
    SMALL_GRADIENT,
    Evidence,
)
from torchscope.collect.gradients.observations import ParamView
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding

MOST = 0.5  # "for most of the run": at least this fraction of the optimizer steps
COLLAPSED_LR = 0.1  # a learning rate below this fraction of its own peak has collapsed
CRUSHING_CLIP = 1e-2  # clip_grad_norm_ scaling the gradients by less than this
COLLAPSED_NORM = 0.2  # a weight whose norm ends below this fraction of where it started
# coupled weight decay this many times the loss's gradient (wd * ||w|| against ||g||, median
# step) outweighs it; healthy runs measure 0.01 to 0.1 (SGD 5e-4 to 5e-3, Adam 1e-4 to 1e-3)
DOMINANT_DECAY = 2.0


def _collapsed_groups(ev: Evidence) -> list[tuple[int, float, float, int, int]]:
    """(group, peak lr, last lr, steps collapsed, steps) for groups whose learning rate sat
    below COLLAPSED_LR of its peak in most of their steps."""
    out = []
    for group, trace in ev.group_lrs.items():
        lrs = [lr for lr in trace if lr is not None]
        if not lrs:
            continue
        peak = max(lrs)
        if peak <= 0 or len(lrs) < 2:
            continue
        low = sum(lr < COLLAPSED_LR * peak for lr in lrs)
        if low >= MOST * len(lrs):
            out.append((group, peak, lrs[-1], low, len(lrs)))
    return out


def _crushing_clips(ev: Evidence) -> list[float]:
    coefficients = [c for _, c in ev.observed.clip_coefficients]
    steps = max(len(ev.observed.rows), 1)
    crushing = sorted(c for c in coefficients if c < CRUSHING_CLIP)
    return crushing if len(crushing) >= MOST * steps else []


def _tiny(ev: Evidence) -> bool:
    return ev.barely_learning


def _median_ratio(ev: Evidence) -> float:
    ratios = sorted(ev.step_update_ratios)
    return ratios[len(ratios) // 2] if ratios else 0.0


@rule("lr_collapsed")
def lr_collapsed(ev: Evidence) -> Iterator[Finding]:
    if not _tiny(ev):
        return
    for _group, peak, last, low, steps in _collapsed_groups(ev)[:1]:
        yield ev.finding(
            "lr_collapsed", "warning", "optimizer", None, last, COLLAPSED_LR * peak,
            f"the learning rate fell from {peak:.3g} to {last:.3g} and stayed below "
            f"{COLLAPSED_LR:g} of its peak for {low} of {steps} optimizer steps, so the "
            f"weights barely move (median update/weight ratio {_median_ratio(ev):.2g}) and "
            f"the loss fell by only {ev.loss_improvement or 0:.0%}: a "
            "scheduler stepped every batch where it was meant once per epoch (StepLR, "
            "ExponentialLR and MultiStepLR count scheduler.step() calls). Call "
            "scheduler.step() once per epoch, or give it the step_size/milestones in batches",
        )  # fmt: skip


@rule("clipped_to_nothing")
def clipped_to_nothing(ev: Evidence) -> Iterator[Finding]:
    if not _tiny(ev) or _collapsed_groups(ev):
        return
    crushing = _crushing_clips(ev)
    if not crushing:
        return
    median = crushing[len(crushing) // 2]
    yield ev.finding(
        "clipped_to_nothing", "warning", "optimizer", None, median, CRUSHING_CLIP,
        f"clip_grad_norm_ scaled the gradients by {median:.2g} (median) in "
        f"{len(crushing)} steps, so the weights barely move (median update/weight ratio "
        f"{_median_ratio(ev):.2g}): max_norm is far below the gradients' norm. Use a "
        "max_norm near the typical gradient norm (0.25 to 5 is common) or clip by value",
    )  # fmt: skip


@rule("tiny_updates")
def tiny_updates(ev: Evidence) -> Iterator[Finding]:
    if not _tiny(ev) or _collapsed_groups(ev) or _crushing_clips(ev):
        return
    if ev.cleared_before_steps or ev.every_gradient_zero:  # zero_grad says why
        return
    small = ev.gradient_to_weight
    if ev.loss_to_chance is None and small is not None and small < SMALL_GRADIENT:
        # small steps from small gradients, and no chance level to say the loss is still
        # high: a trained model (fine-tuned, resumed, trained on past convergence) has
        # nothing left to learn, and a step of any learning rate moves it little
        return
    lrs = sorted({lr for trace in ev.group_lrs.values() for lr in trace if lr})
    shown = ", ".join(f"{lr:.2g}" for lr in lrs[:3]) or "unknown"
    yield ev.finding(
        "tiny_updates", "warning", "optimizer", None, _median_ratio(ev),
        ev.t.tiny_update_ratio,
        f"optimizer steps change the weights by a median {_median_ratio(ev):.2g} of their "
        f"norm (below {ev.t.tiny_update_ratio:g} in {ev.tiny_update_fraction:.0%} of the "
        f"steps; healthy training is around 1e-3 and up) and the loss fell by only "
        f"{ev.loss_improvement or 0:.0%}, while the gradients are not zero: the "
        f"learning rate ({shown}) is far too small for this model. Raise it (Adam: 1e-4 to "
        "3e-3, SGD: 1e-3 to 1e-1 are typical), or check the loss scale (a loss divided by a "
        "large constant)",
    )  # fmt: skip


@rule("weight_decay_collapse")
def weight_decay_collapse(ev: Evidence) -> Iterator[Finding]:
    decay: dict[int, tuple[float, bool]] = {}
    for _, groups in ev.observed.lr_trace:
        for group, (_, wd, decoupled) in groups.items():
            decay[group] = (wd, decoupled)
    shrunk, judged = [], 0
    for e in ev.params:
        if not e.trainable or len(e.shape) < 2 or decay.get(e.group or -1, (0.0, False))[0] <= 0:
            continue
        moves = ev.moves.get(e.index, [])
        if len(moves) < 20 or moves[0].weight_norm <= 0:
            continue
        judged += 1
        if moves[-1].weight_norm < COLLAPSED_NORM * moves[0].weight_norm:
            shrunk.append((e, moves[-1].weight_norm / moves[0].weight_norm))
    if not shrunk or len(shrunk) < MOST * judged:
        yield from _decay_dominates(ev, decay)
        return
    e, ratio = shrunk[0]
    wd, decoupled = decay[e.group or -1]
    kind = ev.observed.optimizer_kind or {}
    yield ev.finding(
        "weight_decay_collapse", "warning", e.name, None, ratio, COLLAPSED_NORM,
        f"the norms of {len(shrunk)} of {judged} weight matrices fell below "
        f"{COLLAPSED_NORM:g} of their starting value (e.g. {e.name} to {ratio:.2g}) under "
        f"weight_decay={wd:g} ({kind.get(e.group or -1, 'the optimizer')}"
        f"{', decoupled' if decoupled else ', coupled to the gradient'}): the decay "
        "outweighs what the gradients build. Typical values are 1e-4 to 5e-4 for SGD, 0.01 "
        "to 0.1 for AdamW (decoupled); Adam's weight_decay is L2 in the gradient, use AdamW",
    )  # fmt: skip


def _decay_dominates(ev: Evidence, decay: dict[int, tuple[float, bool]]) -> Iterator[Finding]:
    """Coupled weight decay (``weight_decay`` of SGD, Adam, RMSprop, Adagrad: added to the
    gradient) that outweighs the loss's gradient while the loss does not fall: the optimizer
    mostly shrinks the weights, before they have had the steps to collapse. The decay must
    match the gradient where that is largest too (a layer whose gradient vanishes is
    outweighed by any decay: that is ``vanishing``'s to say)."""
    improvement, to_chance = ev.loss_improvement, ev.loss_to_chance
    if improvement is None or improvement >= ev.t.min_loss_improvement:
        return
    # the loss must be known to sit near its chance level: a converged model's gradient is
    # tiny and any decay outweighs it (a loss with no known chance level is not judged)
    if to_chance is None or to_chance < CONVERGED_FRACTION:
        return
    ratios: list[tuple[float, float, ParamView]] = []  # (median ratio, median |g|, param)
    for e in ev.params:
        wd, decoupled = decay.get(e.group or -1, (0.0, False))
        if not e.trainable or len(e.shape) < 2 or wd <= 0 or decoupled:
            continue
        pairs = [(wd * w / g, g) for g, w in ev.gradient_and_weight.get(e.index, []) if g > 0]
        if len(pairs) < MIN_STEPS_FOR_UPDATES:
            continue
        ratio = sorted(r for r, _ in pairs)[len(pairs) // 2]
        grad = sorted(g for _, g in pairs)[len(pairs) // 2]
        ratios.append((ratio, grad, e))
    if not ratios:
        return
    outweighed = [entry for entry in ratios if entry[0] > DOMINANT_DECAY]
    best_fed = max(ratios, key=lambda entry: entry[1])
    if len(outweighed) < MOST * len(ratios) or best_fed[0] < 1.0:
        return
    ratio, _, e = best_fed
    wd, _ = decay[e.group or -1]
    kind = ev.observed.optimizer_kind or {}
    yield ev.finding(
        "weight_decay_collapse", "warning", e.name, None, ratio, DOMINANT_DECAY,
        f"weight_decay={wd:g} ({kind.get(e.group or -1, 'the optimizer')}, coupled to the "
        f"gradient) outweighs the loss's gradient in {len(outweighed)} of {len(ratios)} weight "
        f"matrices (over {DOMINANT_DECAY:g} times it in the median step) and matches it even "
        f"for {e.name}, whose gradient is the largest ({ratio:.2g} times), and the loss fell "
        + (f"by only {improvement:.0%}" if improvement > 0 else "not at all")
        + f" (it stays at {to_chance:.0%} of a constant prediction's): the "
        "steps mostly shrink the weights toward zero instead of fitting the data. Typical "
        "values are 1e-4 to 5e-4 for SGD; Adam's and RMSprop's weight_decay is L2 in the "
        "gradient (use AdamW, decoupled, with 0.01 to 0.1)",
    )  # fmt: skip
