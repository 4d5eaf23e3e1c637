"""Layered (Sugiyama-style) layout of graph records, in pure Python.

Graphviz's ``dot`` takes minutes on graphs of thousands of nodes (densenet's autograd
graph, an unrolled loop); this layout takes seconds on 12,000 nodes. It draws data flowing
top to bottom in five steps, each close to linear in the size of the graph:

1. *Cycles*: an iterative depth-first search finds back edges; they are laid out reversed
   and drawn pointing up.
2. *Layers*: longest path from the sources, then every node that has consumers moves down
   to sit just above the first of them, so weights are drawn next to their op. Each
   cluster takes part with two extra nodes, its first and last layer, so that a module
   starts below what feeds it and ends above what it feeds: consecutive modules get rows
   of their own instead of sharing one (which would put their boxes side by side).
3. *Long edges* get one dummy node per layer they cross, shortest edges first, up to a
   budget; edges past the budget are drawn as straight lines. A dummy lies in the
   innermost cluster of either end that spans its row, so edges run inside boxes.
4. *Order* inside each layer: a few barycenter sweeps down and up. Nodes are sorted by the
   places of their clusters first, so the members of a module stay together and sibling
   clusters keep the same left-to-right order on every layer.
5. *Coordinates*: every cluster, innermost first, packs its members (nodes, dummies, child
   clusters as rectangles) left to right, once greedily from the left and once from the
   right; the average of the two packings is still free of overlaps and centres narrow
   rows. A few passes then slide each member, inside the room its neighbours leave, towards
   the median of where its edges lead. Because a cluster is packed as one rectangle into
   its parent, cluster boxes nest and siblings never overlap.

This is torchscope's one layout: the SVG draws it, and the interactive HTML page
(:mod:`torchscope.render.graph_html`) embeds its positions for each collapse depth and only
draws them.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchscope.records import Graph, GraphNode

__all__ = ["Box", "EdgePath", "Layout", "layered_layout", "node_lines"]

# Geometry, in SVG user units (pixels at 100% zoom).
NODE_HEIGHT = 34.0
LABEL_CHAR_WIDTH = 7.0  # 12px sans-serif, a little generous so text stays inside its box
SHAPE_CHAR_WIDTH = 6.0  # 10px monospace
CLUSTER_CHAR_WIDTH = 6.5  # 11px sans-serif
NODE_PADDING = 16.0
MIN_NODE_WIDTH = 40.0
DUMMY_WIDTH = 6.0
GAP_X = 16.0
RANK_GAP = 34.0
CLUSTER_PAD = 10.0
CLUSTER_HEADER = 20.0  # room for the cluster's label above its first row
CLUSTER_FOOTER = 8.0
MARGIN = 16.0
MAX_LABEL_CHARS = 48
MAX_SHAPE_CHARS = 48
SWEEPS = 4
ALIGN_SWEEPS = 4
#: Dummy nodes allowed, beyond which long edges become straight lines: dummies are what
#: make a dense graph slow (a random DAG can need a hundred per edge).
DUMMY_BUDGET = 30_000


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle: top-left corner ``(x, y)``, y growing downwards."""

    x: float
    y: float
    width: float
    height: float

    @property
    def right(self) -> float:
        """The x of the right side."""
        return self.x + self.width

    @property
    def bottom(self) -> float:
        """The y of the bottom side."""
        return self.y + self.height

    def contains(self, other: Box) -> bool:
        """True when ``other`` lies inside this box (edges may touch)."""
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )


@dataclass(frozen=True, slots=True)
class EdgePath:
    """How one edge is drawn: a polyline from the source's box to the destination's.

    Attributes:
        src: key of the source node.
        dst: key of the destination node.
        points: the polyline, starting on the source's box and ending on the destination's.
        reversed: True for an edge that closes a cycle: it is drawn pointing up.
    """

    src: str
    dst: str
    points: tuple[tuple[float, float], ...]
    reversed: bool = False


