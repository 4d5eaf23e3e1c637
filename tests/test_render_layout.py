"""torchscope's own graph layout, the SVG drawn from it and the interactive HTML page.

Graphs are built by hand so that each test states the structure it checks. The layout is
checked by its invariants (every node placed, no overlaps on a row, edges joining their
nodes' boxes, clusters holding their nodes and nesting). The page carries the Python
layout's positions; when Node.js is installed, its script runs in a stand-in browser
(tests/test_graph_page.py opens it in a real one).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest

from torchscope.records import (
    AutogradGraph,
    GradInfo,
    Graph,
    GraphCluster,
    GraphEdge,
    GraphFold,
    GraphNode,
)
from torchscope.records.graph_views import view
from torchscope.render import layout as layout_module
from torchscope.render.graph_html import graph_to_html, script_json
from torchscope.render.layout import Box, Layout, layered_layout, node_lines
from torchscope.render.svg import PALETTE, graph_to_svg, layout_to_svg

SVG = "{http://www.w3.org/2000/svg}"
NODE_JS = shutil.which("node")


# ---------------------------------------------------------------------------------------
# graphs


def make_graph(
    nodes: Sequence[GraphNode],
    edges: Sequence[tuple[str, str]],
    clusters: Sequence[GraphCluster] = (),
    *,
    title: str = "test",
    folds: tuple[GraphFold, ...] = (),
    warnings: tuple[str, ...] = (),
    grad_origin: str | None = None,
) -> Graph:
    return AutogradGraph(
        kind="autograd",
        title=title,
        nodes=tuple(nodes),
        edges=tuple(GraphEdge(s, d) for s, d in edges),
        clusters=tuple(clusters),
        folds=folds,
        warnings=warnings,
        grad_origin=grad_origin,
    )


def chain(count: int) -> Graph:
    nodes = [
        GraphNode(f"n{i}", "MulBackward0", "op", shapes=((1, 64, 56, 56),), order=i)
        for i in range(count)
    ]
    return make_graph(nodes, [(f"n{i}", f"n{i + 1}") for i in range(count - 1)])


def op(
    key: str, module: str = "", *, shapes: tuple[tuple[int, ...], ...] = (), order: int = 0
) -> GraphNode:
    """An op node labelled like autograd's (the part of the key after the module)."""
    label = key.rpartition("/")[2] or key
    return GraphNode(key, label, "op", module=module, shapes=shapes, order=order)


def param(name: str, module: str) -> GraphNode:
    return GraphNode(f"param:{name}", name, "parameter", shapes=((8, 8),), module=module)


def encoder() -> Graph:
    """Input -> two residual blocks inside ``enc`` -> a linear head -> output."""
    nodes = [
        GraphNode("x", "x", "input", shapes=((1, 8),)),
        param("enc.0.w", "enc.0"),
        op("enc.0/MmBackward0", "enc.0", shapes=((1, 8),)),
        op("enc.0/ReluBackward0", "enc.0"),
        op("enc/AddBackward0", "enc"),
        param("enc.1.w", "enc.1"),
        op("enc.1/MmBackward0", "enc.1"),
        op("enc.1/ReluBackward0", "enc.1"),
        op("enc/AddBackward0#1", "enc"),
        param("head.w", "head"),
        param("head.b", "head"),
        op("head/AddmmBackward0", "head"),
        GraphNode("out", "output", "output", shapes=((1, 2),)),
    ]
    edges = [
        ("x", "enc.0/MmBackward0"),
        ("param:enc.0.w", "enc.0/MmBackward0"),
        ("enc.0/MmBackward0", "enc.0/ReluBackward0"),
        ("enc.0/ReluBackward0", "enc/AddBackward0"),
        ("x", "enc/AddBackward0"),
        ("enc/AddBackward0", "enc.1/MmBackward0"),
        ("param:enc.1.w", "enc.1/MmBackward0"),
        ("enc.1/MmBackward0", "enc.1/ReluBackward0"),
        ("enc.1/ReluBackward0", "enc/AddBackward0#1"),
        ("enc/AddBackward0", "enc/AddBackward0#1"),
        ("enc/AddBackward0#1", "head/AddmmBackward0"),
        ("param:head.w", "head/AddmmBackward0"),
        ("param:head.b", "head/AddmmBackward0"),
        ("head/AddmmBackward0", "out"),
    ]
    clusters = [
        GraphCluster("enc", "enc (Encoder)"),
        GraphCluster("head", "head (Linear)"),
        GraphCluster("enc.0", "enc.0 (Block)", "enc"),
        GraphCluster("enc.1", "enc.1 (Block)", "enc"),
    ]
    return make_graph(nodes, edges, clusters, title="Encoder")


