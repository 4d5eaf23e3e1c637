"""Step 4 of the layout: the order of the items inside each layer (barycenter sweeps)."""

from __future__ import annotations

from torchscope.render.layout.clusters import _cluster_values, _ClusterTree

SWEEPS = 4


def _cluster_prefixes(
    tree: _ClusterTree, cvalue: list[float], offset: int
) -> list[tuple[float | int, ...]]:
    """The start of the sort key of every item in each cluster: the places of the cluster
    and its ancestors, outermost first (see :func:`_order`)."""
    prefixes: list[tuple[float | int, ...]] = [()] * len(tree.keys)
    for c in reversed(tree.inner_first):
        parent = tree.parent[c]
        prefixes[c] = (*(prefixes[parent] if parent >= 0 else ()), cvalue[c], 0, offset + c)
    return prefixes


def _order(
    rows: list[list[int]],
    value: list[float],
    source: list[int],
    up: list[list[int]],
    down: list[list[int]],
    item_cluster: list[int],
    tree: _ClusterTree,
) -> list[float]:
    """The position of every item in its row, centred on 0 (so that rows of different
    lengths line up), after barycenter sweeps down and up.

    Items are sorted by the places of their clusters from the outermost in (a cluster's
    place: the mean position of its items), then by their own. Every member of a cluster
    shares the prefix, so clusters stay together. At equal places, what flows through
    comes before what only feeds in (weights), so the main path keeps to the left and
    weights hang beside it.
    """
    position = list(value)
    items = len(value)
    prefixes = _cluster_prefixes(tree, _cluster_values(position, item_cluster, tree), items)

    def key(i: int) -> tuple[float | int, ...]:
        c = item_cluster[i]
        return (*(prefixes[c] if c >= 0 else ()), value[i], source[i], i)

    def place(row: list[int]) -> bool:
        row.sort(key=key)
        middle = (len(row) - 1) / 2
        changed = False
        for k, i in enumerate(row):
            if position[i] != k - middle:
                changed = True
            position[i] = k - middle
        return changed

    for row in rows:
        place(row)
    for _ in range(SWEEPS):
        changed = False
        for neighbours, sweep in ((up, rows[1:]), (down, rows[-2::-1])):
            prefixes = _cluster_prefixes(tree, _cluster_values(position, item_cluster, tree), items)
            for row in sweep:
                for i in row:
                    near = neighbours[i]
                    if near:
                        total = 0.0
                        for j in near:
                            total += position[j]
                        value[i] = total / len(near)
                    else:
                        value[i] = position[i]
                changed = place(row) or changed
        if not changed:
            break
    return position
