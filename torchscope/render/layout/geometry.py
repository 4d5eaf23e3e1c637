"""The layout's shapes and sizes: boxes, edge paths, the Layout record, how wide a node is.

All sizes are in SVG user units (pixels at 100% zoom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchscope.records import GraphNode

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