def cyclic() -> Graph:
    nodes = [op(k) for k in ("a", "b", "c", "d")]
    return make_graph(nodes, [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])


def folded(count: int = 4) -> Graph:
    """A loop body (mul, add) run ``count`` times inside module ``cell``, recorded as a fold."""
    nodes = [GraphNode("h0", "h0", "input")]
    edges = []
    previous = "h0"
    instances = []
    for step in range(count):
        mul, add = f"cell/MulBackward0#{step}", f"cell/AddBackward0#{step}"
        nodes += [op(mul, "cell", order=2 * step + 1), op(add, "cell", order=2 * step + 2)]
        edges += [(previous, mul), (mul, add)]
        instances.append((mul, add))
        previous = add
    nodes.append(GraphNode("y", "y", "output"))
    edges.append((previous, "y"))
    fold = GraphFold("MulBackward0 → AddBackward0", count, tuple(instances))
    return make_graph(nodes, edges, [GraphCluster("cell", "cell (Cell)")], folds=(fold,))


def random_dag(count: int, edge_count: int, seed: int, *, clusters: bool = False) -> Graph:
    rng = random.Random(seed)
    modules = ["", "a", "a.x", "a.y", "b", "b.z"]
    nodes = [op(f"n{i}", rng.choice(modules) if clusters else "", order=i) for i in range(count)]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < edge_count:
        a, b = sorted(rng.sample(range(count), 2))
        pairs.add((a, b))
    cluster_records = (
        [
            GraphCluster("a", "a"),
            GraphCluster("b", "b"),
            GraphCluster("a.x", "a.x", "a"),
            GraphCluster("a.y", "a.y", "a"),
            GraphCluster("b.z", "b.z", "b"),
        ]
        if clusters
        else []
    )
    return make_graph(nodes, [(f"n{a}", f"n{b}") for a, b in sorted(pairs)], cluster_records)


# ---------------------------------------------------------------------------------------
# invariants


def intersects(a: Box, b: Box) -> bool:
    return a.x < b.right and b.x < a.right and a.y < b.bottom and b.y < a.bottom


def on_box(point: tuple[float, float], box: Box) -> bool:
    x, y = point
    return box.x <= x <= box.right and y in (box.y, box.bottom)


def cluster_of(node: GraphNode, clusters: dict[str, Box]) -> str:
    key = node.module or ""
    while key and key not in clusters:
        key = key.rpartition(".")[0]
    return key


def assert_valid(graph: Graph, result: Layout) -> None:
    """Every invariant a drawing needs, for a graph with unique keys."""
    keys = [n.key for n in graph.nodes]
    assert set(result.nodes) == set(keys) == set(result.layers)
    # rows: one y per layer, lower layers further down, no two boxes overlapping
    rows: dict[int, list[Box]] = {}
    for key, box in result.nodes.items():
        rows.setdefault(result.layers[key], []).append(box)
        assert 0 <= box.x and box.right <= result.width and box.bottom <= result.height
    tops = []
    for layer in sorted(rows):
        boxes = sorted(rows[layer], key=lambda b: b.x)
        assert len({b.y for b in boxes}) == 1
        tops.append(boxes[0].y)
        for left, right in itertools.pairwise(boxes):
            assert left.right <= right.x, (layer, left, right)
    assert tops == sorted(tops) and len(set(tops)) == len(tops)
    # edges run from the source's box to the destination's
    drawable = [e for e in graph.edges if e.src != e.dst]
    assert [(p.src, p.dst) for p in result.edges] == [(e.src, e.dst) for e in drawable]
    for path in result.edges:
        assert len(path.points) >= 2
        assert on_box(path.points[0], result.nodes[path.src]), path
        assert on_box(path.points[-1], result.nodes[path.dst]), path
        if not path.reversed:
            assert result.layers[path.src] < result.layers[path.dst]
            ys = [y for _, y in path.points]
            assert ys == sorted(ys)
    # clusters hold their nodes, nest, and keep out of each other and of other nodes
    parents = {c.key: c.parent for c in graph.clusters}
    for node in graph.nodes:
        home = cluster_of(node, result.clusters)
        box = result.nodes[node.key]
        holders = set()
        while home:
            holders.add(home)
            assert result.clusters[home].contains(box), (node.key, home)
            home = parents.get(home) or ""
        for key, cluster_box in result.clusters.items():
            if key not in holders:
                assert not intersects(cluster_box, box), (node.key, key)
    for key, box in result.clusters.items():
        parent = parents.get(key)
        if parent:
            assert result.clusters[parent].contains(box), (key, parent)
        for other, other_box in result.clusters.items():
            if other != key and parents.get(other) == parent:
                assert not intersects(box, other_box), (key, other)


