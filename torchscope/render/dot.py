"""Graphviz output of graph records: DOT text, files by suffix, Jupyter's mime bundle.

DOT text needs no Graphviz. Pictures (svg, png, pdf) use Graphviz's ``dot`` within a
budget: ``dot``'s layout time grows steeply with size (densenet121's autograd graph took
~25 minutes), so a graph above :data:`DOT_NODE_BUDGET` nodes or :data:`DOT_EDGE_BUDGET`
edges, or one ``dot`` does not finish within :data:`DOT_TIMEOUT_S`, is laid out by
torchscope's own layered layout instead (:mod:`torchscope.render.layout`).

Without Graphviz (a pip-only install) svg still works, from our own layout; png and pdf
need Graphviz to draw and raise a :class:`~torchscope.errors.TorchscopeError` naming the
install command. The first svg drawn without ``dot`` that ``dot`` would have laid out logs,
once per process, on the ``torchscope.render.dot`` logger (level INFO) that Graphviz gives
a tighter layout for small graphs; the command line prints it on stderr.
"""

from __future__ import annotations

import colorsys
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from torchscope.errors import TorchscopeError
from torchscope.records import graph_json
from torchscope.records._text import render_graph as render_graph_text
from torchscope.records.graph_views import view
from torchscope.render.svg import node_style

if TYPE_CHECKING:
    from torchscope.records import Graph, GraphNode

__all__ = [
    "DOT_CROSSING_BUDGET",
    "DOT_EDGE_BUDGET",
    "DOT_NODE_BUDGET",
    "DOT_TIMEOUT_S",
    "FORMATS",
    "fits_dot_budget",
    "graph_to_dot",
    "mimebundle",
    "picture",
    "positioned_dot",
    "render_graph",
    "require_dot",
]

#: Largest graph handed to ``dot`` (after folding and collapsing); bigger ones use our layout.
#: ``dot``'s time grows with nodes times the edges beyond a tree (crossings to minimise):
#: densenet121 collapsed to depth 2 (92 nodes, 626 edges: 49k) takes 0.7 s, at depth 3
#: (449 nodes, 983 edges: 240k) 90 s; resnet50's 224 nodes and 233 edges take 0.1 s.
DOT_NODE_BUDGET = 600
DOT_EDGE_BUDGET = 1200
DOT_CROSSING_BUDGET = 80_000
#: Seconds ``dot`` may take before our own layout is used instead.
DOT_TIMEOUT_S = 5.0

#: Output formats :func:`render_graph` writes, by file suffix.
FORMATS = (".svg", ".png", ".pdf", ".dot", ".gv", ".html", ".json")

#: How to install Graphviz, for the messages that need it.
_INSTALL_GRAPHVIZ = (
    "`sudo apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`"
)

_log = logging.getLogger(__name__)
_noted_own_layout = False  # the "Graphviz is tighter" note is logged once per process


#: The label of a fold's cluster ends with its count (see ``_graphs.view``); a module's
#: cluster key can be anything, ``fold0`` included.
_FOLD_LABEL = re.compile(r"×\d+$")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shapes(node: GraphNode) -> str:
    parts = ["[" + ", ".join(str(d) for d in s) + "]" for s in node.shapes[:3]]
    if len(node.shapes) > 3:
        parts.append(f"+{len(node.shapes) - 3}")
    return " ".join(parts)


def _hex(colour: str) -> str:
    """``#rrggbb`` for Graphviz, which reads no ``hsl(...)``."""
    if not colour.startswith("hsl("):
        return colour
    hue, saturation, lightness = (float(v.strip(" %")) for v in colour[4:-1].split(","))
    r, g, b = colorsys.hls_to_rgb(hue / 360, lightness / 100, saturation / 100)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _node_line(node: GraphNode, origin: str | None = None) -> str:
    label = node.label
    shapes = _shapes(node)
    if shapes:
        label += "\n" + shapes
    if node.grad is not None:
        label += "\n" + (
            f"grad {node.grad.norm:.3g}" if node.grad.status == "ok" else f"grad {node.grad.status}"
        )
    fill, outline, dashed = node_style(node, origin=node.key == origin)
    attrs = {
        "label": label,
        "fillcolor": _hex(fill),
        "color": _hex(outline),
        "shape": "box" if node.kind in ("op", "module") else "ellipse",
        "style": "filled,dashed" if dashed else "filled,rounded" if node.kind == "op" else "filled",
    }
    if node.key == origin:
        # where the gradient first went bad: the one node the reader must find
        attrs["penwidth"] = "3"
        attrs["label"] += "\ngradient first goes bad here"
    if node.attrs:
        attrs["tooltip"] = "\n".join(f"{k}: {v}" for k, v in node.attrs)
    body = ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items())
    return f"{_quote(node.key)} [{body}]"


