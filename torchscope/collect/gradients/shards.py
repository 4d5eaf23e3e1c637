"""Statistics of sharded parameters (FSDP2's ``DTensor``s), combined across their mesh.

Each process measures what it holds: the norms of its local shard of every gradient, weight
and step, kept on the device as for any parameter, with no communication while the loop
runs. When the report is taken (a collective already), every rank sends its shard figures
once, and each parameter's figures become those of the whole tensor: L1 norms add, L2 norms
add in squares, max-abs norms take the maximum. The ranks combined are those that hold
different shards of the same tensor: the same coordinates on the mesh's other dims (the
replicas of HSDP's replicate dim are not added up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from torchscope.collect.gradients.observations import Observations, StepView
from torchscope.distributed import all_gather_objects

__all__ = ["ShardPlan", "combine_shards", "fully_sharded", "shard_plan"]

# param index -> the rank's coordinates on the mesh dims its shards are *not* spread over:
# ranks with the same key hold the shards of one copy of the tensor
ShardPlan = dict[int, tuple[int, ...]]


def fully_sharded(model: torch.nn.Module) -> bool:
    """Some module of ``model`` is managed by FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_plan(tensors: Sequence[tuple[int, torch.Tensor]]) -> ShardPlan:
    """The sharded ones among ``(index, tensor)``: DTensors with a ``Shard`` placement."""
    plan: ShardPlan = {}
    for index, tensor in tensors:
        placements = getattr(tensor, "placements", None)
        mesh = getattr(tensor, "device_mesh", None)
        if placements is None or mesh is None:
            continue
        sharded = [d for d, p in enumerate(placements) if p.is_shard()]
        if not sharded:
            continue  # replicated everywhere: every rank holds the whole tensor
        coordinate = mesh.get_coordinate()
        if coordinate is None:
            continue  # this rank is not on the tensor's mesh
        plan[index] = tuple(c for d, c in enumerate(coordinate) if d not in sharded)
    return plan


def _row_figures(row: StepView, plan: ShardPlan) -> dict[str, dict[int, tuple[float, ...]]]:
    grads: dict[int, tuple[float, ...]] = {
        i: (row.grad_l1[k], row.grad_l2[k], row.grad_max_abs[k])
        for k, i in enumerate(row.grad_index)
        if i in plan
    }
    weights: dict[int, tuple[float, ...]] = {
        i: (row.weight_norm[k], row.weight_change[k])
        for k, i in enumerate(row.weight_index)
        if i in plan
    }
    return {"grad": grads, "weight": weights}


def _square_sum(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def combine_shards(observed: Observations, plan: ShardPlan) -> Observations:
    """``observed`` with every sharded parameter's figures taken over all of its shards.

    A collective: every rank calls it, with the plan of the same parameters. Rows are
    matched by their clock (optimizer step, backward pass); FSDP2 keeps the ranks in step.
    """
    mine = {
        row.clock: _row_figures(row, plan)
        for row in observed.rows
        if row.grad_index or row.has_weights
    }
    dropped = {i: v for i, v in (observed.dropped_grad_steps or {}).items() if i in plan}
    sent: dict[str, Any] = {"plan": plan, "rows": mine, "dropped": dropped}
    views = all_gather_objects(sent)
    # a long run's dropped steps: a shard's max |grad| was non-zero at some step where any
    # shard's was (the whole tensor's is the largest of its shards')
    combined = dict(observed.dropped_grad_steps or {})
    for i in dropped:
        theirs = [
            v["dropped"][i] for v in views if v["plan"].get(i) == plan[i] and i in v["dropped"]
        ]
        combined[i] = (min(f for f, _ in theirs), max(n for _, n in theirs))
    rows = []
    for row in observed.rows:
        figures = mine.get(row.clock)
        if figures is None:
            rows.append(row)
            continue
        grads: dict[int, list[tuple[float, ...]]] = {}
        weights: dict[int, list[tuple[float, ...]]] = {}
        for view in views:
            theirs = view["rows"].get(row.clock)
            if theirs is None:
                continue
            for i in figures["grad"]:
                if view["plan"].get(i) == plan[i] and i in theirs["grad"]:
                    grads.setdefault(i, []).append(theirs["grad"][i])
            for i in figures["weight"]:
                if view["plan"].get(i) == plan[i] and i in theirs["weight"]:
                    weights.setdefault(i, []).append(theirs["weight"][i])
        l1, l2, top = list(row.grad_l1), list(row.grad_l2), list(row.grad_max_abs)
        for k, i in enumerate(row.grad_index):
            if i in grads:
                l1[k] = sum(g[0] for g in grads[i])
                l2[k] = _square_sum([g[1] for g in grads[i]])
                top[k] = max((g[2] for g in grads[i]), key=_nan_first)
        norm, change = list(row.weight_norm), list(row.weight_change)
        for k, i in enumerate(row.weight_index):
            if i in weights:
                norm[k] = _square_sum([w[0] for w in weights[i]])
                change[k] = _square_sum([w[1] for w in weights[i]])
        rows.append(
            replace(
                row,
                grad_l1=tuple(l1),
                grad_l2=tuple(l2),
                grad_max_abs=tuple(top),
                weight_norm=tuple(norm),
                weight_change=tuple(change),
            )
        )
    return replace(observed, rows=tuple(rows), dropped_grad_steps=combined)


def _nan_first(value: float) -> float:
    """Sort key for max(): a NaN on any shard makes the whole tensor's max-abs NaN."""
    return math.inf if math.isnan(value) else value
