"""Standalone SVG pictures of graph records, laid out by :mod:`torchscope.render.layout`
(no Graphviz needed).

How to read the picture:

- Boxes are nodes; the first line is the label, the second the shapes of what the node
  produces (``[1, 64, 56, 56]``).
- Fill by kind: parameters light blue, inputs light green, outputs light yellow, ops white
  with a grey outline, collapsed modules lavender.
- When the graph was captured with gradients, parameters and ops are filled by the state
  of the gradient they received instead: shades of green for a finite, non-zero gradient
  (paler is smaller: the shade follows log10 of its norm), orange when it is all zeros,
  red for NaN or infinity, grey with a dashed outline when none arrived. The node where the
  trouble started (``graph.grad_origin``) has a thick red outline.
- Rounded rectangles with a label at the top are modules (clusters); a label ending in
  ``×12`` is a step that ran 12 times, drawn once.
- Arrows show data flowing from producer to consumer, top to bottom; an arrow pointing up
  closes a cycle.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from torchscope.records.graph_views import view
from torchscope.render.layout import NODE_HEIGHT, Layout, layered_layout, node_lines

if TYPE_CHECKING:
    from torchscope.records import Graph, GraphNode

__all__ = ["PALETTE", "grad_fill", "graph_to_svg", "layout_to_svg", "node_style"]

#: Colours of the picture; graph_html hands the same table to its script.
PALETTE: dict[str, dict[str, str]] = {
    "fill": {
        "parameter": "#cfe2ff",
        "input": "#d3f4d3",
        "output": "#fff2a8",
        "op": "#ffffff",
        "module": "#e4dcf7",
    },
    "stroke": {
        "parameter": "#4a78b5",
        "input": "#3d8b3d",
        "output": "#b39b00",
        "op": "#888888",
        "module": "#7b68b0",
    },
    "grad": {
        "none": "#eeeeee",
        "zero": "#ffb347",
        "nan": "#ff5c5c",
        "inf": "#ff5c5c",
    },
    "other": {
        "cluster_fill": "#f7f7fb",
        "cluster_fold_fill": "#fdf6e9",
        "cluster_stroke": "#b8b8cc",
        "edge": "#666666",
        "origin": "#d00000",
        "text": "#1a1a1a",
        "muted": "#555555",
        "warning": "#9a5b00",
    },
}

#: Gradient norms are shaded from 1e-8 (palest green) to 1e2 (darkest).
GRAD_LOG_RANGE = (-8.0, 2.0)

_FOLD_LABEL = re.compile(r"×\d+$")
# characters XML 1.0 forbids even when escaped
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

HEADER_LINE = 18.0
CHAR_WIDTH = 7.0
TITLE_CHAR_WIDTH = 8.5  # 14px bold


def grad_fill(norm: float | None) -> str:
    """The green of a healthy gradient: paler for smaller norms, on a log scale."""
    if norm is None or not norm > 0 or math.isinf(norm):
        return "hsl(120, 50%, 70%)"
    low, high = GRAD_LOG_RANGE
    t = min(1.0, max(0.0, (math.log10(norm) - low) / (high - low)))
    return f"hsl(120, 50%, {92 - 42 * t:.0f}%)"


def node_style(node: GraphNode, *, origin: bool = False) -> tuple[str, str, bool]:
    """``(fill, outline, dashed)`` of a node, by its kind or, for parameters and ops with a
    recorded gradient, by the gradient's status."""
    fill = PALETTE["fill"].get(node.kind, "#ffffff")
    stroke = PALETTE["stroke"].get(node.kind, "#888888")
    dashed = False
    if node.grad is not None and node.kind in ("parameter", "op"):
        status = node.grad.status
        if status == "ok":
            fill = grad_fill(node.grad.norm)
        else:
            fill = PALETTE["grad"].get(status, fill)
            dashed = status == "none"
    if origin:
        stroke = PALETTE["other"]["origin"]
    return fill, stroke, dashed


def graph_to_svg(graph: Graph, *, fold: bool = True, depth: int | None = None) -> str:
    """An SVG document of ``graph``, laid out by
    :func:`~torchscope.render.layout.layered_layout`: repeated steps folded (``fold``) and,
    with ``depth``, the modules at that nesting level (1: the model's direct children)
    collapsed into one node each, as :func:`torchscope.records.graph_views.view` does."""
    shown = view(graph, fold=fold, depth=depth)
    return layout_to_svg(shown, layered_layout(shown))