def graph_to_dot(graph: Graph, *, fold: bool = True, depth: int | None = None) -> str:
    """DOT text of ``graph`` (folded and collapsed to ``depth`` first); byte-identical for
    the same graph, nodes in clusters by module."""
    shown = view(graph, fold=fold, depth=depth)
    members: dict[str, list[GraphNode]] = {}
    top: list[GraphNode] = []
    cluster_keys = {c.key for c in shown.clusters}
    for node in shown.nodes:
        if node.module and node.module in cluster_keys:
            members.setdefault(node.module, []).append(node)
        else:
            top.append(node)
    children: dict[str | None, list[str]] = {}
    labels = {}
    for cluster in shown.clusters:
        parent = cluster.parent if cluster.parent in cluster_keys else None
        children.setdefault(parent, []).append(cluster.key)
        labels[cluster.key] = cluster.label
    lines = [
        f"digraph {_quote(shown.title)} {{",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=10, newrank=true];',
        '  node [fontname="Helvetica", fontsize=9, height=0.3, margin="0.06,0.03"];',
        "  edge [arrowsize=0.6];",
    ]
    for node in top:
        lines.append("  " + _node_line(node, shown.grad_origin))
    # clusters, nested, written iteratively: a stack of (cluster, entering?)
    number = {key: i for i, key in enumerate(sorted(cluster_keys))}
    stack: list[tuple[str, bool]] = [(k, True) for k in reversed(children.get(None, []))]
    level = 1
    while stack:
        key, entering = stack.pop()
        if not entering:
            level -= 1
            lines.append("  " * level + "}")
            continue
        pad = "  " * level
        lines.append(f"{pad}subgraph cluster_{number[key]} {{")
        style = "dashed" if _FOLD_LABEL.search(labels[key]) else "rounded"
        lines.append(f'{pad}  label={_quote(labels[key])}; style={style}; color="#999999";')
        for node in members.get(key, []):
            lines.append(f"{pad}  {_node_line(node, shown.grad_origin)}")
        level += 1
        stack.append((key, False))
        stack.extend((k, True) for k in reversed(children.get(key, [])))
    for edge in shown.edges:
        extra = f" [label={_quote(edge.label)}]" if edge.label else ""
        lines.append(f"  {_quote(edge.src)} -> {_quote(edge.dst)}{extra}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def require_dot(fmt: str) -> str:
    """The path of Graphviz's ``dot``; a :class:`TorchscopeError` naming the install command
    when it is missing, for output in ``fmt`` (png, pdf) that needs it."""
    found = shutil.which("dot")
    if found is None:
        raise TorchscopeError(
            f"{fmt} output needs Graphviz's `dot` program, which is not installed: install it "
            f"({_INSTALL_GRAPHVIZ}), or write .svg (drawn by torchscope's own layout), .html, "
            ".dot or .json instead"
        )
    return found


def _note_own_layout() -> None:
    """Log once per process that Graphviz would have drawn this small graph tighter."""
    global _noted_own_layout
    if _noted_own_layout:
        return
    _noted_own_layout = True
    _log.info(
        "Graphviz's `dot` is not installed, so the svg was laid out by torchscope's own "
        "layout; Graphviz gives a tighter layout for small graphs (install: %s)",
        _INSTALL_GRAPHVIZ,
    )


def _run_dot(
    source: str,
    fmt: str,
    *,
    timeout: float | None,
    program: str = "dot",
    args: tuple[str, ...] = (),
) -> bytes:
    binary = require_dot(fmt)
    if program != "dot":
        binary = str(Path(binary).with_name(program))
    try:
        done = subprocess.run(
            [binary, *args, f"-T{fmt}"],
            input=source.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise TorchscopeError(f"could not run Graphviz's {program}: {e}") from e
    if done.returncode != 0:
        raise TorchscopeError(
            f"Graphviz's {program} failed: {done.stderr.decode(errors='replace').strip()[:500]}"
        )
    return done.stdout


def fits_dot_budget(graph: Graph) -> bool:
    """Whether ``dot`` can be trusted to lay this (already folded) graph out quickly."""
    nodes, edges = len(graph.nodes), len(graph.edges)
    return (
        nodes <= DOT_NODE_BUDGET
        and edges <= DOT_EDGE_BUDGET
        and nodes * max(edges - nodes, 0) <= DOT_CROSSING_BUDGET
    )


def render_graph(
    graph: Graph,
    path: str | os.PathLike[str],
    *,
    fold: bool = True,
    depth: int | None = None,
) -> str:
    """Write ``graph`` to ``path`` in the format its suffix names (see :data:`FORMATS`)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its suffix; "
            f"use one of {', '.join(FORMATS)}"
        )
    if suffix in (".dot", ".gv"):
        target.write_text(graph_to_dot(graph, fold=fold, depth=depth), encoding="utf-8")
    elif suffix == ".json":
        target.write_text(graph_json(graph), encoding="utf-8")
    elif suffix == ".html":
        from torchscope.render.graph_html import graph_to_html

        target.write_text(graph_to_html(graph, fold=fold, depth=depth), encoding="utf-8")
    else:
        target.write_bytes(picture(graph, suffix[1:], fold=fold, depth=depth))
    return str(target)


def picture(graph: Graph, fmt: str, *, fold: bool = True, depth: int | None = None) -> bytes:
    """The graph drawn as ``fmt`` (svg, png, pdf): by ``dot`` within its budget, otherwise
    by our own layered layout. Without Graphviz, svg comes from our layout and png/pdf
    raise :class:`~torchscope.errors.TorchscopeError` naming the install command."""
    if fmt not in ("svg", "png", "pdf"):
        raise ValueError(f"cannot draw a picture as {fmt!r}; use svg, png or pdf")
    has_dot = shutil.which("dot") is not None
    if not has_dot and fmt != "svg":
        require_dot(fmt)  # the clear error, before any layout work
    shown = view(graph, fold=fold, depth=depth)
    small = fits_dot_budget(shown)
    if has_dot and small:
        try:
            return _run_dot(graph_to_dot(shown, fold=False), fmt, timeout=DOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass  # too slow after all: fall through to our layout
    from torchscope.render.svg import graph_to_svg

    if fmt == "svg":
        if not has_dot and small:
            _note_own_layout()
        return graph_to_svg(shown, fold=False).encode()
    # png/pdf: our positions, drawn by Graphviz without its layout step (neato -n2)
    return _run_dot(positioned_dot(shown), fmt, timeout=None, program="neato", args=("-n2",))


def positioned_dot(graph: Graph) -> str:
    """DOT text with every node placed by our own layered layout (``pos="x,y!"`` in points),
    for Graphviz's ``neato -n2``, which then only draws: no layout step, so no blow-up.
    Clusters are not boxed in this form (the svg and html outputs box them)."""
    from torchscope.render.layout import layered_layout

    layout = layered_layout(graph)
    lines = [
        f"digraph {_quote(graph.title)} {{",
        '  graph [splines=line, fontname="Helvetica", fontsize=10];',
        '  node [fontname="Helvetica", fontsize=9, fixedsize=true];',
        "  edge [arrowsize=0.6];",
    ]
    for node in graph.nodes:
        box = layout.nodes.get(node.key)
        if box is None:
            continue
        x = box.x + box.width / 2
        y = layout.height - (box.y + box.height / 2)  # Graphviz's y grows upwards
        line = _node_line(node, graph.grad_origin)[:-1]
        lines.append(
            f'  {line}, pos="{x:.1f},{y:.1f}!", width={box.width / 72:.3f}, '
            f"height={box.height / 72:.3f}]"
        )
    for edge in graph.edges:
        if edge.src in layout.nodes and edge.dst in layout.nodes:
            lines.append(f"  {_quote(edge.src)} -> {_quote(edge.dst)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def mimebundle(graph: Graph) -> dict[str, str]:
    """Jupyter's display data: an SVG picture when Graphviz is there and the graph fits its
    budget, the interactive HTML view otherwise, and a text summary."""
    bundle = {"text/plain": render_graph_text(graph)}
    shown = view(graph)
    if shutil.which("dot") is not None and fits_dot_budget(shown):
        try:
            bundle["image/svg+xml"] = _run_dot(
                graph_to_dot(shown, fold=False), "svg", timeout=DOT_TIMEOUT_S
            ).decode()
            return bundle
        except (subprocess.TimeoutExpired, TorchscopeError):
            pass
    from torchscope.render.graph_html import graph_to_html

    bundle["text/html"] = graph_to_html(graph)
    return bundle