@dataclass(frozen=True)
class Layout:
    """Where everything of a graph is drawn.

    Attributes:
        nodes: the box of every node, by key.
        layers: the layer (row, 0 at the top) of every node, by key.
        edges: one path per edge of the graph, in the graph's order; self-loops and edges to
            unknown nodes have none.
        clusters: the box of every cluster that holds a node, by key; a cluster's box holds
            the boxes of its nodes and child clusters.
        width: width of the whole drawing.
        height: its height.
    """

    nodes: dict[str, Box]
    layers: dict[str, int]
    edges: tuple[EdgePath, ...]
    clusters: dict[str, Box]
    width: float
    height: float


def node_lines(node: GraphNode) -> tuple[str, str]:
    """The two lines drawn in a node's box: its label and its shapes, both shortened."""
    label = _shorten(node.label or node.key, MAX_LABEL_CHARS)
    shapes = ", ".join("[" + ", ".join(str(d) for d in shape) + "]" for shape in node.shapes)
    return label, _shorten(shapes, MAX_SHAPE_CHARS)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node_width(node: GraphNode) -> float:
    """Width of a node's box: room for the longer of its two lines."""
    label, shapes = node_lines(node)
    text = max(len(label) * LABEL_CHAR_WIDTH, len(shapes) * SHAPE_CHAR_WIDTH)
    return max(MIN_NODE_WIDTH, text + NODE_PADDING)


def layered_layout(graph: Graph) -> Layout:
    """The layout of ``graph`` as it is (call :func:`torchscope.records.graph_views.view` first to fold
    and collapse): a box per node, a polyline per edge, a box per cluster.

    Deterministic: the same graph gives an identical layout. Nodes with the same key after
    the first, self-loops and edges naming unknown nodes are left out.
    """
    # ---- nodes, clusters and edges as indices
    nodes: list[GraphNode] = []
    index: dict[str, int] = {}
    for node in graph.nodes:
        if node.key not in index:
            index[node.key] = len(nodes)
            nodes.append(node)
    n = len(nodes)
    tree = _ClusterTree(graph)
    node_cluster = [tree.resolve(node.module) for node in nodes]

    pairs: list[tuple[int, int]] = []
    pair_index: dict[tuple[int, int], int] = {}
    edge_pair: list[int] = []  # graph edge -> its pair, -1 when it is not drawn
    for edge in graph.edges:
        s, d = index.get(edge.src), index.get(edge.dst)
        if s is None or d is None or s == d:
            edge_pair.append(-1)
            continue
        p = pair_index.get((s, d))
        if p is None:
            p = pair_index[(s, d)] = len(pairs)
            pairs.append((s, d))
        edge_pair.append(p)

    # ---- 1. cycles, 2. layers
    succ: list[list[int]] = [[] for _ in range(n)]
    for s, d in pairs:
        succ[s].append(d)
    back = _back_edges(succ)
    # the edges as laid out: back edges reversed, so that they all point down
    flow = [(d, s) if (s, d) in back else (s, d) for s, d in pairs]
    layer = _layers(n, flow, node_cluster, tree)

    # ---- 3. dummy nodes for edges that cross layers
    item_layer = list(layer)
    item_width = [_node_width(node) for node in nodes]
    item_cluster = list(node_cluster)
    chains: list[list[int]] = [[] for _ in pairs]  # items between the ends, top to bottom
    straight = [False] * len(pairs)
    long_pairs = sorted(
        (layer[b] - layer[a], p) for p, (a, b) in enumerate(flow) if layer[b] - layer[a] > 1
    )
    span_top, span_bottom = tree.spans(node_cluster, layer)
    budget = DUMMY_BUDGET
    for span, p in long_pairs:
        if span - 1 > budget:
            straight[p] = True
            continue
        budget -= span - 1
        a, b = flow[p]
        for lay in range(layer[a] + 1, layer[b]):
            chains[p].append(len(item_layer))
            item_layer.append(lay)
            item_width.append(DUMMY_WIDTH)
            item_cluster.append(
                tree.dummy_home(node_cluster[a], node_cluster[b], lay, span_top, span_bottom)
            )
    items = len(item_layer)
    up: list[list[int]] = [[] for _ in range(items)]
    down: list[list[int]] = [[] for _ in range(items)]
    for p, (a, b) in enumerate(flow):
        if straight[p]:
            continue
        path = [a, *chains[p], b]
        for upper, lower in itertools.pairwise(path):
            down[upper].append(lower)
            up[lower].append(upper)

    # ---- 4. order inside the layers
    layer_count = max(item_layer) + 1 if items else 0
    rows: list[list[int]] = [[] for _ in range(layer_count)]
    for i in range(items):
        rows[item_layer[i]].append(i)
    value = [float(i) for i in range(n)] + [0.0] * (items - n)
    # a dummy starts next to where its edge starts, in execution order
    for p, chain in enumerate(chains):
        for i in chain:
            value[i] = flow[p][0] + 0.5
    # nodes that only feed in (weights, inputs): drawn beside the main path, not on it
    source = [1 if i < n and not up[i] else 0 for i in range(items)]
    position = _order(rows, value, source, up, down, item_cluster, tree)

    # ---- 5. coordinates
    x, cluster_x, cluster_width, width = _place_x(
        item_layer, item_width, item_cluster, position, source, down, tree
    )
    y, cluster_y, cluster_height, height = _rows_y(layer_count, item_layer, item_cluster, tree)

    boxes = {
        nodes[i].key: Box(x[i], y[item_layer[i]], item_width[i], NODE_HEIGHT) for i in range(n)
    }
    cluster_boxes = {
        tree.keys[c]: Box(cluster_x[c], cluster_y[c], cluster_width[c], cluster_height[c])
        for c in range(len(tree.keys))
        if cluster_width[c] > 0.0
    }
    paths = _edge_paths(pairs, flow, chains, x, y, item_layer, item_width)
    edges = tuple(
        EdgePath(edge.src, edge.dst, paths[p], flow[p] != pairs[p])
        for edge, p in zip(graph.edges, edge_pair, strict=True)
        if p >= 0
    )
    return Layout(
        nodes=boxes,
        layers={nodes[i].key: layer[i] for i in range(n)},
        edges=edges,
        clusters=cluster_boxes,
        width=width,
        height=height,
    )


