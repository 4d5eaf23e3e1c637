"""Repeated steps are drawn once with a ``×N`` marker, whatever holds the repetitions (a
ModuleList looped over in ``forward`` as in ``nn.TransformerEncoder``, a Sequential, a loop
over ``self.children()``, one module called again and again), in every exporter: the SVG,
the DOT text, the HTML page's embedded graph, the JSON round trip and TensorBoard's graph tab
(read back with TensorBoard's own event loader).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import torchscope
from torchscope.records import Graph
from torchscope.records.graph_views import view
from torchscope.render.dot import graph_to_dot
from torchscope.render.graph_html import graph_to_html
from torchscope.render.svg import graph_to_svg
from torchscope.render.tensorboard import tensorboard_names

from .test_render_layout import DOM, NODE_JS, run_node

SVG = "{http://www.w3.org/2000/svg}"


class Block(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class Gate(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.gate = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))


class ListLoop(nn.Module):
    """A ModuleList iterated in ``forward``: the list itself is never called."""

    def __init__(self, count: int = 6) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(count))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SequentialBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.Sequential(*(Block() for _ in range(5)))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


class ChildrenLoop(nn.Module):
    """Blocks as plain attributes, run by a loop over ``self.children()``."""

    def __init__(self) -> None:
        super().__init__()
        for i in range(4):
            self.add_module(f"block{i}", Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


class LeafRun(nn.Module):
    """Each repetition is one leaf module and a functional op."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


class Stage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Nested(nn.Module):
    """Three identical stages of four identical blocks: a run inside a run."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(Stage() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class Shared(nn.Module):
    """One block applied five times: the repetitions share their weights."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(5):
            x = self.block(x)
        return x


