"""A self-contained HTML page for graphs too big for a static picture.

The page embeds the graph (folded, as :func:`torchscope.records.graph_views.view` returns it) and the
positions :func:`torchscope.render.layout.layered_layout` gives it, as JSON: one layout with
every module expanded, one per collapse depth (``view(graph, depth=d)``) within a size
budget. Its script (``page/graph.js``, package data) only draws and interacts: click a
cluster's box to collapse it into one node, click that node to expand it again (the page
switches to the embedded layout that fits, and draws the other collapsed modules as one
node in place of their box). Drag to pan, scroll to zoom, type in the search box to
highlight nodes whose label or key contains the text (Enter jumps to the next match).
Everything is inline: no network, no CDN.
"""

from __future__ import annotations

import dataclasses
import json
from html import escape
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from torchscope.records.graph_views import check_depth, view
from torchscope.render.layout import NODE_HEIGHT, Layout, layered_layout, node_lines
from torchscope.render.svg import GRAD_LOG_RANGE, PALETTE, grad_fill

if TYPE_CHECKING:
    from torchscope.records import Graph, GraphNode

__all__ = ["LAYOUT_BUDGET", "SCRIPT", "graph_to_html", "page_layouts", "script_json"]


def _page_file(name: str) -> str:
    """The text of ``page/<name>``, package data beside this module."""
    return (resources.files("torchscope.render") / "page" / name).read_text(encoding="utf-8")


#: The page's script: drawing and interaction on a canvas, from the embedded layouts.
SCRIPT = _page_file("graph.js")
_STYLE = _page_file("graph.css")
_TEMPLATE = Template(_page_file("template.html"))

