"""What the forward passes showed: dead units, eval mode, probabilities fed to a loss that
expects logits, a batch normalised from one sample."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.observations import Clock, SquashView
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@rule("dead_activation")
def dead_activation(ev: Evidence) -> Iterator[Finding]:
    t = ev.t
    # zero gradients around a fully dead layer are its consequence (zero_grad stays silent)
    folded_zero = len(ev.zero_gradient) if ev.fully_dead_sites else 0
    for site in ev.observed.relu_sites:
        if site.observations < t.dead_min_observations:
            continue
        units = site.units
        dead = units - site.fired_units
        fraction = dead / units
        if dead and fraction >= t.dead_fraction:
            yield ev.finding(
                "dead_activation", "warning", site.name, None, fraction, t.dead_fraction,
                f"{dead} of {units} units ({fraction:.0%}) after {site.name} never fired "
                f"over {site.observations} observations each (threshold "
                f"{t.dead_fraction:.0%}): no gradient flows through them to the layers "
                "before. Typical causes: a large negative bias, a too-high learning "
                "rate, or inputs far from the scale the layer expects; LeakyReLU/GELU "
                "or a lower learning rate help"
                + (f". {folded_zero} parameter tensor(s) get exactly zero gradients "
                   "as a consequence" if folded_zero and fraction == 1 else ""),
            )  # fmt: skip


@rule("eval_mode")
def eval_mode(ev: Evidence) -> Iterator[Finding]:
    o = ev.observed
    root, sub = o.total("eval_root_forwards"), o.total("eval_sub_forwards")
    if o.eval_root_forwards:
        clock, names = o.eval_root_forwards[0]
        yield ev.finding(
            "eval_mode", "warning", "<model>", clock, float(root), None,
            f"{root} training step(s) ran with the model in eval "
            f"mode, so {_names(names)} behave as at inference (dropout off, BatchNorm "
            "frozen statistics). Call model.train() before the training loop, and again "
            "after each evaluation",
        )  # fmt: skip
    elif o.eval_sub_forwards:
        clock, names = o.eval_sub_forwards[0]
        yield ev.finding(
            "eval_mode", "info", names[0], clock, float(sub), None,
            f"{_names(names)} ran in eval mode inside a model in training mode; fine if "
            "intended (frozen statistics), otherwise call .train() on them",
        )  # fmt: skip


@rule("softmax_into_cross_entropy")
def softmax_into_cross_entropy(ev: Evidence) -> Iterator[Finding]:
    for clock, loss_name, from_softmax, probabilities in ev.observed.probability_inputs:
        if not probabilities:
            continue
        how = (
            "the output of softmax"
            if from_softmax
            else "values that look like probabilities (in [0, 1], rows summing to 1)"
        )
        yield ev.finding(
            "softmax_into_cross_entropy", "error", loss_name, clock, None, None,
            f"{loss_name} received {how}. It expects raw logits"
            f"{' (log_softmax first for nll_loss)' if loss_name == 'nll_loss' else ''}"
            ": softmax is applied twice, which squashes the gradients. Remove the "
            "softmax from the model's training output",
        )  # fmt: skip
        return


@rule("batchnorm_batch_of_one")
def batchnorm_batch_of_one(ev: Evidence) -> Iterator[Finding]:
    seen = ev.observed.batch_of_one
    if not seen:
        return
    clock, path, shape = seen[0]
    times = ev.observed.total("batch_of_one")
    yield ev.finding(
        "batchnorm_batch_of_one", "warning", path, clock, 1.0, None,
        f"{path} normalised a batch of one sample in training mode (input shape "
        f"{list(shape)}), {times} time(s): its statistics come from a "
        "single sample, and the running averages are skewed. Use drop_last=True in the "
        "DataLoader, a larger batch, or GroupNorm/LayerNorm",
    )  # fmt: skip


@rule("saturated_activation")
def saturated_activation(ev: Evidence) -> Iterator[Finding]:
    threshold = ev.t.saturated_fraction
    scale = ev.observed.input_scale
    groups: dict[str, list[SquashView]] = {}  # the calls of one function in one forward
    for site in ev.observed.squash_sites:
        if site.feeds_loss or site.on_output or site.total < 64 or site.saturated < threshold:
            continue
        groups.setdefault(site.name.rsplit("#", 1)[0], []).append(site)
    for sites in groups.values():
        site = max(sites, key=lambda s: s.saturated)
        limits = "+-1" if site.function == "tanh" else "0 or 1"
        inputs = f"; the model's input reached |x| = {scale:.3g}" if scale is not None else ""
        more = (
            f" (and {len(sites) - 1} more {site.function} calls of the same forward, as an "
            "unrolled recurrence makes)"
            if len(sites) > 1
            else ""
        )
        yield ev.finding(
            "saturated_activation", "warning", site.name, None, site.saturated, threshold,
            f"{site.saturated:.0%} of the outputs of {site.name} ({site.function}){more} sit "
            f"within 0.01 of {limits}, where its derivative is nearly 0, so little gradient "
            f"passes{inputs}. Typical causes: unnormalised inputs (raw 0-255 pixels, "
            "features in their own units: standardise them), or too large an initial "
            "gain; normalisation layers or ReLU-family activations also help",
        )  # fmt: skip


@rule("batch_mixing")
def batch_mixing(ev: Evidence) -> Iterator[Finding]:
    batches = [c.batch for c in ev.observed.loss_calls if c.batch is not None]
    if not batches:
        return
    usual = max(set(batches), key=batches.count)  # the usual batch size of the loss
    of_step: dict[Clock, int] = {}  # the loss's batch size in each step (a ragged last one)
    for c in ev.observed.loss_calls:
        if c.batch is not None:
            of_step.setdefault(c.clock, c.batch)
    leading: dict[str, tuple[set[int], set[int]]] = {}  # per layer: its inputs' dim 0s, dim 1s
    for path, shape, _ in ev.observed.sequence_inputs:
        dims = leading.setdefault(path, (set(), set()))
        dims[0].add(shape[0])
        dims[1].add(shape[1])
    first: dict[str, tuple[tuple[int, ...], int]] = {}  # the first input that mixes
    votes: dict[str, list[int]] = {}  # per layer: inputs batch-first, inputs time-first
    for path, shape, clock in ev.observed.sequence_inputs:
        firsts, seconds = leading[path]
        if len(firsts) == 1 and len(seconds) > 1:
            # its dim 1 changes from batch to batch (a ragged last one) and its dim 0 never
            # does: dim 1 is the batch, as the layer reads it (a time-first model whose loss
            # keeps the time first too, (time, batch, 1))
            continue
        batch = of_step.get(clock, usual)
        leads, follows = shape[0] == batch, shape[1] == batch
        if leads == follows:
            continue  # sequence length = batch size, or neither: the shape tells nothing
        votes.setdefault(path, [0, 0])[0 if leads else 1] += 1
        if leads:
            first.setdefault(path, (shape, batch))
    for path, (shape, batch) in first.items():
        mixing, time_first = votes[path]
        if mixing < time_first:
            continue
        yield ev.finding(
            "batch_mixing", "error", path, None, float(shape[0]), None,
            f"{path} reads its input as (sequence, batch, features) (batch_first=False) but "
            f"got {list(shape)}, whose first dim is the loss's batch size ({batch}): it runs "
            f"along the batch as if it were time, mixing the samples, and treats the "
            f"{shape[1]} time steps as independent sequences. Build it with batch_first=True, "
            "or feed x.transpose(0, 1)",
        )  # fmt: skip
        return  # the layers inside it see the same tensor