class TwoRuns(nn.Module):
    """Runs of different lengths and widths: three blocks of 8, then six of 16."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.ModuleList(Block(8) for _ in range(3))
        self.up = nn.Linear(8, 16)
        self.big = nn.ModuleList(Block(16) for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.small:
            x = block(x)
        x = self.up(x)
        for block in self.big:
            x = block(x)
        return x


class Alternating(nn.Module):
    """A repetition of two different modules (attention/MLP style) in one ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(m for _ in range(4) for m in (Block(), Gate()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class LookAlike(nn.Module):
    """Same classes in a loop, but every layer has another width: nothing repeats."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 + i, 9 + i) for i in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def transformer_encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)


def vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=12, num_heads=2, hidden_dim=16, mlp_dim=32
    )


# name -> (model, input shape, the folds module_graph must find and every exporter show)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[tuple[str, int]]]] = {
    "transformer_encoder": (transformer_encoder, (2, 5, 32), [("TransformerEncoderLayer", 12)]),
    "vit": (vit, (1, 3, 16, 16), [("EncoderBlock", 12)]),
    "module_list": (ListLoop, (2, 8), [("Block", 6)]),
    "sequential": (SequentialBlocks, (2, 8), [("Block", 5)]),
    "children_loop": (ChildrenLoop, (2, 8), [("Block", 4)]),
    "leaf_run": (LeafRun, (2, 8), [("Linear → tanh", 7)]),
    "nested": (Nested, (2, 8), [("Stage", 3), ("Block", 4)]),
    "shared": (Shared, (2, 8), [("Block", 5)]),
    "two_runs": (TwoRuns, (2, 8), [("Block", 6), ("Block", 3)]),
    "alternating": (Alternating, (2, 8), [("Block → Gate", 4)]),
    "look_alike": (LookAlike, (2, 8), []),
}


def graph_of(name: str) -> Graph:
    build, shape, _ = CASES[name]
    torch.manual_seed(0)
    return torchscope.module_graph(build(), torch.randn(*shape))


def markers(expected: list[tuple[str, int]]) -> list[str]:
    return [f"{label} ×{count}" for label, count in expected]


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def html_graph(html: str) -> dict:
    line = next(x for x in html.splitlines() if x.startswith("const GRAPH = "))
    return json.loads(line.removeprefix("const GRAPH = ").removesuffix(";"))


def read_back(graph: Graph, logdir: Path) -> dict:
    with SummaryWriter(logdir) as writer:
        graph.log_to(writer)
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {node.name: node for node in accumulator.Graph().node}


@pytest.mark.parametrize("name", list(CASES))
def test_module_graph_finds_the_run(name: str):
    graph = graph_of(name)
    assert [(f.label, f.count) for f in graph.folds] == CASES[name][2]


@pytest.mark.parametrize("name", list(CASES))
def test_every_exporter_shows_the_repeat_marker(name: str, tmp_path: Path):
    graph = graph_of(name)
    expected = markers(CASES[name][2])
    shown = view(graph)
    folds = [c.label for c in shown.clusters if re.search(r"×\d+$", c.label)]
    assert sorted(folds) == sorted(expected)
    # each fold cluster holds nodes: the marker is on a drawn block, not a forgotten cluster
    holding = {n.module for n in shown.nodes} | {c.parent for c in shown.clusters}
    assert all(c.key in holding for c in shown.clusters if c.label in expected)

    texts = svg_texts(graph_to_svg(graph))
    assert [t for t in texts if "×" in t] == [t for t in texts if t in expected]
    assert sorted(t for t in texts if t in expected) == sorted(expected)

    dot = graph_to_dot(graph)
    dot_clusters = re.findall(r'label="([^"]*×\d+)"; style=dashed', dot)
    assert sorted(dot_clusters) == sorted(expected)

    page = html_graph(graph_to_html(graph))
    assert sorted(c["label"] for c in page["clusters"] if "×" in c["label"]) == sorted(expected)

    again = Graph.from_json(graph.to_json())
    assert again.folds == graph.folds
    assert sorted(c.label for c in view(again).clusters if "×" in c.label) == sorted(expected)

    nodes = read_back(graph, tmp_path)
    scopes = {part for node_name in nodes for part in node_name.split("/")[:-1]}
    tf_markers = [re.sub(r"\W+", "_", m.replace(" ×", " x")) for m in expected]
    assert {s for s in scopes if re.search(r"_x\d+$", s)} == set(tf_markers)
    repeats = {node.attr["repeat"].s.decode() for node in nodes.values() if "repeat" in node.attr}
    assert {r.split(", repetition")[0] for part in repeats for r in part.split("; ")} == set(
        expected
    )


def test_transformer_encoder_is_drawn_as_one_layer_times_twelve(tmp_path: Path):
    graph = graph_of("transformer_encoder")
    shown = view(graph)
    fold = next(c for c in shown.clusters if c.label == "TransformerEncoderLayer ×12")
    # the first layer's own cluster hangs in the fold; the other eleven are gone
    assert [c.key for c in shown.clusters if c.parent == fold.key] == ["layers.0"]
    assert not any(n.key.startswith("layers.1.") for n in shown.nodes)
    assert {n.key for n in shown.nodes} >= {"layers.0.linear1", "layers.0.norm2"}
    names = tensorboard_names(graph)
    assert names["layers.0.linear1"] == "layers/TransformerEncoderLayer_x12/0/linear1"
    assert names["layers.11.norm2"] == "layers/TransformerEncoderLayer_x12/11/norm2"
    assert tensorboard_names(graph, fold=False)["layers.11.norm2"] == "layers/11/norm2"


def test_nested_runs_fold_inside_each_other_without_back_edges():
    shown = view(graph_of("nested"))
    parents = {c.key: c.parent for c in shown.clusters}
    labels = {c.key: c.label for c in shown.clusters}
    inner = next(k for k, label in labels.items() if label == "Block ×4")
    outer = next(k for k, label in labels.items() if label == "Stage ×3")
    assert parents[inner] == "stages.0" and parents["stages.0"] == outer
    assert [n.key for n in shown.nodes if n.kind == "module"] == [
        "stages.0.blocks.0.fc",
        "stages.0.blocks.0.act",
    ]
    order = {n.key: n.order for n in shown.nodes}
    assert all(order[e.src] < order[e.dst] for e in shown.edges)  # nothing points back up


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_marker_survives_collapsing_below_the_run(depth: int):
    build, shape, _ = CASES["vit"]
    torch.manual_seed(0)
    model, x = build(), torch.randn(*shape)
    graph = torchscope.module_graph(model, x)
    # depth 3 collapses each encoder block (encoder > layers > encoder_layer_k) into a node;
    # the fold cluster is no nesting level, so it stays around the first block
    for shown in (view(graph, depth=3), view(torchscope.module_graph(model, x, depth=3))):
        fold = next(c for c in shown.clusters if c.label == "EncoderBlock ×12")
        assert [n.key for n in shown.nodes if n.module == fold.key] == [
            "encoder.layers.encoder_layer_0"
        ]
    # above the run, the block holding it is what is drawn
    if depth < 3:
        collapsed = torchscope.module_graph(model, x, depth=depth)
        assert collapsed.folds == ()  # no fold naming nodes that were collapsed away
        assert len(view(collapsed).nodes) == len(collapsed.nodes)


def test_depth_counts_modules_not_fold_clusters():
    graph = graph_of("module_list")
    shown = view(graph, depth=1)
    fold = next(c for c in shown.clusters if c.label == "Block ×6")
    assert [(n.key, n.module) for n in shown.nodes if n.module == fold.key] == [
        ("blocks.0", fold.key)
    ]


def test_page_collapses_modules_inside_a_fold_at_the_initial_depth(tmp_path: Path):
    graph = graph_of("alternating")
    expected = view(graph, depth=1)
    # each repetition is a Block and a Gate: both collapse, inside the fold
    collapsed = [n.key for n in expected.nodes if n.kind == "module" and n.key.count(".") == 1]
    assert collapsed == ["layers.0", "layers.1"]
    html = graph_to_html(graph, depth=1)
    if NODE_JS is None:
        assert "isFold" in html
        return
    # the page's own start-up, in the stand-in browser of the page tests, up to its report
    startup = DOM.split("// fit the whole graph")[0] + "console.log(JSON.stringify(report));\n"
    report = run_node(tmp_path, html, startup)
    assert report["initial"] == f"showing {len(expected.nodes)} nodes, 2 modules collapsed"


@pytest.mark.parametrize("name", ["nested", "transformer_encoder", "module_list", "shared"])
def test_every_autograd_fold_is_drawn(name: str):
    build, shape, _ = CASES[name]
    torch.manual_seed(0)
    graph = torchscope.autograd_graph_of(build(), torch.randn(*shape))
    assert graph.folds
    shown = view(graph)
    drawn = [c for c in shown.clusters if re.search(r"×\d+$", c.label)]
    assert sorted(c.label for c in drawn) == sorted(f"{f.label} ×{f.count}" for f in graph.folds)
    holding = {n.module for n in shown.nodes} | {c.parent for c in shown.clusters}
    assert all(c.key in holding for c in drawn)


def test_parameters_without_module_capture_are_scoped_by_their_owner():
    model = ListLoop()
    graph = torchscope.autograd_graph(model(torch.randn(2, 8)).sum(), params=model)
    names = tensorboard_names(graph, fold=False)
    assert names["param:inp.weight"] == "inp/weight"
    assert names["param:blocks.3.fc.bias"] == "blocks/3/fc/bias"


def test_dot_dashes_fold_clusters_only_not_modules_named_like_them():
    class Folder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fold0 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.folder = ListLoop(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.folder(self.fold0(x))

    dot = graph_to_dot(torchscope.module_graph(Folder(), torch.randn(2, 8)))
    styles = dict(re.findall(r'label="([^"]*)"; style=(\w+)', dot))
    assert styles["Block ×3"] == "dashed"
    assert styles["fold0 (Sequential)"] == styles["folder (ListLoop)"] == "rounded"