#: The collapse depths other than the starting one are embedded while their views hold, all
#: together, at most this many times the nodes and edges of the expanded graph: each costs
#: a layout when the page is built and its coordinates in the page.
LAYOUT_BUDGET = 1.0


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside ``<script>``: ``<``, ``>`` and ``&`` are written
    as ``\\u003c`` and friends, so a label such as ``</script>`` or ``<!--`` cannot end or
    comment out the script, and the text is still JSON (``json.loads`` reads it back)."""
    # ensure_ascii also escapes U+2028/U+2029, which old JavaScript engines end lines at
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _legend_html(graph: Graph) -> str:
    """The legend as a ``<ul>``: every colour the page can use (gradients only when the
    graph has them)."""
    fill, stroke, other = PALETTE["fill"], PALETTE["stroke"], PALETTE["other"]
    entries: list[tuple[str, str, str, str]] = [  # (name, fill, outline, extra style)
        ("parameter", fill["parameter"], stroke["parameter"], ""),
        ("input", fill["input"], stroke["input"], ""),
        ("output", fill["output"], stroke["output"], ""),
        ("op", fill["op"], stroke["op"], ""),
        ("collapsed module (click to expand)", fill["module"], stroke["module"], ""),
        ("module (click to collapse)", other["cluster_fill"], other["cluster_stroke"], ""),
        ("repeated step ×N", other["cluster_fold_fill"], other["cluster_stroke"], ""),
    ]
    if any(node.grad is not None for node in graph.nodes):
        grey = stroke["op"]
        entries += [
            ("gradient ok, small norm", grad_fill(10 ** GRAD_LOG_RANGE[0]), grey, ""),
            ("gradient ok, large norm", grad_fill(10 ** GRAD_LOG_RANGE[1]), grey, ""),
            ("gradient all zero", PALETTE["grad"]["zero"], grey, ""),
            ("gradient NaN or inf", PALETTE["grad"]["nan"], grey, ""),
            ("no gradient", PALETTE["grad"]["none"], grey, "border-style:dashed;"),
            ("where the trouble starts", "#ffffff", other["origin"], "border-width:3px;"),
        ]
    items = "".join(
        f'<li><span class="swatch" style="background:{f};border-color:{s};{extra}"></span>'
        f"{escape(name)}</li>"
        for name, f, s, extra in entries
    )
    return f'<ul id="legend">{items}</ul>'


def _rounded(value: float) -> float:
    """A coordinate as the page carries it: hundredths of a pixel are plenty to draw."""
    return round(value, 2)


def _node_dict(node: GraphNode) -> dict[str, Any]:
    """A node as the page's GRAPH holds it (``Graph.to_dict``'s form)."""
    return dataclasses.asdict(node)


def _layout_data(
    shown: Graph, placed: Layout, depth: int | None, graph_nodes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """One layout as the page reads it: boxes as ``[key, x, y, width, height, label,
    shapes]``, edges as ``[src, dst, reversed, [x0, y0, x1, y1, ...]]``, and the nodes that
    stand for collapsed modules (the others are the page's GRAPH nodes)."""
    by_key = {node.key: node for node in shown.nodes}
    nodes = [
        [key, *(_rounded(v) for v in (b.x, b.y, b.width, b.height)), *node_lines(by_key[key])]
        for key, b in placed.nodes.items()
    ]
    clusters = [
        [key, *(_rounded(v) for v in (b.x, b.y, b.width, b.height))]
        for key, b in placed.clusters.items()
    ]
    edges = [
        [e.src, e.dst, int(e.reversed), [_rounded(v) for point in e.points for v in point]]
        for e in placed.edges
    ]
    modules = [
        data for key in placed.nodes if (data := _node_dict(by_key[key])) != graph_nodes.get(key)
    ]
    return {
        "depth": depth,
        "width": _rounded(placed.width),
        "height": _rounded(placed.height),
        "nodes": nodes,
        "clusters": clusters,
        "edges": edges,
        "modules": modules,
    }


def _weight(graph: Graph) -> int:
    """What laying out ``graph`` costs, roughly: its nodes and edges."""
    return len(graph.nodes) + len(graph.edges)


def page_layouts(
    graph: Graph, *, fold: bool = True, depth: int | None = None
) -> list[dict[str, Any]]:
    """The layouts :func:`graph_to_html` embeds, as JSON-ready data, each computed by
    :func:`~torchscope.render.layout.layered_layout` on ``view(graph, fold=fold, depth=d)``.

    First every module expanded (``"depth": None``), then the starting ``depth``, then the
    other depths at which modules collapse, smallest first, while they fit
    :data:`LAYOUT_BUDGET`. The page draws any other collapse state from the layout that
    collapses the most of it, the rest collapsed in place (one node over the module's box).
    """
    check_depth(depth)
    shown = view(graph, fold=fold)
    graph_nodes = {node.key: _node_dict(node) for node in shown.nodes}
    result = [_layout_data(shown, layered_layout(shown), None, graph_nodes)]
    # the depths at which view() collapses something; past the deepest module nothing changes
    # a module's nesting level is at most the length of its dotted path, so past the longest
    # path nothing collapses (bounded: a cluster with no node of its own can make view()
    # differ from `shown` at every depth)
    deepest = max(
        (len(path.split(".")) for path in (
            *(node.module for node in graph.nodes if node.module),
            *(cluster.key for cluster in graph.clusters if cluster.key),
        )),
        default=0,
    )  # fmt: skip
    views: dict[int, Graph] = {}
    for level in range(1, deepest + 2):
        collapsed = view(graph, fold=fold, depth=level)
        if collapsed == shown:
            break
        views[level] = collapsed
    budget = LAYOUT_BUDGET * _weight(shown)
    # the starting depth always; then the smallest views first: they are the overviews
    chosen = [depth] if depth in views else []
    for level in sorted(views, key=lambda d: (_weight(views[d]), d)):
        if level != depth and _weight(views[level]) <= budget:
            budget -= _weight(views[level])
            chosen.append(level)
    for level in chosen:
        placed = layered_layout(views[level])
        result.append(_layout_data(views[level], placed, level, graph_nodes))
    return result


def graph_to_html(graph: Graph, *, fold: bool = True, depth: int | None = None) -> str:
    """A standalone HTML page that draws ``graph`` interactively: pan, zoom, collapse and
    expand clusters, search nodes by label or key.

    ``fold`` folds repeated steps; with ``depth``, the modules at nesting level ``depth``
    (1: the model's direct children) start collapsed, as in ``view(graph, depth=depth)``
    (None: all expanded). The positions are torchscope's layered layout, computed here (see
    :func:`page_layouts`); the page needs no network and no Graphviz.
    """
    check_depth(depth)
    shown = view(graph, fold=fold)
    title = graph.title or graph.kind
    warnings = "".join(f"<li>{escape(w)}</li>" for w in shown.warnings)
    data_lines = "\n".join(
        [
            f"const GRAPH = {script_json(shown.to_dict())};",
            f"const INITIAL_DEPTH = {script_json(depth)};",
            f"const PALETTE = {script_json(PALETTE)};",
            f"const GRAD_LOG_RANGE = {script_json(list(GRAD_LOG_RANGE))};",
            f"const NODE_HEIGHT = {script_json(NODE_HEIGHT)};",
            f"const LAYOUTS = {script_json(page_layouts(graph, fold=fold, depth=depth))};",
        ]
    )
    return _TEMPLATE.substitute(
        title=escape(title),
        kind=escape(shown.kind),
        counts=f"{len(shown.nodes):,} nodes, {len(shown.edges):,} edges",
        warnings=f'<ul id="warnings">{warnings}</ul>' if warnings else "",
        legend=_legend_html(shown),
        style=_STYLE.rstrip("\n"),
        data=data_lines,
        script=SCRIPT.rstrip("\n"),
    )