# ---------------------------------------------------------------------------------------
# layout


def test_encoder_layout_is_valid_and_reads_top_to_bottom():
    graph = encoder()
    result = layered_layout(graph)
    assert_valid(graph, result)
    layers = result.layers
    # the input on top, the output at the bottom, each weight right above its op
    assert layers["x"] == 0
    assert layers["out"] == max(layers.values())
    for name, consumer in (("enc.0.w", "enc.0/MmBackward0"), ("head.w", "head/AddmmBackward0")):
        assert layers[f"param:{name}"] == layers[consumer] - 1
    # the blocks follow each other: no row holds both
    assert result.clusters["enc.0"].bottom < result.clusters["enc.1"].y
    assert set(result.clusters) == {"enc", "enc.0", "enc.1", "head"}


def test_widths_follow_the_labels():
    graph = make_graph(
        [op("short"), op("a_much_longer_label_than_the_other_one"), op("x" * 200)],
        [("short", "a_much_longer_label_than_the_other_one")],
    )
    boxes = layered_layout(graph).nodes
    assert boxes["short"].width < boxes["a_much_longer_label_than_the_other_one"].width
    label, _ = node_lines(graph.nodes[2])
    assert label.endswith("…") and len(label) == layout_module.MAX_LABEL_CHARS
    assert_valid(graph, layered_layout(graph))


def test_cycle_is_laid_out_with_one_edge_reversed():
    graph = cyclic()
    result = layered_layout(graph)
    assert_valid(graph, result)
    assert [(p.src, p.dst) for p in result.edges if p.reversed] == [("c", "a")]
    assert result.layers["a"] < result.layers["b"] < result.layers["c"] < result.layers["d"]


def test_fold_is_drawn_once_inside_its_cluster():
    graph = view(folded(4))
    result = layered_layout(graph)
    assert_valid(graph, result)
    fold_clusters = [c for c in graph.clusters if c.label.endswith("×4")]
    assert len(fold_clusters) == 1
    assert len(result.nodes) == 4  # h0, one mul, one add, y
    assert result.clusters[fold_clusters[0].key].contains(result.nodes["cell/MulBackward0#0"])


@pytest.mark.parametrize("seed", range(6))
def test_random_dags_are_valid(seed):
    graph = random_dag(120, 260, seed, clusters=seed % 2 == 1)
    assert_valid(graph, layered_layout(graph))


def test_edges_past_the_dummy_budget_are_straight(monkeypatch):
    monkeypatch.setattr(layout_module, "DUMMY_BUDGET", 5)
    graph = random_dag(80, 200, seed=7)
    result = layered_layout(graph)
    assert_valid(graph, result)
    assert any(
        len(p.points) == 2 and result.layers[p.dst] - result.layers[p.src] > 1 for p in result.edges
    )


def test_edges_from_one_node_share_their_route_until_they_part():
    """A DenseNet layer's output feeds every later layer of its block: its long edges run as
    one bundle (shared dummy nodes) and leave it where they end, instead of a line each."""
    nodes = [GraphNode(f"n{i}", "MulBackward0", "op", order=i) for i in range(7)]
    edges = [(f"n{i}", f"n{i + 1}") for i in range(6)] + [("n0", "n3"), ("n0", "n4"), ("n0", "n6")]
    graph = make_graph(nodes, edges)
    result = layered_layout(graph)
    assert_valid(graph, result)
    path = {(p.src, p.dst): p.points for p in result.edges}
    short, middle, long = path[("n0", "n3")], path[("n0", "n4")], path[("n0", "n6")]
    # the same bends (the first point is the port on the source's box, the last the target's)
    assert short[1:-1] == middle[1 : len(short) - 1] == long[1 : len(short) - 1]
    assert middle[1:-1] == long[1 : len(middle) - 1]
    # a budget that holds the bundle holds every edge of it: none is drawn straight
    assert all(len(path[("n0", k)]) > 2 for k in ("n3", "n4", "n6"))