class _ClusterTree:
    """The graph's clusters as indices: parent, depth and nesting order."""

    def __init__(self, graph: Graph) -> None:
        self.keys: list[str] = []
        self.labels: list[str] = []
        index: dict[str, int] = {}
        parents: list[str | None] = []
        for cluster in graph.clusters:
            # "" is the root, which is drawn as the whole picture, not as a cluster
            if cluster.key and cluster.key not in index:
                index[cluster.key] = len(self.keys)
                self.keys.append(cluster.key)
                self.labels.append(cluster.label)
                parents.append(cluster.parent)
        self.index = index
        count = len(self.keys)
        self.parent = [index.get(p, -1) if p else -1 for p in parents]
        self.depth = [-1] * count
        for c in range(count):
            # walk up until a known depth; a loop of parents is cut where it closes
            path: list[int] = []
            seen: set[int] = set()
            at = c
            while at >= 0 and self.depth[at] < 0 and at not in seen:
                seen.add(at)
                path.append(at)
                at = self.parent[at]
            if at >= 0 and self.depth[at] < 0:
                self.parent[path[-1]] = -1
                at = -1
            base = self.depth[at] if at >= 0 else 0
            for k, member in enumerate(reversed(path)):
                self.depth[member] = base + k + 1
        # ancestors outermost first, the cluster itself last
        self.chain: list[tuple[int, ...]] = []
        for c in range(count):
            chain: list[int] = []
            at = c
            while at >= 0:
                chain.append(at)
                at = self.parent[at]
            self.chain.append(tuple(reversed(chain)))
        #: clusters, innermost first (children before their parents)
        self.inner_first = sorted(range(count), key=lambda c: (-self.depth[c], c))

    def resolve(self, module: str | None) -> int:
        """The cluster a node of ``module`` is drawn in: the module's own, or that of its
        nearest enclosing module that has one; -1 for the top level."""
        key = module or ""
        while key:
            found = self.index.get(key)
            if found is not None:
                return found
            key = key.rpartition(".")[0]
        return -1

    def spans(self, item_cluster: list[int], item_layer: list[int]) -> tuple[list[int], list[int]]:
        """First and last layer of the items in every cluster (-1 for none)."""
        count = len(self.keys)
        top = [-1] * count
        bottom = [-1] * count
        for i, c in enumerate(item_cluster):
            lay = item_layer[i]
            if c >= 0:
                if top[c] < 0 or lay < top[c]:
                    top[c] = lay
                if lay > bottom[c]:
                    bottom[c] = lay
        for c in self.inner_first:
            p = self.parent[c]
            if p >= 0 and top[c] >= 0:
                if top[p] < 0 or top[c] < top[p]:
                    top[p] = top[c]
                if bottom[c] > bottom[p]:
                    bottom[p] = bottom[c]
        return top, bottom

    def dummy_home(self, a: int, b: int, lay: int, top: list[int], bottom: list[int]) -> int:
        """The cluster a dummy node on ``lay`` of an edge from cluster ``a`` to cluster ``b``
        is drawn in: the innermost cluster of either end whose nodes span ``lay``, so that an
        edge into a module runs inside the module's box rather than beside it."""
        best = self.common(a, b)
        best_depth = self.depth[best] if best >= 0 else 0
        for end in (b, a):
            at = end
            while at >= 0 and self.depth[at] > best_depth:
                if top[at] <= lay <= bottom[at]:
                    best, best_depth = at, self.depth[at]
                    break
                at = self.parent[at]
        return best

    def holds(self, outer: int, inner: int) -> bool:
        """True when cluster ``inner`` is ``outer`` or nested in it (-1: the top level)."""
        if inner < 0:
            return False
        depth = self.depth[outer]
        return depth <= self.depth[inner] and self.chain[inner][depth - 1] == outer

    def common(self, a: int, b: int) -> int:
        """The innermost cluster holding both ``a`` and ``b`` (-1: the top level)."""
        if a < 0 or b < 0:
            return -1
        found = -1
        for x, y in zip(self.chain[a], self.chain[b], strict=False):
            if x != y:
                break
            found = x
        return found


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


