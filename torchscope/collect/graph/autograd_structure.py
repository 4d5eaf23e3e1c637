"""What the autograd graph's builder derives: module clusters, folds, the gradient's origin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchscope.collect.graph._common import MIN_FOLD_COUNT
from torchscope.collect.graph.capturing import ModuleCapture
from torchscope.collect.graph.walk import _Walked
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
    walked: list[_Walked],
    order: list[int],
    keys: list[str],
    kinds: list[str],
    consumers: list[list[int]],
    modules: list[str | None],
    capture_: ModuleCapture | None,
) -> tuple[GraphFold, ...]:
    ops = [i for i in order if kinds[i] == "op"]
    position = {i: p for p, i in enumerate(ops)}
    signatures = []
    for i in ops:
        entry = walked[i]
        parts: list[Any] = [entry.name, entry.shapes_and_dtypes()]
        for child in entry.children:
            if child in position:
                parts.append(position[i] - position[child])
            else:
                leaf = walked[child].leaf
                parts.append((kinds[child], tuple(leaf.shape) if leaf is not None else ()))
        signatures.append(tuple(parts))
    folds = []
    for start, period, count in find_repeats(signatures, min_count=MIN_FOLD_COUNT):
        blocks = [ops[start + k * period : start + (k + 1) * period] for k in range(count)]
        members = [set(block) for block in blocks]
        # a leaf used only by one repetition (its own weights) folds with it
        own_leaves = []
        for block, inside in zip(blocks, members, strict=True):
            leaves = [
                c
                for i in block
                for c in walked[i].children
                if c not in position and all(u in inside for u in consumers[c])
            ]
            own_leaves.append(list(dict.fromkeys(leaves)))
        same = len({len(leaves) for leaves in own_leaves}) == 1
        instances = tuple(
            tuple(keys[i] for i in block) + (tuple(keys[c] for c in leaves) if same else ())
            for block, leaves in zip(blocks, own_leaves, strict=True)
        )
        folds.append(GraphFold(_fold_label(walked, blocks[0], modules, capture_), count, instances))
    folds.sort(key=lambda f: -f.count * len(f.instances[0]))
    return tuple(folds)


def _fold_label(
    walked: list[_Walked],
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
        return " → ".join(walked[i].name for i in block)
    return f"{len(block)} ops"


def _grad_origin(
    walked: list[_Walked], order: list[int], grad_of: dict[int, GradInfo], keys: list[str]
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
        if info is None or walked[i].leaf is not None or info.status != "ok":
            continue
        statuses = [grad_of[c].status for c in walked[i].children if c in grad_of]
        if statuses and all(s in bad for s in statuses):
            return keys[i]
        if partial is None and any(s in bad for s in statuses):
            partial = keys[i]
    if partial is not None:
        return partial
    leaf_bits: dict[int, int] = {}
    bad_bits = 0
    for bit, i in enumerate(i for i in order if walked[i].leaf is not None and i in grad_of):
        leaf_bits[i] = 1 << bit
        if grad_of[i].status in bad:
            bad_bits |= 1 << bit
    if not bad_bits:
        return None
    below: dict[int, int] = {}
    for i in order:  # children come before their consumers in forward order
        mask = leaf_bits.get(i, 0)
        for child in walked[i].children:
            mask |= below.get(child, 0)
        below[i] = mask
    best: tuple[int, int] | None = None
    for i in order:
        mask = below[i]
        if mask and mask & bad_bits == mask and walked[i].leaf is None:
            size = bin(mask).count("1")
            if best is None or size >= best[0]:
                best = (size, i)
    return keys[best[1]] if best is not None else None
