"""Pure transformations of graph records: folding repeated steps, collapsing clusters to a
depth, finding repeats in a sequence, and diffing two graphs.

Imports only :mod:`torchscope.records` and :mod:`torchscope._format`, so collectors and
renderers can both use it.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Hashable, Iterable, Sequence

import torch

from torchscope._format import format_shapes
from torchscope.records import Graph, GraphCluster, GraphDiff, GraphEdge, GraphNode

__all__ = ["check_depth", "common_module", "diff", "find_repeats", "view"]

#: Longest period (in steps) searched for repeats; an encoder block is ~40 autograd nodes.
MAX_PERIOD = 256


def find_repeats(
    signatures: Sequence[Hashable], *, min_count: int = 3, max_period: int = MAX_PERIOD
) -> list[tuple[int, int, int]]:
    """Runs of a block repeated back to back: ``(start, period, count)``, not overlapping.

    A run covers ``signatures[start : start + period * count]`` where every block of
    ``period`` items equals the first. Runs covering more items win; at equal coverage the
    shorter period wins (``ab ab ab ab`` is ``ab x4``, not ``abab x2``). Time is
    O(n * max_period), vectorised over n.
    """
    n = len(signatures)
    ids: dict[Hashable, int] = {}
    seq = torch.tensor([ids.setdefault(s, len(ids)) for s in signatures], dtype=torch.int64)
    candidates: list[tuple[int, int, int, int]] = []  # (-covered, period, start, count)
    for period in range(1, min(max_period, n // min_count) + 1):
        # stretches where seq[i] == seq[i + period]: a stretch of length L starting at s
        # holds (L + period) // period back-to-back blocks starting at s
        matches = seq[:-period] == seq[period:]
        if not bool(matches.any()):
            continue
        same = torch.zeros(n - period + 2, dtype=torch.int8)
        same[1:-1] = matches
        change = torch.diff(same)
        starts = torch.nonzero(change == 1).flatten()
        ends = torch.nonzero(change == -1).flatten()
        lengths = ends - starts
        long_enough = lengths >= (min_count - 1) * period
        for start, length in zip(
            starts[long_enough].tolist(), lengths[long_enough].tolist(), strict=True
        ):
            count = (length + period) // period
            candidates.append((-(count * period), period, start, count))
    candidates.sort()
    starts_taken: list[int] = []  # chosen runs as sorted, disjoint [start, end) intervals
    ends_taken: list[int] = []
    chosen: list[tuple[int, int, int]] = []
    for _, period, start, count in candidates:
        # trim the run to where it is free, keeping whole blocks
        end = start + period * count
        while start < end and (cover := _covering(starts_taken, ends_taken, start)) is not None:
            start += -(-(cover - start) // period) * period
        while end > start and (cover := _covering(starts_taken, ends_taken, end - 1)) is not None:
            first_taken = starts_taken[bisect.bisect_right(starts_taken, end - 1) - 1]
            end -= -(-(end - first_taken) // period) * period
        count = (end - start) // period
        if count < min_count:
            continue
        at = bisect.bisect_left(starts_taken, start)
        if at < len(starts_taken) and starts_taken[at] < end:
            continue  # a chosen run lies inside this one
        starts_taken.insert(at, start)
        ends_taken.insert(at, end)
        chosen.append((start, period, count))
    chosen.sort()
    return chosen


def _covering(starts: list[int], ends: list[int], position: int) -> int | None:
    """The end of the chosen interval holding ``position``, None when it is free."""
    at = bisect.bisect_right(starts, position) - 1
    if at >= 0 and ends[at] > position:
        return ends[at]
    return None


def check_depth(depth: object) -> None:
    """Reject a graph ``depth`` that is not None or a whole number >= 1."""
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(
            f"depth must be a whole number >= 1 (1: the model's direct children), got {depth!r}"
        )


def view(graph: Graph, *, fold: bool = True, depth: int | None = None) -> Graph:
    """What to draw: ``graph`` with its folds applied (each repeated step drawn once inside a
    cluster labelled ``× count``) and, with ``depth``, every module at nesting level
    ``depth`` (1: the model's direct children) that holds nodes collapsed into one node."""
    check_depth(depth)
    result = graph
    if fold and graph.folds:
        result = _apply_folds(result)
    if depth is not None:
        result = _collapse(result, depth)
    return result


def _apply_folds(graph: Graph) -> Graph:
    replace: dict[str, str] = {}  # node of a later repetition -> its counterpart in the first
    instance_of: dict[str, tuple[int, int]] = {}  # node -> (fold, repetition)
    fold_cluster_of: dict[str, str] = {}  # first-repetition node -> fold cluster
    common_of: dict[str, str] = {}  # fold cluster -> the module holding every repetition
    clusters = {c.key: c for c in graph.clusters}
    new_clusters: list[GraphCluster] = []
    reparent: dict[str, str] = {}
    dropped_clusters: set[str] = set()
    module_of = {n.key: n.module for n in graph.nodes}
    for f, fold in enumerate(graph.folds):
        fold_key = f"fold{f}"
        modules = {module_of.get(k) or "" for inst in fold.instances for k in inst}
        common = _common_cluster(modules, clusters)
        common_of[fold_key] = common
        new_clusters.append(GraphCluster(fold_key, f"{fold.label} ×{fold.count}", common or None))
        for r, inst in enumerate(fold.instances):
            for key in inst:
                instance_of[key] = (f, r)
        for key in fold.instances[0]:
            fold_cluster_of[key] = fold_key
        for inst in fold.instances[1:]:
            for key, first in zip(inst, fold.instances[0], strict=True):
                replace[key] = first
        # the clusters each repetition has of its own hang below the common one
        for r, inst in enumerate(fold.instances):
            for key in inst:
                top = _child_towards(module_of.get(key) or "", common)
                if top is None:
                    continue
                if r == 0:
                    reparent[top] = fold_key
                else:
                    dropped_clusters.add(top)
    nodes = []
    for node in graph.nodes:
        if node.key in replace:
            continue
        in_fold = fold_cluster_of.get(node.key)
        if in_fold is not None and (node.module or "") == common_of[in_fold]:
            # a node directly in the module holding the repetitions moves into the fold
            node = dataclasses.replace(node, module=in_fold)
        nodes.append(node)
    edges: dict[tuple[str, str], GraphEdge] = {}
    for edge in graph.edges:
        a, b = instance_of.get(edge.src), instance_of.get(edge.dst)
        if a is not None and b is not None and a[0] == b[0] and a[1] != b[1]:
            continue  # from one repetition into the next: the count says it
        src, dst = replace.get(edge.src, edge.src), replace.get(edge.dst, edge.dst)
        if src != dst:
            edges.setdefault((src, dst), GraphEdge(src, dst, edge.label))
    kept_clusters = []
    for cluster in graph.clusters:
        if _under_any(cluster.key, dropped_clusters):
            continue
        if cluster.key in reparent:
            cluster = dataclasses.replace(cluster, parent=reparent[cluster.key])
        kept_clusters.append(cluster)
    return dataclasses.replace(
        graph,
        nodes=tuple(nodes),
        edges=tuple(edges.values()),
        clusters=_prune_clusters((*kept_clusters, *new_clusters), nodes),
        folds=(),
    )


def common_module(paths: Iterable[str]) -> str:
    """The deepest module path that is an ancestor-or-self of every one of ``paths``
    (``""``: only the root is)."""
    parts = [path.split(".") if path else [] for path in paths]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return ".".join(common)


def _common_cluster(modules: set[str], clusters: dict[str, GraphCluster]) -> str:
    """The deepest cluster that holds all ``modules``."""
    key = common_module(modules)
    # only paths that are clusters (or the root) can hold the fold
    while key and key not in clusters:
        key = key.rpartition(".")[0]
    return key


def _child_towards(module: str, ancestor: str) -> str | None:
    """The child of ``ancestor`` on the path to ``module`` (None when ``module`` is not
    strictly below ``ancestor``)."""
    if module == ancestor:
        return None
    if ancestor:
        if not module.startswith(ancestor + "."):
            return None
        rest = module[len(ancestor) + 1 :]
        return f"{ancestor}.{rest.split('.')[0]}"
    return module.split(".")[0] if module else None


def _under_any(key: str, roots: set[str]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in roots)


def _prune_clusters(
    clusters: Sequence[GraphCluster], nodes: Sequence[GraphNode]
) -> tuple[GraphCluster, ...]:
    """Only clusters that hold a node (directly or through a child cluster), parents first."""
    by_key = {c.key: c for c in clusters}
    used: set[str] = set()
    for node in nodes:
        key = node.module
        while key and key in by_key and key not in used:
            used.add(key)
            key = by_key[key].parent
    ordered: list[GraphCluster] = []
    placed: set[str | None] = {None, ""}
    pending = [c for c in clusters if c.key in used]
    while pending:
        rest = []
        for c in pending:
            if c.parent in placed or c.parent not in by_key:
                ordered.append(c if c.parent in placed else dataclasses.replace(c, parent=None))
                placed.add(c.key)
            else:
                rest.append(c)
        if len(rest) == len(pending):  # a cycle cannot happen; guard against a loop anyway
            ordered.extend(rest)
            break
        pending = rest
    return tuple(ordered)


def _collapse(graph: Graph, depth: int) -> Graph:
    clusters = {c.key: c for c in graph.clusters}
    collapsed: dict[str, GraphNode] = {}
    replace: dict[str, str] = {}
    nodes: list[GraphNode] = []
    for node in graph.nodes:
        module = node.module or ""
        target = _collapse_target(module, depth, clusters)
        if target is None:
            nodes.append(node)
            continue
        replace[node.key] = target
        if target not in collapsed:
            cluster = clusters[target]
            summary = GraphNode(
                key=target,
                label=cluster.label,
                kind="module",
                op=cluster.label,
                module=cluster.parent or "",
                order=node.order,
            )
            collapsed[target] = summary
            nodes.append(summary)
    edges: dict[tuple[str, str], GraphEdge] = {}
    for edge in graph.edges:
        src, dst = replace.get(edge.src, edge.src), replace.get(edge.dst, edge.dst)
        if src != dst:
            edges.setdefault((src, dst), GraphEdge(src, dst, edge.label))
    # a collapsed module produces what its last node that feeds the outside produced
    shapes: dict[str, GraphNode] = {}
    by_key = {n.key: n for n in graph.nodes}
    for edge in graph.edges:
        outer = replace.get(edge.src)
        if outer is not None and replace.get(edge.dst) != outer:
            producer = by_key[edge.src]
            best = shapes.get(outer)
            if best is None or producer.order > best.order:
                shapes[outer] = producer
    nodes = [
        dataclasses.replace(n, shapes=shapes[n.key].shapes, dtypes=shapes[n.key].dtypes)
        if n.key in collapsed and n.key in shapes
        else n
        for n in nodes
    ]
    kept = [
        c
        for c in graph.clusters
        if c.key not in collapsed and not _under_any(c.key, set(collapsed))
    ]
    return dataclasses.replace(
        graph,
        nodes=tuple(nodes),
        edges=tuple(edges.values()),
        clusters=_prune_clusters(kept, nodes),
    )


def _collapse_target(module: str, depth: int, clusters: dict[str, GraphCluster]) -> str | None:
    """The cluster a node in ``module`` collapses into at ``depth``, None to keep it."""
    if not module:
        return None
    key: str | None = module
    chain: list[str] = []
    while key:
        chain.append(key)
        key = clusters[key].parent if key in clusters else None
    chain.reverse()  # outermost first: nesting depth is the position in this chain
    if len(chain) < depth:
        return None
    return chain[depth - 1]


def diff(a: Graph, b: Graph) -> GraphDiff:
    """Nodes added, removed and changed from ``a`` to ``b``, matched by their stable keys."""
    nodes_a = {n.key: n for n in a.nodes}
    nodes_b = {n.key: n for n in b.nodes}
    inputs_a = _inputs(a)
    inputs_b = _inputs(b)
    changed: list[tuple[str, str]] = []
    for key, old in nodes_a.items():
        new = nodes_b.get(key)
        if new is None:
            continue
        what = []
        if old.op != new.op:
            what.append(f"op {old.op} -> {new.op}")
        if old.shapes != new.shapes:
            what.append(f"shapes {format_shapes(old.shapes)} -> {format_shapes(new.shapes)}")
        if old.dtypes != new.dtypes:
            what.append(f"dtypes {', '.join(old.dtypes)} -> {', '.join(new.dtypes)}")
        if inputs_a.get(key, ()) != inputs_b.get(key, ()):
            lost = sorted(set(inputs_a.get(key, ())) - set(inputs_b.get(key, ())))
            gained = sorted(set(inputs_b.get(key, ())) - set(inputs_a.get(key, ())))
            parts = [f"-{k}" for k in lost] + [f"+{k}" for k in gained]
            what.append("inputs " + (" ".join(parts) if parts else "reordered"))
        if what:
            changed.append((key, "; ".join(what)))
    return GraphDiff(
        added=tuple(k for k in nodes_b if k not in nodes_a),
        removed=tuple(k for k in nodes_a if k not in nodes_b),
        changed=tuple(changed),
    )


def _inputs(graph: Graph) -> dict[str, tuple[str, ...]]:
    inputs: dict[str, list[str]] = {}
    for edge in graph.edges:
        inputs.setdefault(edge.dst, []).append(edge.src)
    return {k: tuple(sorted(v)) for k, v in inputs.items()}