def _cluster_values(
    position: list[float], item_cluster: list[int], tree: _ClusterTree
) -> list[float]:
    """Mean position of every cluster's items, its child clusters' included."""
    count = len(tree.keys)
    total = [0.0] * count
    members = [0] * count
    for i, c in enumerate(item_cluster):
        if c >= 0:
            total[c] += position[i]
            members[c] += 1
    for c in tree.inner_first:
        p = tree.parent[c]
        if p >= 0:
            total[p] += total[c]
            members[p] += members[c]
    return [total[c] / members[c] if members[c] else 0.0 for c in range(count)]


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


def _place_x(
    item_layer: list[int],
    item_width: list[float],
    item_cluster: list[int],
    position: list[float],
    source: list[int],
    down: list[list[int]],
    tree: _ClusterTree,
) -> tuple[list[float], list[float], list[float], float]:
    """x of every item, x and width of every cluster, width of the drawing.

    Each cluster, innermost first, places its members (items and child clusters, a child
    cluster as one rectangle spanning its rows) left to right in the order of their
    positions, each as far left as the members already placed on its rows allow; then the
    same from the right; and takes the average, which keeps every gap and centres short
    rows under long ones. A few passes then slide each member, within the room its
    neighbours on the same rows leave it, towards the median of where its edges lead.
    """
    items = len(item_layer)
    count = len(tree.keys)
    total = items + count  # members are numbered items first, then clusters
    top = [0] * total
    bottom = [0] * total
    width = [0.0] * total
    for i in range(items):
        top[i] = bottom[i] = item_layer[i]
        width[i] = item_width[i]
    span_top, span_bottom = tree.spans(item_cluster, item_layer)
    for c in range(count):
        top[items + c] = span_top[c]
        bottom[items + c] = span_bottom[c]
    members: list[list[int]] = [[] for _ in range(count + 1)]  # the last: the top level
    for i in range(items):
        members[item_cluster[i]].append(i)
    for c in tree.inner_first:
        if span_top[c] >= 0:  # a cluster without items is not drawn
            members[tree.parent[c]].append(items + c)
    order_value = position + _cluster_values(position, item_cluster, tree)

    relative = [0.0] * total  # x inside the enclosing cluster's box
    left_of: list[list[int]] = [[] for _ in range(total)]  # next member to the left, per row
    right_of: list[list[int]] = [[] for _ in range(total)]
    lower = [0.0] * (count + 1)  # room for members inside each cluster, the top level last
    upper = [0.0] * (count + 1)

    def pack(group: list[int]) -> float:
        group.sort(key=lambda m: (order_value[m], m))
        low = top[group[0]]
        high = bottom[group[0]]
        for m in group:
            if top[m] < low:
                low = top[m]
            if bottom[m] > high:
                high = bottom[m]
        last = [-1] * (high - low + 1)  # the member placed last on each row
        sky = [0.0] * (high - low + 1)
        left: list[float] = []
        extent = 0.0
        for m in group:
            x = 0.0
            for k in range(top[m] - low, bottom[m] - low + 1):
                if sky[k] > x:
                    x = sky[k]
                neighbour = last[k]
                if neighbour >= 0 and (not left_of[m] or left_of[m][-1] != neighbour):
                    left_of[m].append(neighbour)
                    right_of[neighbour].append(m)
                last[k] = m
            left.append(x)
            if x + width[m] > extent:
                extent = x + width[m]
            for k in range(top[m] - low, bottom[m] - low + 1):
                sky[k] = x + width[m] + GAP_X
        sky = [extent] * (high - low + 1)
        for g in range(len(group) - 1, -1, -1):
            m = group[g]
            x = extent
            for k in range(top[m] - low, bottom[m] - low + 1):
                if sky[k] < x:
                    x = sky[k]
            x -= width[m]
            relative[m] = (left[g] + x) / 2
            for k in range(top[m] - low, bottom[m] - low + 1):
                sky[k] = x - GAP_X
        return extent

    for c in tree.inner_first:
        own = items + c
        if span_top[c] < 0:
            continue
        inner = pack(members[c])
        width[own] = max(inner, len(tree.labels[c]) * CLUSTER_CHAR_WIDTH) + 2 * CLUSTER_PAD
        shift = (width[own] - inner) / 2
        for m in members[c]:
            relative[m] += shift
        lower[c] = CLUSTER_PAD
        upper[c] = width[own] - CLUSTER_PAD
    total_width = 2 * MARGIN
    if members[-1]:
        total_width += pack(members[-1])
        for m in members[-1]:
            relative[m] += MARGIN
    lower[-1] = MARGIN
    upper[-1] = total_width - MARGIN

    # absolute x, outermost clusters first
    absolute = [0.0] * total
    outer_first = tree.inner_first[::-1]
    for c in outer_first:
        parent = tree.parent[c]
        absolute[items + c] = relative[items + c] + (
            absolute[items + parent] if parent >= 0 else 0.0
        )
    for i in range(items):
        c = item_cluster[i]
        absolute[i] = relative[i] + (absolute[items + c] if c >= 0 else 0.0)

    _align(
        members,
        outer_first,
        items,
        relative,
        absolute,
        width,
        left_of,
        right_of,
        lower,
        upper,
        item_cluster,
        source,
        down,
        tree,
    )
    cluster_width = [width[items + c] if span_top[c] >= 0 else 0.0 for c in range(count)]
    return absolute[:items], absolute[items:], cluster_width, total_width


