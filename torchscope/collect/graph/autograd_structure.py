"""What the autograd graph's builder derives: module clusters, folds, the gradient's origin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchscope.collect.graph._common import MIN_FOLD_COUNT
from torchscope.collect.graph.capturing import ModuleCapture
from torchscope.collect.graph.walk import Meta, Walk
from torchscope.records import GradInfo, GraphCluster, GraphFold, GraphNode
from torchscope.records.graph_views import common_module, find_repeats


def _bad_below(nodes: list[GraphNode], key: str) -> str:
    """What went wrong at the origin: "zero", "nan" or "inf" (the worst below it)."""
    statuses = {n.grad.status for n in nodes if n.grad is not None}
    for status in ("nan", "inf", "zero"):
        if status in statuses:
            return status
    return "zero"


def _module_clusters(modules: set[str], types: Mapping[str, str]) -> tuple[GraphCluster, ...]:
    """Clusters for every module path that holds nodes, with all their ancestors."""
    paths: set[str] = set()
    for module in modules:
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            paths.add(".".join(parts[:n]))
    clusters = []
    for path in sorted(paths, key=lambda p: (p.count("."), p)):
        base = path.split("#")[0]
        parent = path.rpartition(".")[0] or None
        if parent is not None and parent not in paths:
            parent = None
        type_name = types.get(path) or types.get(base, "")
        clusters.append(GraphCluster(path, f"{path} ({type_name})" if type_name else path, parent))
    return tuple(clusters)


def _autograd_folds(
    walk: Walk,
    order: list[int],
    keys: list[str],
    kinds: list[str],
    metadata: list[Meta],
    modules: list[str | None],
    capture_: ModuleCapture | None,
) -> tuple[GraphFold, ...]:
    """Repeated steps: runs of ops whose names, output shapes and inputs (as offsets back to
    earlier ops, or the shapes of leaves) repeat back to back."""
    names = walk.names
    children = walk.children
    leaves = walk.leaves
    ops: list[int] = []
    op_meta: list[Meta] = []
    for i, meta in zip(order, metadata, strict=True):
        if kinds[i] == "op":
            ops.append(i)
            op_meta.append(meta)
    position = [-1] * len(walk)
    for p, i in enumerate(ops):
        position[i] = p
    leaf_parts: dict[int, tuple[str, tuple[int, ...]]] = {}
    signatures = []
    for p, i in enumerate(ops):
        parts: list[Any] = [names[i], op_meta[p]]
        for child in children[i]:
            at = position[child]
            if at >= 0:
                parts.append(p - at)
            else:
                part = leaf_parts.get(child)
                if part is None:
                    leaf = leaves.get(child)
                    part = leaf_parts[child] = (
                        kinds[child],
                        tuple(leaf.shape) if leaf is not None else (),
                    )
                parts.append(part)
        signatures.append(tuple(parts))
    runs = find_repeats(signatures, min_count=MIN_FOLD_COUNT)
    if not runs:
        return ()
    # the span of positions of each leaf's users: a leaf whose users all lie in one
    # repetition (its own weights) folds with it
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for p, i in enumerate(ops):
        for child in children[i]:
            if position[child] < 0:
                if child not in first_use:
                    first_use[child] = p
                last_use[child] = p
    op_keys = [keys[i] for i in ops]
    folds = []
    for start, period, count in runs:
        blocks = []
        own_leaves = []
        for first in range(start, start + period * count, period):
            last = first + period
            blocks.append(tuple(op_keys[first:last]))
            own_leaves.append(
                tuple(
                    dict.fromkeys(
                        keys[c]
                        for i in ops[first:last]
                        for c in children[i]
                        if position[c] < 0 and first <= first_use[c] and last_use[c] < last
                    )
                )
            )
        same = len({len(leaves) for leaves in own_leaves}) == 1
        instances = (
            tuple(block + leaves for block, leaves in zip(blocks, own_leaves, strict=True))
            if same
            else tuple(blocks)
        )
        label = _fold_label(walk, ops[start : start + period], modules, capture_)
        folds.append(GraphFold(label, count, instances))
    folds.sort(key=lambda f: -f.count * len(f.instances[0]))
    return tuple(folds)


def _fold_label(
    walk: Walk,
    block: list[int],
    modules: list[str | None],
    capture_: ModuleCapture | None,
) -> str:
    """The type of the module one repetition ran in (``Bottleneck``), else its ops."""
    if capture_ is not None:
        common = common_module(modules[i] or "" for i in block)
        type_name = capture_.types.get(common, "") if common else ""
        if type_name:
            return type_name
        # a repetition that straddles two calls of one module type (RNNCell, RNNCell, ...)
        types = {capture_.types.get(m, "") for i in block if (m := modules[i])}
        if len(types) == 1 and all(modules[i] for i in block):
            return types.pop()
    if len(block) <= 4:
        return " → ".join(walk.names[i] for i in block)
    return f"{len(block)} ops"


def _grad_origin(
    walk: Walk, order: list[int], grad_of: dict[int, GradInfo], keys: list[str]
) -> str | None:
    """The node closest to the loss where the gradient first became zero or non-finite.

    With op gradients: an op that received a good gradient and passed only bad ones on (a
    dead ReLU), else one that passed some bad one on. With parameter gradients only: the op
    above the largest set of parameters whose gradients all went bad.
    """
    bad = {"zero", "nan", "inf"}
    partial: str | None = None
    for i in reversed(order):
        info = grad_of.get(i)
        if info is None or i in walk.leaves or info.status != "ok":
            continue
        statuses = [grad_of[c].status for c in walk.children[i] if c in grad_of]
        if statuses and all(s in bad for s in statuses):
            return keys[i]
        if partial is None and any(s in bad for s in statuses):
            partial = keys[i]
    if partial is not None:
        return partial
    leaf_bits: dict[int, int] = {}
    bad_bits = 0
    for bit, i in enumerate(i for i in order if i in walk.leaves and i in grad_of):
        leaf_bits[i] = 1 << bit
        if grad_of[i].status in bad:
            bad_bits |= 1 << bit
    if not bad_bits:
        return None
    below: dict[int, int] = {}
    for i in order:  # children come before their consumers in forward order
        mask = leaf_bits.get(i, 0)
        for child in walk.children[i]:
            mask |= below.get(child, 0)
        below[i] = mask
    best: tuple[int, int] | None = None
    for i in order:
        mask = below[i]
        if mask and mask & bad_bits == mask and i not in walk.leaves:
            size = bin(mask).count("1")
            if best is None or size >= best[0]:
                best = (size, i)
    return keys[best[1]] if best is not None else None
