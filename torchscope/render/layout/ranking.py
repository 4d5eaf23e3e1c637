"""Steps 1 and 2 of the layout: the edges that close cycles, and the layer of every node."""

from __future__ import annotations

from collections import deque

from torchscope.render.layout.clusters import _ClusterTree


def _back_edges(succ: list[list[int]]) -> set[tuple[int, int]]:
    """Edges that close a cycle, found by an iterative depth-first search from each node in
    order (no recursion: graphs can be 10,000 nodes deep)."""
    n = len(succ)
    state = [0] * n  # 0: not seen, 1: on the stack, 2: done
    next_child = [0] * n
    back: set[tuple[int, int]] = set()
    for root in range(n):
        if state[root]:
            continue
        state[root] = 1
        stack = [root]
        while stack:
            v = stack[-1]
            children = succ[v]
            if next_child[v] < len(children):
                w = children[next_child[v]]
                next_child[v] += 1
                if state[w] == 0:
                    state[w] = 1
                    stack.append(w)
                elif state[w] == 1:
                    back.add((v, w))
            else:
                state[v] = 2
                stack.pop()
    return back


def _layers(
    n: int, flow: list[tuple[int, int]], node_cluster: list[int], tree: _ClusterTree
) -> list[int]:
    """Layer of every node: sinks at the end of their longest path from a source, every
    other node then as low as its consumers allow, so that a weight or a side branch is
    drawn just above where it is used rather than at the top of the picture.

    Clusters take part as two extra nodes each, their first and last layer: a cluster
    starts below everything outside it that feeds it and ends above everything outside it
    that it feeds, so that a module whose weights sit above its first op does not share a
    row with the module before it (which would push the two boxes side by side). A cluster
    that cannot keep to this (a module called twice with other work in between) is left to
    the plain longest path.
    """
    count = len(tree.keys)
    enabled = [True] * count
    while True:
        succ = _constraints(n, flow, node_cluster, tree, enabled)
        order = _topological(succ)
        if len(order) == len(succ):
            break
        # a cycle through some clusters' extra nodes: find them, walking back from the end
        pred: list[list[tuple[int, int]]] = [[] for _ in succ]
        for v, edges in enumerate(succ):
            for w, length in edges:
                pred[w].append((v, length))
        stuck = set(range(len(succ))) - set(order)
        caught = stuck - set(_topological(pred))
        disabled = False
        for c in range(count):
            if enabled[c] and (n + 2 * c in caught or n + 2 * c + 1 in caught):
                enabled[c] = False
                disabled = True
        if not disabled:  # cannot happen (flow has no cycle); never loop forever
            enabled = [False] * count
    layer = [0] * len(succ)
    for v in order:
        for w, length in succ[v]:
            if layer[v] + length > layer[w]:
                layer[w] = layer[v] + length
    for v in reversed(order):
        edges = succ[v]
        if edges:
            lowest = layer[edges[0][0]] - edges[0][1]
            for w, length in edges:
                if layer[w] - length < lowest:
                    lowest = layer[w] - length
            layer[v] = lowest
    if n == 0:
        return []
    first = min(layer[:n])
    return [layer[v] - first for v in range(n)]


def _constraints(
    n: int,
    flow: list[tuple[int, int]],
    node_cluster: list[int],
    tree: _ClusterTree,
    enabled: list[bool],
) -> list[list[tuple[int, int]]]:
    """``(successor, least layer difference)`` of every node for the layering: the edges,
    and the first (``n + 2c``) and last (``n + 2c + 1``) layer of every enabled cluster."""
    count = len(tree.keys)
    succ: list[list[tuple[int, int]]] = [[] for _ in range(n + 2 * count)]
    nearest = [-1] * count  # the innermost enabled cluster holding each cluster
    for c in reversed(tree.inner_first):
        parent = tree.parent[c]
        nearest[c] = c if enabled[c] else (nearest[parent] if parent >= 0 else -1)
    for c in range(count):
        parent = tree.parent[c]
        outer = nearest[parent] if parent >= 0 else -1
        if enabled[c] and outer >= 0:
            succ[n + 2 * outer].append((n + 2 * c, 0))
            succ[n + 2 * c + 1].append((n + 2 * outer + 1, 0))
    for v in range(n):
        c = node_cluster[v]
        home = nearest[c] if c >= 0 else -1
        if home >= 0:
            succ[n + 2 * home].append((v, 0))
            succ[v].append((n + 2 * home + 1, 0))
    for a, b in flow:
        succ[a].append((b, 1))
        ca, cb = node_cluster[a], node_cluster[b]
        common = tree.common(ca, cb)
        start = tree.depth[common] if common >= 0 else 0
        leaving = _outermost_enabled(tree.chain[ca], start, enabled) if ca >= 0 else -1
        entering = _outermost_enabled(tree.chain[cb], start, enabled) if cb >= 0 else -1
        if leaving >= 0 or entering >= 0:
            src = n + 2 * leaving + 1 if leaving >= 0 else a
            dst = n + 2 * entering if entering >= 0 else b
            succ[src].append((dst, 1))
    return succ


def _outermost_enabled(chain: tuple[int, ...], start: int, enabled: list[bool]) -> int:
    """The first enabled cluster of ``chain`` from position ``start`` on, -1 for none."""
    for c in chain[start:]:
        if enabled[c]:
            return c
    return -1


def _topological(succ: list[list[tuple[int, int]]]) -> list[int]:
    """Kahn's order of the nodes; those on or after a cycle are missing."""
    remaining = [0] * len(succ)
    for edges in succ:
        for w, _ in edges:
            remaining[w] += 1
    queue = deque(v for v in range(len(succ)) if remaining[v] == 0)
    order: list[int] = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for w, _ in succ[v]:
            remaining[w] -= 1
            if remaining[w] == 0:
                queue.append(w)
    return order