def test_same_graph_gives_identical_layout():
    graph = random_dag(150, 300, seed=3, clusters=True)
    first = layered_layout(graph)
    assert first == layered_layout(graph)
    assert first == layered_layout(Graph.from_json(graph.to_json()))
    assert layout_to_svg(graph, first) == graph_to_svg(graph)


def test_odd_inputs_do_not_break_the_layout():
    # an empty graph
    empty = make_graph([], [])
    result = layered_layout(empty)
    assert result.nodes == {} and result.edges == () and result.width > 0
    ET.fromstring(graph_to_svg(empty))
    # self-loops and edges to unknown nodes get no path; duplicate edges share one
    graph = make_graph([op("a"), op("b")], [("a", "a"), ("a", "ghost"), ("a", "b"), ("a", "b")])
    result = layered_layout(graph)
    assert [(p.src, p.dst) for p in result.edges] == [("a", "b"), ("a", "b")]
    assert result.edges[0].points == result.edges[1].points
    # a repeated key: the first node wins, drawn once
    twice = make_graph([op("a"), op("b"), GraphNode("a", "again", "output")], [("a", "b")])
    assert len(layered_layout(twice).nodes) == 2
    assert list(svg_groups(graph_to_svg(twice), "node")) == ["a", "b"]
    # clusters whose parents form a loop, a node in a module that has no cluster of its own
    looped = make_graph(
        [op("p", "m.sub.leaf"), op("q", "n")],
        [("p", "q")],
        [GraphCluster("m", "m", "n"), GraphCluster("n", "n", "m")],
    )
    result = layered_layout(looped)
    assert result.clusters["m"].contains(result.nodes["p"])


def test_a_module_called_twice_still_gets_a_box():
    # shared.0 runs, then top-level work, then shared.0 again: its box cannot keep to its
    # rows alone, so the layering lets go of it rather than fail
    nodes = [op("s/first", "shared"), op("middle"), op("s/second", "shared")]
    graph = make_graph(
        nodes, [("s/first", "middle"), ("middle", "s/second")], [GraphCluster("shared", "shared")]
    )
    result = layered_layout(graph)
    assert result.clusters["shared"].contains(result.nodes["s/first"])
    assert result.clusters["shared"].contains(result.nodes["s/second"])
    assert result.layers["s/first"] < result.layers["middle"] < result.layers["s/second"]


def test_twelve_thousand_nodes_without_recursion():
    graph = chain(12_000)
    start = time.perf_counter()
    result = layered_layout(graph)
    assert time.perf_counter() - start < 30
    assert sorted(result.layers.values()) == list(range(12_000))
    xs = {box.x for box in result.nodes.values()}
    assert len(xs) == 1  # a chain is a straight line
    # a ring of 12,000: the depth-first search that finds the back edge is that deep
    ring = make_graph(list(graph.nodes), [*((e.src, e.dst) for e in graph.edges), ("n11999", "n0")])
    reversed_edges = [p for p in layered_layout(ring).edges if p.reversed]
    assert [(p.src, p.dst) for p in reversed_edges] == [("n11999", "n0")]


# ---------------------------------------------------------------------------------------
# SVG


def svg_groups(svg: str, kind: str) -> dict[str, ET.Element]:
    root = ET.fromstring(svg)
    return {
        g.attrib["data-key"]: g
        for g in root.iter(f"{SVG}g")
        if kind in g.attrib.get("class", "").split()
    }


def test_svg_has_one_element_per_node_and_cluster():
    graph = encoder()
    svg = graph_to_svg(graph)
    assert svg.startswith("<?xml")
    nodes = svg_groups(svg, "node")
    assert set(nodes) == {n.key for n in graph.nodes}
    assert set(svg_groups(svg, "cluster")) == {c.key for c in graph.clusters}
    root = ET.fromstring(svg)
    polylines = list(root.iter(f"{SVG}polyline"))
    assert len(polylines) == len(graph.edges)
    assert all(p.attrib["marker-end"] == "url(#arrow)" for p in polylines)
    assert nodes["x"].find(f"{SVG}rect").attrib["fill"] == PALETTE["fill"]["input"]
    assert nodes["param:head.w"].find(f"{SVG}rect").attrib["fill"] == PALETTE["fill"]["parameter"]
    texts = [t.text for t in nodes["enc.0/MmBackward0"].iter(f"{SVG}text")]
    assert texts == ["MmBackward0", "[1, 8]"]


