"""Loss-function contracts: what the loss functions were handed, and what the loss did."""

from __future__ import annotations

import math
from collections.abc import Iterator

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding

# a log-softmax over the class dim has logsumexp 0 there (float32 rounding: ~1e-6)
WRONG_DIM_TOLERANCE = 0.05
# the training loss still this close to the loss of a constant prediction at the end
CHANCE_FRACTION = 0.9
MIN_STEPS_FOR_CHANCE = 30  # loss calls: a few steps (check_gradients) say nothing yet


@rule("loss_broadcast")
def loss_broadcast(ev: Evidence) -> Iterator[Finding]:
    seen = ev.observed.broadcasts
    if not seen:
        return
    clock, name, scores, target = seen[0]
    calls = ev.observed.total("broadcasts")
    yield ev.finding(
        "loss_broadcast", "error", name, clock, float(calls), None,
        f"{name} got an input of shape {list(scores)} and a target of shape {list(target)} "
        f"({calls} call(s)): they broadcast against each other, so the loss compares "
        "every prediction with every target and the model learns the mean. Make the shapes "
        "equal (output.squeeze(-1), or target.view(-1, 1))",
    )  # fmt: skip


@rule("probabilities_into_logits_loss")
def probabilities_into_logits_loss(ev: Evidence) -> Iterator[Finding]:
    seen = ev.observed.probabilities
    if not seen:
        return
    clock, name = seen[0]
    calls = ev.observed.total("probabilities")
    yield ev.finding(
        "probabilities_into_logits_loss", "error", name, clock, float(calls), None,
        f"{name} received the output of a sigmoid ({calls} call(s)). It applies the "
        "sigmoid itself and expects raw logits: the sigmoid is applied twice, which squashes "
        "the predictions into [0.5, 0.73] and the gradients with them. Remove the sigmoid "
        "from the training output (or use binary_cross_entropy on probabilities)",
    )  # fmt: skip


@rule("clipped_logits")
def clipped_logits(ev: Evidence) -> Iterator[Finding]:
    seen = ev.observed.clipped
    if not seen:
        return
    clock, name, how = seen[0]
    calls = ev.observed.total("clipped")
    yield ev.finding(
        "clipped_logits", "error", name, clock, float(calls), None,
        f"{name} received scores passed through {how} ({calls} call(s)): logits must be "
        "free to go negative. A negative score is cut to 0 and gets no gradient, so classes "
        "cannot be pushed down and units after the cut die. Remove the activation after the "
        "last layer",
    )  # fmt: skip


@rule("softmax_wrong_dim")
def softmax_wrong_dim(ev: Evidence) -> Iterator[Finding]:
    wrong = [w for w in ev.observed.wrong_dim if w[4] > WRONG_DIM_TOLERANCE]
    if not wrong:
        return
    clock, name, dim, class_dim, deviation = wrong[0]
    yield ev.finding(
        "softmax_wrong_dim", "error", name, clock, deviation, WRONG_DIM_TOLERANCE,
        f"{name} received a log_softmax taken over dim {dim}, but its classes are on dim "
        f"{class_dim} of what it was given: the values are not log-probabilities over the "
        f"classes (their logsumexp over the classes is {deviation:.3g}, not 0), so the loss "
        "normalises across the batch or the sequence instead. Use log_softmax(..., dim=-1) "
        "over the class dimension (dim=1 for (N, C) scores)",
    )  # fmt: skip


@rule("loss_at_chance")
def loss_at_chance(ev: Evidence) -> Iterator[Finding]:
    for name, tail in ev.chance_tails.items():
        if tail.calls < MIN_STEPS_FOR_CHANCE or tail.to_chance < CHANCE_FRACTION:
            continue
        soft = tail.floor > 0.01
        if tail.family == "classification" and not soft and tail.whole_run:
            what = (
                f"{tail.chance:.3g}, the entropy of the labels' frequencies over the run "
                "(imbalanced: below ln C), which predicting those frequencies for every "
                "sample gets"
            )
        elif tail.family == "classification" and not soft:
            what = f"ln C = {tail.chance:.3g} for {round(math.exp(tail.chance))} classes"
        elif tail.whole_run:
            what = (
                f"{tail.chance:.3g}, the targets' variance over the run (its batches hold "
                "less of it: not shuffled?), the loss of predicting their mean for every sample"
            )
        else:
            what = f"{tail.chance:.3g}, the loss of predicting the same value for every sample"
        if soft:
            what += (
                f" (the soft targets' own entropy, {tail.floor:.3g}, is the least any "
                "prediction gets)"
            )
        yield ev.finding(
            "loss_at_chance", "warning", name, None, tail.value, tail.chance,
            f"the training loss ({name}) ended at {tail.value:.3g} over the last {tail.tail} "
            f"of {tail.calls} steps, against a chance level of {what}: the model learned "
            "nothing it could not guess without looking at the input. Check that inputs "
            "and labels are paired (shuffled together, the right label column, the same "
            "split), and that the inputs carry the signal",
        )  # fmt: skip


@rule("accumulation_not_scaled")
def accumulation_not_scaled(ev: Evidence) -> Iterator[Finding]:
    o = ev.observed
    n = o.accumulation_steps
    if n <= 1:
        return
    windows = sorted(k for _, k in o.windows)
    if windows and windows[len(windows) // 2] < n:
        return  # the loop does not accumulate: grad_accumulation says so
    ratios = sorted(b / s for b, s in o.scaled if s != 0 and b == b and s == s)
    if len(ratios) < n:
        return
    median = ratios[len(ratios) // 2]
    # divided by n: about 1/n; not divided: about 1 (a weighted sum of losses: in between)
    if abs(median - 1) <= 0.25 and abs(median - 1 / n) > 0.25:
        yield ev.finding(
            "accumulation_not_scaled", "warning", "loss", None, median, 1 / n,
            f"with accumulation_steps={n} each micro-batch's loss went to backward() "
            f"undivided (backward got {median:.3g} times the loss function's value, not "
            f"1/{n}): the accumulated gradient is {n} times a batch's, as if the learning "
            f"rate were {n} times higher. Divide the loss by {n} before backward()",
        )  # fmt: skip