def _align(
    members: list[list[int]],
    outer_first: list[int],
    items: int,
    relative: list[float],
    absolute: list[float],
    width: list[float],
    left_of: list[list[int]],
    right_of: list[list[int]],
    lower: list[float],
    upper: list[float],
    item_cluster: list[int],
    source: list[int],
    down: list[list[int]],
    tree: _ClusterTree,
) -> None:
    """Slide members towards the median of where their edges lead, in place.

    Each member only moves inside the room left by its neighbours on its rows and by its
    cluster's box, so nothing comes to overlap and boxes keep their size. An op lines up
    with the path its data comes along, not with its weights (they line up with it).
    """
    count = len(tree.keys)
    # the edges that leave each member: (end inside, end outside)
    ports: list[list[tuple[int, int]]] = [[] for _ in range(items + count)]
    for a in range(items):
        for b in down[a]:
            ports[a].append((a, b))
            ports[b].append((b, a))
            ca, cb = item_cluster[a], item_cluster[b]
            # every cluster holding one end but not the other is crossed by the edge
            for inside, outside, start, other in ((a, b, ca, cb), (b, a, cb, ca)):
                at = start
                while at >= 0 and not tree.holds(at, other):
                    ports[items + at].append((inside, outside))
                    at = tree.parent[at]
    for m in range(items):
        along = [(i, o) for i, o in ports[m] if not source[o]]
        if along:
            ports[m] = along
    descendants: list[list[int]] = [[] for _ in range(count)]  # items, then clusters
    for i in range(items):
        at = item_cluster[i]
        while at >= 0:
            descendants[at].append(i)
            at = tree.parent[at]
    for c in range(count):
        at = tree.parent[c]
        while at >= 0:
            descendants[at].append(items + c)
            at = tree.parent[at]
    containers = [count, *outer_first]  # the top level (members[-1]) first
    for sweep in range(ALIGN_SWEEPS):
        for container in containers:
            group = members[container] if container < count else members[-1]
            inner = container if container < count else -1
            for g in range(len(group)):
                m = group[g] if sweep % 2 == 0 else group[len(group) - 1 - g]
                if not ports[m]:
                    continue
                offsets = sorted(
                    absolute[o] + width[o] / 2 - absolute[i] - width[i] / 2 for i, o in ports[m]
                )
                middle = len(offsets) // 2
                shift = (
                    offsets[middle]
                    if len(offsets) % 2
                    else (offsets[middle - 1] + offsets[middle]) / 2
                )
                low = lower[inner]
                for neighbour in left_of[m]:
                    if relative[neighbour] + width[neighbour] + GAP_X > low:
                        low = relative[neighbour] + width[neighbour] + GAP_X
                high = upper[inner] - width[m]
                for neighbour in right_of[m]:
                    if relative[neighbour] - GAP_X - width[m] < high:
                        high = relative[neighbour] - GAP_X - width[m]
                target = relative[m] + shift
                if target < low:
                    target = low
                if target > high:
                    target = high
                moved = target - relative[m]
                if moved == 0.0:
                    continue
                relative[m] = target
                absolute[m] += moved
                if m >= items:
                    for d in descendants[m - items]:
                        absolute[d] += moved


