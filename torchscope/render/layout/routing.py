"""Edge routing: the polyline of every edge, through its dummy nodes."""

from __future__ import annotations

from torchscope.render.layout.geometry import NODE_HEIGHT


def _edge_paths(
    pairs: list[tuple[int, int]],
    flow: list[tuple[int, int]],
    chains: list[list[int]],
    x: list[float],
    y: list[float],
    item_layer: list[int],
    item_width: list[float],
) -> list[tuple[tuple[float, float], ...]]:
    """The polyline of every edge. Edges leave from the bottom of their source and enter
    the top of their destination, spread along the side in the order of where they come
    from, so that they do not all meet in one point; an edge closing a cycle runs upward
    from the top of its source to the bottom of its destination."""
    # where each edge leaves and arrives, sorted along the node's side
    outgoing: dict[int, list[tuple[float, int]]] = {}
    incoming: dict[int, list[tuple[float, int]]] = {}
    for p, (s, d) in enumerate(pairs):
        if flow[p] != (s, d):
            continue
        chain = chains[p]
        first = chain[0] if chain else d
        last = chain[-1] if chain else s
        outgoing.setdefault(s, []).append((x[first] + item_width[first] / 2, p))
        incoming.setdefault(d, []).append((x[last] + item_width[last] / 2, p))
    start_x: dict[int, float] = {}
    end_x: dict[int, float] = {}
    for ports, where in ((outgoing, start_x), (incoming, end_x)):
        for node, edges in ports.items():
            edges.sort()
            step = item_width[node] / (len(edges) + 1)
            for k, (_, p) in enumerate(edges):
                where[p] = x[node] + step * (k + 1)
    paths: list[tuple[tuple[float, float], ...]] = []
    for p, (s, d) in enumerate(pairs):
        points: list[tuple[float, float]] = []
        for i in chains[p]:
            middle = x[i] + item_width[i] / 2
            row = y[item_layer[i]]
            points.append((middle, row))
            points.append((middle, row + NODE_HEIGHT))
        if flow[p] == (s, d):
            points.insert(0, (start_x[p], y[item_layer[s]] + NODE_HEIGHT))
            points.append((end_x[p], y[item_layer[d]]))
        else:
            points.reverse()
            points.insert(0, (x[s] + item_width[s] / 2, y[item_layer[s]]))
            points.append((x[d] + item_width[d] / 2, y[item_layer[d]] + NODE_HEIGHT))
        paths.append(tuple(points))
    return paths