def _text(value: object) -> str:
    """``value`` as XML character data or attribute value."""
    text = _NOT_XML.sub("\ufffd", str(value))
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def _num(value: float) -> str:
    """A coordinate with one decimal at most (``12``, ``12.5``): smaller files."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _tooltip(node: GraphNode) -> str:
    """What hovering a node shows: key, op, module, shapes and dtypes, gradient, facts."""
    lines = [node.key]
    if node.op and node.op != node.label:
        lines.append(f"op: {node.op}")
    if node.module:
        lines.append(f"module: {node.module}")
    for shape, dtype in zip(node.shapes, node.dtypes or ("",) * len(node.shapes), strict=False):
        lines.append(f"[{', '.join(str(d) for d in shape)}] {dtype}".rstrip())
    if node.grad is not None:
        norm = "-" if node.grad.norm is None else f"{node.grad.norm:.3g}"
        lines.append(f"grad: {node.grad.status}, norm {norm}")
    lines.extend(f"{name}: {value}" for name, value in node.attrs)
    return "\n".join(lines)


def _legend(graph: Graph) -> list[tuple[str, str, str, bool]]:
    """``(name, fill, outline, dashed)`` for the colours the picture uses."""
    kinds = {node.kind for node in graph.nodes}
    entries = [
        (kind, PALETTE["fill"][kind], PALETTE["stroke"][kind], False)
        for kind in PALETTE["fill"]
        if kind in kinds
    ]
    statuses = {node.grad.status for node in graph.nodes if node.grad is not None}
    if statuses:
        grey = PALETTE["stroke"]["op"]
        if "ok" in statuses:
            entries.append(("grad ok (small)", grad_fill(1e-7), grey, False))
            entries.append(("grad ok (large)", grad_fill(10.0), grey, False))
        for status in ("zero", "nan", "inf"):
            if status in statuses:
                entries.append((f"grad {status}", PALETTE["grad"][status], grey, False))
        if "none" in statuses:
            entries.append(("no grad", PALETTE["grad"]["none"], grey, True))
    return entries


def layout_to_svg(graph: Graph, layout: Layout) -> str:
    """A standalone SVG document drawing ``graph`` where ``layout`` places it.

    Every node is a ``<g class="node" data-key="...">`` (clusters ``class="cluster"``,
    edges ``<polyline class="edge" data-src="..." data-dst="...">``), so the picture can be
    styled and scripted. The module docstring explains the colours.
    """
    other = PALETTE["other"]
    legend = _legend(graph)
    edge_count = len(graph.edges)
    title = f"{graph.title} — {graph.kind} graph, {len(graph.nodes)} nodes, {edge_count} edges"
    header_lines = 1 + (1 if legend else 0) + len(graph.warnings)
    header = 10.0 + HEADER_LINE * header_lines
    legend_width = 0.0
    for name, *_ in legend:
        legend_width += 22 + len(name) * CHAR_WIDTH + 12
    width = max(
        layout.width,
        16 + len(title) * TITLE_CHAR_WIDTH,
        16 + legend_width,
        *(16 + len(w) * CHAR_WIDTH for w in graph.warnings),
    )
    height = layout.height + header
    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(width)}" '
        f'height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{_text(title)}</title>",
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{other["edge"]}"/>'
        "</marker>",
        "</defs>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        '<g class="header">',
        f'<text x="16" y="{_num(8 + HEADER_LINE * 0.8)}" font-size="14" font-weight="bold" '
        f'fill="{other["text"]}">{_text(title)}</text>',
    ]
    line_y = 8 + HEADER_LINE
    if legend:
        x = 16.0
        for name, fill, stroke, dashed in legend:
            dash = ' stroke-dasharray="3,2"' if dashed else ""
            out.append(
                f'<rect x="{_num(x)}" y="{_num(line_y + 3)}" width="16" height="11" rx="3" '
                f'fill="{fill}" stroke="{stroke}"{dash}/>'
                f'<text x="{_num(x + 22)}" y="{_num(line_y + 13)}" font-size="11" '
                f'fill="{other["muted"]}">{_text(name)}</text>'
            )
            x += 22 + len(name) * CHAR_WIDTH + 12
        line_y += HEADER_LINE
    for warning in graph.warnings:
        out.append(
            f'<text class="warning" x="16" y="{_num(line_y + 13)}" font-size="11" '
            f'fill="{other["warning"]}">⚠ {_text(warning)}</text>'
        )
        line_y += HEADER_LINE
    out.append("</g>")
    out.append(f'<g class="graph" transform="translate(0,{_num(header)})">')

    # clusters, outermost first so that inner ones are drawn on top
    # (graph.clusters lists parents before children)
    drawn: set[str] = set()
    for cluster in graph.clusters:
        box = layout.clusters.get(cluster.key)
        if box is None or cluster.key in drawn:
            continue
        drawn.add(cluster.key)
        key, label = cluster.key, cluster.label
        fill = other["cluster_fold_fill"] if _FOLD_LABEL.search(label) else other["cluster_fill"]
        out.append(
            f'<g class="cluster" data-key="{_text(key)}"><title>{_text(key)}</title>'
            f'<rect x="{_num(box.x)}" y="{_num(box.y)}" width="{_num(box.width)}" '
            f'height="{_num(box.height)}" rx="8" fill="{fill}" fill-opacity="0.6" '
            f'stroke="{other["cluster_stroke"]}"/>'
            f'<text x="{_num(box.x + 8)}" y="{_num(box.y + 14)}" font-size="11" '
            f'fill="{other["muted"]}">{_text(label)}</text></g>'
        )

    written: dict[tuple[float, float], str] = {}  # bundled edges repeat their bends
    for path in layout.edges:
        coordinates = []
        for point in path.points:
            text = written.get(point)
            if text is None:
                text = written[point] = f"{_num(point[0])},{_num(point[1])}"
            coordinates.append(text)
        points = " ".join(coordinates)
        dash = ' stroke-dasharray="5,3"' if path.reversed else ""
        out.append(
            f'<polyline class="edge" data-src="{_text(path.src)}" data-dst="{_text(path.dst)}" '
            f'points="{points}" fill="none" stroke="{other["edge"]}" stroke-width="1"'
            f'{dash} marker-end="url(#arrow)"/>'
        )
    labels: dict[tuple[str, str], str] = {}
    for edge in graph.edges:
        if edge.label:
            labels.setdefault((edge.src, edge.dst), edge.label)
    for path in layout.edges:
        text = labels.pop((path.src, path.dst), None)
        if text is None or len(path.points) < 2:
            continue
        (ax, ay), (bx, by) = path.points[0], path.points[1]
        out.append(
            f'<text class="edge-label" x="{_num((ax + bx) / 2 + 4)}" y="{_num((ay + by) / 2)}" '
            f'font-size="10" fill="{other["muted"]}">{_text(text)}</text>'
        )

    drawn = set()
    for node in graph.nodes:
        box = layout.nodes.get(node.key)
        if box is None or node.key in drawn:  # (a repeated key is drawn once, like its box)
            continue
        drawn.add(node.key)
        fill, stroke, dashed = node_style(node, origin=node.key == graph.grad_origin)
        label, shapes = node_lines(node)
        stroke_width = "3" if node.key == graph.grad_origin else "1"
        dash = ' stroke-dasharray="4,3"' if dashed else ""
        middle = box.x + box.width / 2
        label_y = box.y + (14 if shapes else NODE_HEIGHT / 2 + 4)
        out.append(
            f'<g class="node {_text(node.kind)}" data-key="{_text(node.key)}">'
            f"<title>{_text(_tooltip(node))}</title>"
            f'<rect x="{_num(box.x)}" y="{_num(box.y)}" width="{_num(box.width)}" '
            f'height="{_num(box.height)}" rx="6" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{stroke_width}"{dash}/>'
            f'<text x="{_num(middle)}" y="{_num(label_y)}" text-anchor="middle" '
            f'fill="{other["text"]}">{_text(label)}</text>'
            + (
                f'<text x="{_num(middle)}" y="{_num(box.y + 28)}" text-anchor="middle" '
                f'font-family="monospace" font-size="10" fill="{other["muted"]}">'
                f"{_text(shapes)}</text>"
                if shapes
                else ""
            )
            + "</g>"
        )
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
