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

The package, step by step: ``ranking`` (1, 2), this module's :func:`layered_layout` (3, and
the whole run), ``ordering`` (4), ``coordinates`` (5), ``routing`` (the edges' polylines);
``clusters`` is the cluster tree they all use, ``geometry`` the boxes and sizes. The tunables
(``NODE_HEIGHT``, ``SWEEPS``, ...) can still be imported from here, but each is read in the
module that defines it (``DUMMY_BUDGET`` here), so patch it there.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from torchscope.render.layout.clusters import _ClusterTree
from torchscope.render.layout.coordinates import ALIGN_SWEEPS as ALIGN_SWEEPS
from torchscope.render.layout.coordinates import _place_x, _rows_y
from torchscope.render.layout.geometry import CLUSTER_CHAR_WIDTH as CLUSTER_CHAR_WIDTH
from torchscope.render.layout.geometry import CLUSTER_FOOTER as CLUSTER_FOOTER
from torchscope.render.layout.geometry import CLUSTER_HEADER as CLUSTER_HEADER
from torchscope.render.layout.geometry import CLUSTER_PAD as CLUSTER_PAD
from torchscope.render.layout.geometry import DUMMY_WIDTH as DUMMY_WIDTH
from torchscope.render.layout.geometry import GAP_X as GAP_X
from torchscope.render.layout.geometry import LABEL_CHAR_WIDTH as LABEL_CHAR_WIDTH
from torchscope.render.layout.geometry import MARGIN as MARGIN
from torchscope.render.layout.geometry import MAX_LABEL_CHARS as MAX_LABEL_CHARS
from torchscope.render.layout.geometry import MAX_SHAPE_CHARS as MAX_SHAPE_CHARS
from torchscope.render.layout.geometry import MIN_NODE_WIDTH as MIN_NODE_WIDTH
from torchscope.render.layout.geometry import NODE_HEIGHT as NODE_HEIGHT
from torchscope.render.layout.geometry import NODE_PADDING as NODE_PADDING
from torchscope.render.layout.geometry import RANK_GAP as RANK_GAP
from torchscope.render.layout.geometry import SHAPE_CHAR_WIDTH as SHAPE_CHAR_WIDTH
from torchscope.render.layout.geometry import Box, EdgePath, Layout, _node_width, node_lines
from torchscope.render.layout.ordering import SWEEPS as SWEEPS
from torchscope.render.layout.ordering import _order
from torchscope.render.layout.ranking import _back_edges, _layers
from torchscope.render.layout.routing import _edge_paths

if TYPE_CHECKING:
    from torchscope.records import Graph, GraphNode

__all__ = ["Box", "EdgePath", "Layout", "layered_layout", "node_lines"]


#: Dummy nodes allowed, beyond which long edges become straight lines: dummies are what
#: make a dense graph slow (a random DAG can need a hundred per edge).
DUMMY_BUDGET = 30_000


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
    # edges that leave one node share their dummies down to where they part (the outputs of
    # a DenseNet layer feed every later layer of its block: one bundle, not a dozen lines),
    # as long as they would be drawn in the same cluster on each row
    shared: dict[tuple[int, int], int] = {}  # (the item above, its cluster) -> dummy
    home_of: dict[tuple[int, int], dict[int, int]] = {}
    budget = DUMMY_BUDGET
    for _, p in long_pairs:  # shortest first
        a, b = flow[p]
        ends = (node_cluster[a], node_cluster[b])
        known = home_of.get(ends)
        if known is None:  # per pair of clusters: the row a dummy is on -> its cluster
            known = home_of[ends] = {}
        for lay in range(layer[a] + 1, layer[b]):
            if lay not in known:
                known[lay] = tree.dummy_home(*ends, lay, span_top, span_bottom)
        homes = [known[lay] for lay in range(layer[a] + 1, layer[b])]
        above = a
        new = 0
        for home in homes:
            found = shared.get((above, home), -1)
            if found < 0:
                new = len(homes) - len(chains[p])
                break
            chains[p].append(found)
            above = found
        if new > budget:
            straight[p] = True
            chains[p] = []
            continue
        budget -= new
        for lay, home in zip(
            range(layer[a] + 1 + len(chains[p]), layer[b]), homes[len(chains[p]) :], strict=True
        ):
            item = shared[(above, home)] = len(item_layer)
            chains[p].append(item)
            item_layer.append(lay)
            item_width.append(DUMMY_WIDTH)
            item_cluster.append(home)
            above = item
    items = len(item_layer)
    up: list[list[int]] = [[] for _ in range(items)]
    down: list[list[int]] = [[] for _ in range(items)]
    linked: set[tuple[int, int]] = set()
    for p, (a, b) in enumerate(flow):
        if straight[p]:
            continue
        path = [a, *chains[p], b]
        for upper, lower in itertools.pairwise(path):
            if (upper, lower) not in linked:
                linked.add((upper, lower))
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