def test_svg_escapes_text():
    label = "a <b> & \"c\" 'd' </svg>"
    key = 'k"<&>'
    graph = make_graph(
        [
            GraphNode(key, label, "op", module="m<&>", attrs=(("note", "<&>"),)),
            op("ctrl\x01char"),
        ],
        [(key, "ctrl\x01char")],
        [GraphCluster("m<&>", "m <&>")],
        warnings=("saved <tensors> & more",),
        title="T<&>",
    )
    svg = graph_to_svg(graph)
    nodes = svg_groups(svg, "node")
    assert key in nodes
    assert next(t.text for t in nodes[key].iter(f"{SVG}text")) == label
    assert "<&>" in nodes[key].find(f"{SVG}title").text
    assert "m<&>" in svg_groups(svg, "cluster")
    root = ET.fromstring(svg)
    all_text = "".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "saved <tensors> & more" in all_text and "T<&>" in all_text


def test_svg_colours_gradients():
    nodes = [
        GraphNode("param:w", "w", "parameter", grad=GradInfo(0.5, "ok")),
        GraphNode("zero", "zero", "op", grad=GradInfo(0.0, "zero")),
        GraphNode("bad", "bad", "op", grad=GradInfo(float("nan"), "nan")),
        GraphNode("none", "none", "op", grad=GradInfo(None, "none")),
        GraphNode("tiny", "tiny", "op", grad=GradInfo(1e-9, "ok")),
        GraphNode("out", "out", "output", grad=GradInfo(1.0, "ok")),
    ]
    graph = make_graph(
        nodes,
        [("param:w", "zero"), ("zero", "bad"), ("bad", "none"), ("none", "tiny"), ("tiny", "out")],
        grad_origin="bad",
    )
    rects = {
        k: g.find(f"{SVG}rect").attrib for k, g in svg_groups(graph_to_svg(graph), "node").items()
    }
    assert rects["zero"]["fill"] == PALETTE["grad"]["zero"]
    assert rects["bad"]["fill"] == PALETTE["grad"]["nan"]
    assert (
        rects["bad"]["stroke"] == PALETTE["other"]["origin"] and rects["bad"]["stroke-width"] == "3"
    )
    assert rects["none"]["fill"] == PALETTE["grad"]["none"] and "stroke-dasharray" in rects["none"]
    ok, tiny = rects["param:w"]["fill"], rects["tiny"]["fill"]
    assert ok.startswith("hsl(120") and tiny.startswith("hsl(120")

    def lightness(colour: str) -> int:
        return int(re.findall(r"(\d+)%\)$", colour)[0])

    assert lightness(tiny) > lightness(ok)  # smaller gradients are paler
    assert rects["out"]["fill"] == PALETTE["fill"]["output"]  # outputs keep their colour


def test_svg_folds_and_collapses():
    folded_svg = graph_to_svg(folded(5))
    labels = [t.text for t in ET.fromstring(folded_svg).iter(f"{SVG}text")]
    assert any(text and text.endswith("×5") for text in labels)
    assert len(svg_groups(folded_svg, "node")) == 4
    unfolded = graph_to_svg(folded(5), fold=False)
    assert len(svg_groups(unfolded, "node")) == 12
    collapsed = svg_groups(graph_to_svg(encoder(), depth=1), "node")
    assert {"enc", "head"} <= set(collapsed)
    assert collapsed["enc"].find(f"{SVG}rect").attrib["fill"] == PALETTE["fill"]["module"]


# ---------------------------------------------------------------------------------------
# HTML


