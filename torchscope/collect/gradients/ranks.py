"""One gradient report for all the ranks of a distributed run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch.distributed as dist

from torchscope.distributed import is_distributed
from torchscope.records import SEVERITIES, Finding, GradientReport

__all__ = ["RankView", "merge_ranks", "world_size"]


def world_size() -> int:
    """Processes in the default group; 0 when torch.distributed is not initialised."""
    if not is_distributed():
        return 0
    return dist.get_world_size()


@dataclass(frozen=True)
class RankView:
    """What one rank sends to the others at report time (pickled by ``all_gather_object``)."""

    report: GradientReport
    backward_passes: int
    received: dict[str, int]  # trainable parameter -> backward passes that delivered a gradient
    module_ran: dict[str, bool]  # trainable parameter -> its module ran in a training forward


_NONFINITE_ROOTS = ("nonfinite_activation", "nonfinite_loss")
_NONFINITE_GRADIENTS = ("nan_grad", "inf_grad")


def merge_ranks(views: Sequence[RankView]) -> GradientReport:
    """One report from every rank's (the same on every rank: it depends only on ``views``).

    A parameter that got gradients on some ranks and none on others is invisible to each
    rank alone: with ``find_unused_parameters=True`` DDP fills in the others' average, so
    only the gradient counts gathered here show it. A NaN/Inf that one rank's forward or loss
    produced reaches every rank's gradients through the all-reduce; the ranks that only
    received it would blame their gradients, so their ``nan_grad``/``inf_grad`` from that
    step on are folded into the root finding.
    """
    world = len(views)
    names = list(dict.fromkeys(name for view in views for name in view.received))
    uneven: dict[str, Finding] = {}
    for name in names:
        missing = [
            r for r, v in enumerate(views) if v.backward_passes and v.received.get(name) == 0
        ]
        reached = [r for r, v in enumerate(views) if v.received.get(name, 0) > 0]
        if not (missing and reached):
            continue
        if not any(views[r].module_ran.get(name, True) for r in missing):
            cause = "its module never ran there: the forward branches on the rank or its data"
        else:
            cause = (
                "its output did not reach the loss there (a branch on the rank or its data, "
                "a .detach() or torch.no_grad())"
            )
        uneven[name] = Finding(
            "no_grad", "warning", name, None, None, None,
            f"{name} received no gradient on {_ranks(missing, world)} but did on "
            f"{_ranks(reached, world)}: {cause}. DistributedDataParallel then needs "
            "find_unused_parameters=True, and averages zeros from those ranks into its "
            "gradient; without it DDP stops at the next forward with \"Expected to have "
            "finished reduction in the prior iteration before starting a new one\", naming no "
            "parameter. Use it in the loss on every rank, or freeze it if it is not meant to "
            "train",
        )  # fmt: skip
    # a non-finite activation or loss on one rank reaches every rank's gradients through the
    # all-reduce: there the gradients look like the first non-finite values, but are not
    root_steps = [
        f.step if f.step is not None else -1
        for view in views
        for f in view.report.findings
        if f.kind in _NONFINITE_ROOTS
    ]
    first_root = min(root_steps) if root_steps else None
    carried = False
    merged: dict[tuple[str, str], tuple[Finding, list[int]]] = {}
    for rank, view in enumerate(views):
        own_root = any(f.kind in _NONFINITE_ROOTS for f in view.report.findings)
        for finding in view.report.findings:
            if finding.kind == "no_grad" and finding.where in uneven:
                continue  # the rank-by-rank finding above says more
            if (
                finding.kind in _NONFINITE_GRADIENTS
                and first_root is not None
                and not own_root
                and (finding.step if finding.step is not None else -1) >= first_root
            ):
                carried = True
                continue
            key = (finding.kind, finding.where)
            if key not in merged:
                merged[key] = (finding, [rank])
                continue
            kept, ranks = merged[key]
            ranks.append(rank)
            if SEVERITIES.index(finding.severity) < SEVERITIES.index(kept.severity):
                merged[key] = (finding, ranks)
    findings = [*uneven.values()]
    for finding, ranks in merged.values():
        seen = "every rank" if len(ranks) == world else _ranks(ranks, world)
        if carried and finding.kind in _NONFINITE_ROOTS:
            seen += "; DDP's all-reduce carried it into the gradients of the other ranks"
        findings.append(replace(finding, message=f"{finding.message} (seen on {seen})"))
    findings.sort(
        key=lambda f: (SEVERITIES.index(f.severity), f.step if f.step is not None else -1, f.kind)
    )
    first = views[0].report
    losses = first.losses
    if len({len(v.report.losses) for v in views}) == 1:  # DDP keeps the ranks in step
        losses = tuple(
            sum(values) / world for values in zip(*(v.report.losses for v in views), strict=True)
        )
    return replace(first, findings=tuple(findings), losses=losses)


def _ranks(ranks: Sequence[int], world: int) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]} of {world}"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]} of {world}"


# -- the one-shot check --------------------------------------------------------------------------