def _rows_y(
    layer_count: int, item_layer: list[int], item_cluster: list[int], tree: _ClusterTree
) -> tuple[list[float], list[float], list[float], float]:
    """y of every row, y and height of every cluster, height of the drawing.

    Rows are spaced so that the labels of the clusters that start on a row (nested ones
    stacked) fit above it, and their bottom padding below the row where they end.
    """
    count = len(tree.keys)
    top, bottom = tree.spans(item_cluster, item_layer)
    # margins: a cluster's header sits above those of its children that start on its row
    head = [CLUSTER_HEADER] * count
    foot = [CLUSTER_FOOTER] * count
    for c in tree.inner_first:
        p = tree.parent[c]
        if p >= 0 and top[c] >= 0:
            if top[c] == top[p] and head[c] + CLUSTER_HEADER > head[p]:
                head[p] = head[c] + CLUSTER_HEADER
            if bottom[c] == bottom[p] and foot[c] + CLUSTER_FOOTER > foot[p]:
                foot[p] = foot[c] + CLUSTER_FOOTER
    above = [0.0] * layer_count
    below = [0.0] * layer_count
    for c in range(count):
        if top[c] >= 0:
            if head[c] > above[top[c]]:
                above[top[c]] = head[c]
            if foot[c] > below[bottom[c]]:
                below[bottom[c]] = foot[c]
    y = [0.0] * layer_count
    at = MARGIN
    for lay in range(layer_count):
        at += above[lay]
        y[lay] = at
        at += NODE_HEIGHT + below[lay] + RANK_GAP
    height = at - RANK_GAP + MARGIN if layer_count else 2 * MARGIN
    cluster_y = [0.0] * count
    cluster_height = [0.0] * count
    for c in range(count):
        if top[c] >= 0:
            cluster_y[c] = y[top[c]] - head[c]
            cluster_height[c] = y[bottom[c]] + NODE_HEIGHT + foot[c] - cluster_y[c]
    return y, cluster_y, cluster_height, height


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