class PageParser(HTMLParser):
    """Collects what a browser would see: tags, their attributes, the script's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.scripts: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts.append("")
        if tag not in ("meta", "input", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open[-3:])
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1] == "script":
            self.scripts[-1] += data
        else:
            self.text.append(data)


def parse_page(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    assert parser.open == []  # every tag closed, in order
    return parser


def embedded_layouts(script: str) -> list:
    match = re.search(r"^const LAYOUTS = (.*);$", script, re.M)
    assert match is not None
    return json.loads(match.group(1))


def embedded_graph(script: str) -> dict:
    match = re.search(r"^const GRAPH = (.*);$", script, re.M)
    assert match is not None
    return json.loads(match.group(1))


def hostile() -> Graph:
    """Labels and keys that try to end the script or the page."""
    nodes = [
        GraphNode("</script><script>alert(1)</script>", "</script>", "input"),
        GraphNode("k<!--", "<!-- x -->", "op", module="m"),
        GraphNode("amp&", "a & b \u2028 line", "output"),
    ]
    return make_graph(
        nodes,
        [("</script><script>alert(1)</script>", "k<!--"), ("k<!--", "amp&")],
        [GraphCluster("m", "m </script>")],
        warnings=("a <warning> & </script>",),
        title="</title><script>",
    )


@pytest.mark.parametrize("make", [encoder, hostile, cyclic, lambda: folded(6)])
def test_html_is_one_self_contained_page(make):
    graph = make()
    html = graph_to_html(graph)
    page = parse_page(html)
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts == [{}]  # one inline script, nothing loaded
    assert len(page.scripts) == 1
    assert not [tag for tag, _ in page.tags if tag in ("link", "img", "iframe", "object")]
    assert "http://" not in html and "https://" not in html
    assert "import(" not in page.scripts[0] and "fetch(" not in page.scripts[0]
    data = embedded_graph(page.scripts[0])
    shown = view(graph)
    assert [n["key"] for n in data["nodes"]] == [n.key for n in shown.nodes]
    assert Graph.from_dict(data) == shown
    text = "".join(page.text)
    assert graph.title in text
    for warning in graph.warnings:
        assert warning in text
    assert f"{len(shown.nodes):,} nodes" in text


def test_html_script_cannot_be_ended_by_a_label():
    html = graph_to_html(hostile())
    page = parse_page(html)
    script = page.scripts[0]
    assert script.rstrip().endswith("}")  # the whole script, not a piece cut at a label
    assert "</" not in script and "<!--" not in script
    data = embedded_graph(script)
    assert data["nodes"][0]["label"] == "</script>"
    assert data["nodes"][2]["label"] == "a & b \u2028 line"
    assert json.loads(script_json("</script>")) == "</script>"


def test_html_options():
    html = graph_to_html(encoder(), depth=2)
    assert "const INITIAL_DEPTH = 2;" in html
    assert "const INITIAL_DEPTH = null;" in graph_to_html(encoder())
    unfolded = embedded_graph(parse_page(graph_to_html(folded(3), fold=False)).scripts[0])
    assert len(unfolded["nodes"]) == 8
    with pytest.raises(ValueError, match="depth must be a whole number"):
        graph_to_html(encoder(), depth=0)
    assert "gradient all zero" not in html  # the legend only explains what is there
    graded = make_graph([GraphNode("w", "w", "parameter", grad=GradInfo(None, "none"))], [])
    assert "gradient all zero" in graph_to_html(graded)


# ---------------------------------------------------------------------------------------
# the page's JavaScript, when Node.js is there to run it

# A stand-in for the browser: elements that record listeners and a canvas that draws nothing.
DOM = """
const elements = {};
function element(id) {
  if (!elements[id]) {
    elements[id] = {
      id, style: {}, hidden: false, textContent: "", value: "", width: 0, height: 0,
      clientWidth: 1000, clientHeight: 800, listeners: {}, dataset: {},
      classList: { add() {}, remove() {} },
      addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); },
      getBoundingClientRect() { return { left: 0, top: 0, width: 1000, height: 800 }; },
      getContext() {
        return new Proxy({}, { get: (t, k) => (k in t ? t[k] : () => {}) });
      },
    };
  }
  return elements[id];
}
const windowListeners = {};
global.document = { getElementById: element };
global.window = {
  devicePixelRatio: 2,
  addEventListener(type, fn) { (windowListeners[type] = windowListeners[type] || []).push(fn); },
};
const fire = (target, type, event) => (target.listeners || windowListeners)[type]
  .forEach((fn) => fn(Object.assign({ preventDefault() {}, deltaMode: 0 }, event)));
const page = require(process.argv[2]);
const report = { initial: element("shown").textContent };

