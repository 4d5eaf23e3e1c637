"""Pure transformations of graph records: folding repeated steps, collapsing clusters to a
depth, finding repeats in a sequence, and diffing two graphs.

Imports only :mod:`torchscope.records.graph` and :mod:`torchscope._util.format`, so
collectors and renderers can both use it.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Collection, Hashable, Iterable, Sequence

import torch
from torch.utils._python_dispatch import _disable_current_modes

from torchscope._util.format import format_shapes
from torchscope.records.graph import Graph, GraphCluster, GraphDiff, GraphEdge, GraphFold, GraphNode

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
    O(n * max_period), vectorised over both.
    """
    n = len(signatures)
    ids: dict[Hashable, int] = {}
    codes = [ids.setdefault(s, len(ids)) for s in signatures]
    candidates: list[tuple[int, int, int, int]] = []  # (-covered, period, start, count)
    longest = min(max_period, n // min_count)
    # all periods at once, in chunks of about 4M comparisons: a few tensor ops per chunk
    # instead of per period (a graph of 2k nodes searched 256 periods one by one in 30 ms).
    # On the CPU and out of reach of the caller's torch context (a device context, a
    # dispatch mode): a record read under `with torch.device("meta")` is still searched
    chunk = max(1, (1 << 22) // max(n, 1))
    with torch._C.DisableTorchFunction(), _disable_current_modes():
        seq = torch.tensor(codes, dtype=torch.int64, device="cpu")
        for low in range(1, longest + 1, chunk):
            candidates.extend(_stretches(seq, low, min(longest, low + chunk - 1), min_count))
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


def _stretches(
    seq: torch.Tensor, low: int, high: int, min_count: int
) -> list[tuple[int, int, int, int]]:
    """``(-covered, period, start, count)`` of every stretch, for each period from ``low`` to
    ``high``, where ``seq[i] == seq[i + period]`` long enough to hold ``min_count`` blocks.

    A stretch of length L starting at s holds (L + period) // period back-to-back blocks
    starting at s.
    """
    n = len(seq)
    if not n:
        return []
    padded = torch.cat([seq, torch.full((high,), -1, dtype=seq.dtype, device=seq.device)])
    windows = padded.unfold(0, high + 1, 1)  # windows[i, k] == padded[i + k], a view
    framed = torch.zeros(high - low + 1, n + 2, dtype=torch.int8, device=seq.device)
    framed[:, 1:-1] = (windows[:, low:] == seq[:, None]).T
    change = torch.diff(framed, dim=1)
    rows, columns = torch.nonzero(change, as_tuple=True)  # row-major: rises and falls alternate
    if not len(rows):
        return []
    rising = change[rows, columns] == 1
    periods = rows[rising] + low
    starts = columns[rising]
    lengths = columns[~rising] - starts
    long_enough = lengths >= (min_count - 1) * periods
    periods, starts, lengths = periods[long_enough], starts[long_enough], lengths[long_enough]
    counts = (lengths + periods) // periods
    return [
        (-(count * period), period, start, count)
        for period, start, count in zip(
            periods.tolist(), starts.tolist(), counts.tolist(), strict=True
        )
    ]


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
    ``depth`` (1: the model's direct children) that holds nodes collapsed into one node.
    Fold clusters do not count as a nesting level."""
    check_depth(depth)
    result = graph
    fold_clusters: set[str] = set()
    if fold and graph.folds:
        result, fold_clusters = _apply_folds(result)
    if depth is not None:
        result = _collapse(result, depth, fold_clusters)
    return result


def _fold_cluster_key(index: int, taken: set[str]) -> str:
    """The key of the cluster that draws ``graph.folds[index]`` once: ``fold0``, or with
    leading ``_`` while that is a module's key too (a model may have a ``fold0``)."""
    key = f"fold{index}"
    while key in taken:
        key = "_" + key
    taken.add(key)
    return key


def _chain(module: str | None, clusters: dict[str, GraphCluster]) -> list[str]:
    """The clusters holding a node of ``module``, outermost first (by cluster parents, so a
    container that was never called, such as a ModuleList looped over, is skipped)."""
    chain: list[str] = []
    key = module or ""
    while key and key in clusters and key not in chain:
        chain.append(key)
        key = clusters[key].parent or ""
    chain.reverse()
    return chain


def _apply_folds(graph: Graph) -> tuple[Graph, set[str]]:
    clusters = {c.key: c for c in graph.clusters}
    module_of = {n.key: n.module for n in graph.nodes}
    replace: dict[str, str] = {}  # node of a later repetition -> its counterpart in the first
    instance_of: dict[str, list[tuple[int, int]]] = {}  # node -> [(fold, repetition)]
    fold_cluster_of: dict[str, str] = {}  # first-repetition node -> innermost fold cluster
    move_into: dict[str, str] = {}  # first-repetition node drawn in the fold cluster itself
    common_of: dict[str, str] = {}  # fold cluster -> the cluster holding every repetition
    new_clusters: list[GraphCluster] = []
    reparent: dict[str, str] = {}
    dropped_clusters: set[str] = set()
    known = set(module_of)
    taken = set(clusters) | known
    for f, fold in enumerate(graph.folds):
        if not all(key in known for inst in fold.instances for key in inst):
            continue  # a fold of another view of this graph (its nodes were collapsed)
        fold_key = _fold_cluster_key(f, taken)
        chains = [_chain(module_of[k], clusters) for inst in fold.instances for k in inst]
        common_chain: list[str] = []
        for column in zip(*chains, strict=False):
            if len(set(column)) != 1:
                break
            common_chain.append(column[0])
        common = common_chain[-1] if common_chain else ""
        depth = len(common_chain)
        # a fold nested in the first repetition of another, in the same module, hangs inside
        # that fold's cluster; one in a deeper module hangs in that module's cluster
        outer = _outer_fold(fold, fold_cluster_of)
        parent = outer if outer and common_of[outer] == common else common
        common_of[fold_key] = common
        new_clusters.append(GraphCluster(fold_key, f"{fold.label} ×{fold.count}", parent or None))
        for r, inst in enumerate(fold.instances):
            for key in inst:
                instance_of.setdefault(key, []).append((f, r))
        for key in fold.instances[0]:
            fold_cluster_of[key] = fold_key
        for inst in fold.instances[1:]:
            for key, first in zip(inst, fold.instances[0], strict=True):
                replace.setdefault(key, first)
        # the clusters each repetition has of its own hang below the fold (first) or go; a
        # node in no such cluster (in the module holding the run, or in one the run's
        # repetitions straddle) is drawn in the fold itself
        owners: dict[str, set[int]] = {}
        for r, inst in enumerate(fold.instances):
            for chain in chains[r * len(inst) : (r + 1) * len(inst)]:
                for key in chain[depth:]:
                    owners.setdefault(key, set()).add(r)
        for r, inst in enumerate(fold.instances):
            for key, chain in zip(inst, chains[r * len(inst) : (r + 1) * len(inst)], strict=True):
                top = next((c for c in chain[depth:] if owners[c] == {r}), None)
                if top is None:
                    if r == 0:
                        move_into[key] = fold_key
                elif r == 0:
                    reparent[top] = fold_key
                else:
                    dropped_clusters.add(top)

    nodes = []
    for node in graph.nodes:
        if node.key in replace:
            continue
        if node.key in move_into:
            node = dataclasses.replace(node, module=move_into[node.key])
        nodes.append(node)

    def across(src: str, dst: str) -> bool:
        """Whether the edge goes from one repetition of a fold into another."""
        reps = dict(instance_of.get(dst, ()))
        return any(f in reps and reps[f] != r for f, r in instance_of.get(src, ()))

    edges: dict[tuple[str, str], GraphEdge] = {}
    for edge in graph.edges:
        src, dst = edge.src, edge.dst
        # map both ends into the first repetition step by step: with nested folds an edge of
        # a later outer repetition lands in the first, where it may join two inner ones
        while not (crossing := across(src, dst)) and (src in replace or dst in replace):
            src, dst = replace.get(src, src), replace.get(dst, dst)
        if crossing:
            continue  # from one repetition into the next: the count says it
        if src != dst:
            edges.setdefault((src, dst), GraphEdge(src, dst, edge.label))
    kept_clusters = []
    for cluster in graph.clusters:
        if cluster.key in dropped_clusters or any(
            c in dropped_clusters for c in _chain(cluster.key, clusters)
        ):
            continue
        if cluster.key in reparent:
            cluster = dataclasses.replace(cluster, parent=reparent[cluster.key])
        kept_clusters.append(cluster)
    folded = dataclasses.replace(
        graph,
        nodes=tuple(nodes),
        edges=tuple(edges.values()),
        clusters=_prune_clusters((*kept_clusters, *new_clusters), nodes),
        folds=(),
    )
    return folded, {c.key for c in new_clusters}


def _outer_fold(fold: GraphFold, fold_cluster_of: dict[str, str]) -> str:
    """The fold cluster whose first repetition holds all of ``fold`` ("" when none)."""
    outer = {fold_cluster_of.get(key, "") for inst in fold.instances for key in inst}
    return outer.pop() if len(outer) == 1 else ""


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


def _collapse(graph: Graph, depth: int, fold_clusters: Collection[str] = ()) -> Graph:
    clusters = {c.key: c for c in graph.clusters}
    collapsed: dict[str, GraphNode] = {}
    replace: dict[str, str] = {}
    nodes: list[GraphNode] = []
    for node in graph.nodes:
        module = node.module or ""
        target = _collapse_target(module, depth, clusters, fold_clusters)
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
        if c.key not in collapsed and not any(k in collapsed for k in _chain(c.key, clusters))
    ]
    return dataclasses.replace(
        graph,
        nodes=tuple(nodes),
        edges=tuple(edges.values()),
        clusters=_prune_clusters(kept, nodes),
        folds=_collapse_folds(graph.folds, replace),
    )


def _collapse_folds(folds: tuple[GraphFold, ...], replace: dict[str, str]) -> tuple[GraphFold, ...]:
    """The folds of a collapsed graph: each repetition's nodes mapped to what stands for them
    (``encoder.layers.3``, one node per block), kept while the repetitions stay apart."""
    kept = []
    for fold in folds:
        instances = tuple(
            tuple(dict.fromkeys(replace.get(k, k) for k in inst)) for inst in fold.instances
        )
        seen: set[str] = set()
        apart = True
        for inst in instances:
            if seen.intersection(inst) or len(inst) != len(instances[0]):
                apart = False
                break
            seen.update(inst)
        if apart:
            kept.append(dataclasses.replace(fold, instances=instances))
    return tuple(kept)


def _collapse_target(
    module: str, depth: int, clusters: dict[str, GraphCluster], fold_clusters: Collection[str]
) -> str | None:
    """The cluster a node in ``module`` collapses into at ``depth``, None to keep it."""
    # nesting depth is the position in the chain of modules holding it, fold clusters aside
    chain = [key for key in _chain(module, clusters) if key not in fold_clusters]
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