// fit the whole graph, then click just inside the top-left corner of cluster `enc`
fire(element("fit"), "click", {});
function screenOf(layout, box) {
  const scale = Math.min(1000 / layout.width, 800 / layout.height, 1.5);
  const x = (1000 - layout.width * scale) / 2;
  const y = layout.height * scale < 800 ? (800 - layout.height * scale) / 2 : 0;
  return [x + (box.x + 3) * scale, y + (box.y + 3) * scale];
}
function click(at) {
  fire(element("view"), "mousedown", { clientX: at[0], clientY: at[1] });
  fire(windowListeners, "mouseup", { clientX: at[0], clientY: at[1] });
}
let layout = page.compose(new Set(["enc.0", "enc.1"]));
click(screenOf(layout, layout.clusters.get("enc")));
report.collapsed = element("shown").textContent;
fire(element("fit"), "click", {});
layout = page.compose(new Set(["enc.0", "enc.1", "enc"]));
click(screenOf(layout, layout.nodes.get("enc")));
report.expanded = element("shown").textContent;

element("search").value = "mm";
fire(element("search"), "input", {});
report.matches = element("matches").textContent;
fire(element("search"), "keydown", { key: "Enter" });
fire(element("view"), "wheel", { clientX: 100, clientY: 100, deltaY: -120 });
fire(windowListeners, "mousemove", { clientX: 500, clientY: 400 });
fire(windowListeners, "resize", {});
fire(element("expand"), "click", {});
fire(element("reset"), "click", {});
report.reset = element("shown").textContent;
console.log(JSON.stringify(report));
"""


def run_node(tmp_path: Path, html: str, harness: str) -> dict:
    script = parse_page(html).scripts[0]
    page = tmp_path / "page.js"
    page.write_text(script, encoding="utf-8")
    runner = tmp_path / "run.js"
    runner.write_text(harness, encoding="utf-8")
    assert NODE_JS is not None
    done = subprocess.run(
        [NODE_JS, str(runner), str(page)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_page_script_parses(tmp_path):
    script = parse_page(graph_to_html(hostile())).scripts[0]
    if NODE_JS is not None:
        path = tmp_path / "page.js"
        path.write_text(script, encoding="utf-8")
        done = subprocess.run([NODE_JS, "--check", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    else:  # no Node.js here: check at least that the pieces the page needs are in it
        for name in ("function compose(", "function collapsedAt(", "function startPage("):
            assert name in script


@pytest.mark.parametrize(
    "make",
    [
        encoder,
        cyclic,
        lambda: folded(4),
        lambda: random_dag(120, 260, seed=5, clusters=True),
        lambda: random_dag(60, 150, seed=1),
    ],
)
def test_page_carries_the_python_layout(make):
    # the page lays nothing out: every position it draws is layered_layout's, rounded
    graph = make()
    layouts = embedded_layouts(parse_page(graph_to_html(graph)).scripts[0])
    assert layouts[0]["depth"] is None
    expected = layered_layout(view(graph))
    assert_valid(view(graph), expected)
    assert_carries(layouts[0], view(graph), expected)


def assert_carries(data: dict, shown: Graph, expected: Layout) -> None:
    """``data`` (one of the page's layouts) holds ``expected``'s positions to 0.01."""
    assert [n[0] for n in data["nodes"]] == list(expected.nodes)
    for key, x, y, width, height, label, shapes in data["nodes"]:
        b = expected.nodes[key]
        assert [x, y, width, height] == [round(v, 2) for v in (b.x, b.y, b.width, b.height)]
        assert [label, shapes] == list(node_lines(next(n for n in shown.nodes if n.key == key)))
    assert {c[0]: c[1:] for c in data["clusters"]} == {
        key: [round(v, 2) for v in (b.x, b.y, b.width, b.height)]
        for key, b in expected.clusters.items()
    }
    assert [(e[0], e[1], bool(e[2])) for e in data["edges"]] == [
        (p.src, p.dst, p.reversed) for p in expected.edges
    ]
    assert [e[3] for e in data["edges"]] == [
        [round(v, 2) for point in p.points for v in point] for p in expected.edges
    ]
    assert (data["width"], data["height"]) == (round(expected.width, 2), round(expected.height, 2))


def test_page_collapses_expands_and_searches(tmp_path):
    html = graph_to_html(encoder(), depth=2)
    if NODE_JS is None:
        assert "compose(collapsed)" in html
        return
    report = run_node(tmp_path, html, DOM)
    # depth=2: enc.0 and enc.1 start collapsed, as view() collapses them
    assert len(view(encoder(), depth=2).nodes) == 9
    assert report["initial"] == "showing 9 nodes, 2 modules collapsed"
    assert report["collapsed"] == "showing 6 nodes, 1 module collapsed"
    assert report["expanded"] == "showing 9 nodes, 2 modules collapsed"
    assert report["matches"] == "3 matches"  # two collapsed blocks and the head
    assert report["reset"] == report["initial"]


def test_page_embeds_a_layout_per_collapse_depth():
    graph = encoder()
    layouts = embedded_layouts(parse_page(graph_to_html(graph, depth=2)).scripts[0])
    # all expanded, the starting depth, then the other depths (smallest view first)
    assert [data["depth"] for data in layouts] == [None, 2, 1]
    for data in layouts:
        shown = view(graph, depth=data["depth"])
        assert_carries(data, shown, layered_layout(shown))
    # nodes that stand for a collapsed module travel with their layout, with their shapes
    modules = {node["key"]: node for node in layouts[1]["modules"]}
    assert set(modules) == {"enc.0", "enc.1"}
    assert modules["enc.0"]["kind"] == "module"


def test_page_layouts_stay_within_the_budget(monkeypatch):
    from torchscope.render import graph_html

    monkeypatch.setattr(graph_html, "LAYOUT_BUDGET", 0.0)
    assert [data["depth"] for data in graph_html.page_layouts(encoder(), depth=2)] == [None, 2]
    assert [data["depth"] for data in graph_html.page_layouts(encoder())] == [None]
    # a depth past the deepest module is the expanded view: nothing more to carry
    assert [data["depth"] for data in graph_html.page_layouts(encoder(), depth=9)] == [None]


COLLAPSE_IN_PLACE = """
global.document = undefined;
const page = require(process.argv[2]);
const full = page.compose(new Set());
const shown = page.compose(new Set(["enc.0"]));
const box = shown.nodes.get("enc.0");
console.log(JSON.stringify({
  full: full.nodes.size,
  shown: shown.nodes.size,
  folded: shown.folded,
  box: [box.x, box.y, box.width, box.height],
  cluster: full.clusters.get("enc.0"),
  clusters: [...shown.clusters.keys()],
  edges: shown.edges.map((edge) => [edge.src, edge.dst, edge.points]),
  mm: shown.shownAs.get("enc.0/MmBackward0"),
}));
"""


def test_page_collapses_a_module_in_place_without_a_layout(tmp_path):
    # no embedded layout collapses enc.0 alone: the page draws it as one node over its box
    graph = encoder()
    html = graph_to_html(graph)
    if NODE_JS is None:
        assert "function leave(" in html
        return
    report = run_node(tmp_path, html, COLLAPSE_IN_PLACE)
    assert report["full"] == len(view(graph).nodes) == 13
    assert (report["shown"], report["folded"]) == (11, 1)  # enc.0's three nodes -> one
    cluster = report["cluster"]
    assert report["box"] == [cluster["x"], cluster["y"], cluster["width"], cluster["height"]]
    assert "enc.0" not in report["clusters"] and "enc" in report["clusters"]
    assert report["mm"] == "enc.0"
    x0, y0, width, height = report["box"]
    touching = [(src, dst, points) for src, dst, points in report["edges"] if "enc.0" in (src, dst)]
    assert {(src, dst) for src, dst, _ in touching} == {
        ("x", "enc.0"),
        ("enc.0", "enc/AddBackward0"),
    }
    for src, _, points in touching:
        # no point inside the collapsed box; the end at it lies on its border
        assert not any(x0 < x < x0 + width and y0 < y < y0 + height for x, y in points)
        x, y = points[0] if src == "enc.0" else points[-1]
        assert x0 <= x <= x0 + width and y in (y0, y0 + height)


def test_page_of_a_graph_with_an_empty_cluster_is_written():
    # a cluster holding no node of its own (from JSON, or a root cluster over a leaf) makes
    # view() differ from the unfolded graph at every depth: the page must still be written
    from torchscope.records import ModuleGraph
    from torchscope.render.graph_html import page_layouts

    graph = ModuleGraph(
        kind="module",
        title="Tiny",
        nodes=(GraphNode("in", "input", "input"), GraphNode("fc", "fc", "module", module="fc")),
        edges=(GraphEdge("in", "fc"),),
        clusters=(GraphCluster(key="", label="Tiny"),),
    )
    layouts = page_layouts(graph)  # it never returned before
    assert layouts[0]["depth"] is None and len(layouts) <= 3
    assert "fc" in graph_to_html(graph)
