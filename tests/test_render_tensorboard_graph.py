"""Graph records in TensorBoard's graph tab: written through a real ``SummaryWriter`` and read
back with TensorBoard's own event loader, so what is asserted is what TensorBoard will show.

Where ``SummaryWriter.add_graph`` (JIT tracing) fails or can only show one traced branch, the
same model goes through ``autograd_graph_of``/``module_graph`` + ``Graph.log_to``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import types_pb2
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import torchscope
from tests.zoo import small_vit
from torchscope.records import GraphCluster, GraphEdge, GraphNode, ModuleGraph
from torchscope.render.tensorboard import graph_def, log_graph, tensorboard_names

# tensorflow/python/framework/ops.py: _VALID_OP_NAME_REGEX
TF_NODE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\-/>]*")


def read_back(logdir: Path) -> dict[str, Any]:
    """The graph TensorBoard loads from ``logdir``, as node name -> NodeDef (in file order)."""
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {node.name: node for node in accumulator.Graph().node}


def shapes_of(node: Any) -> list[list[int]]:
    return [[d.size for d in s.dim] for s in node.attr["_output_shapes"].list.shape]


def logged(graph: torchscope.Graph, logdir: Path) -> dict[str, Any]:
    with SummaryWriter(logdir) as writer:
        graph.log_to(writer)
    return read_back(logdir)


@contextmanager
def jit_trace_warnings_allowed() -> Iterator[None]:
    """add_graph traces with torch.jit.trace, which torch now deprecates (FutureWarning) and
    which warns where a trace may be wrong (TracerWarning); the tests assert on its errors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*jit.trace")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


# -- hand-built records ----------------------------------------------------------------------


def small_record() -> ModuleGraph:
    """x -> layer1.0.conv1 -> add (x skip) -> add -> output, with layer1 > layer1.0 clusters."""
    return ModuleGraph(
        kind="module",
        title="Net",
        nodes=(
            GraphNode("input:x", "x", "input", "input", ((1, 3, 8, 8),), ("float32",), None, 0),
            GraphNode(
                "layer1.0.conv1",
                "layer1.0.conv1 (Conv2d)",
                "module",
                "Conv2d",
                ((1, 3, 8, 8),),
                ("float32",),
                "layer1.0",
                1,
            ),
            GraphNode(
                "layer1.0/add#0", "add", "op", "add", ((1, 3, 8, 8),), ("float32",), "layer1.0", 2
            ),
            GraphNode(
                "layer1.0/add#1", "add", "op", "add", ((1, 3, 8, 8),), ("float16",), "layer1.0", 3
            ),
            GraphNode(
                "output",
                "output",
                "output",
                "output",
                ((1, 3, 8, 8), ()),
                ("int64", "bool"),
                None,
                4,
            ),
        ),
        edges=(
            GraphEdge("input:x", "layer1.0.conv1"),
            GraphEdge("input:x", "layer1.0/add#0"),
            GraphEdge("layer1.0.conv1", "layer1.0/add#0"),
            GraphEdge("layer1.0/add#0", "layer1.0/add#1"),
            GraphEdge("layer1.0/add#1", "output"),
        ),
        clusters=(
            GraphCluster("layer1", "layer1 (Sequential)"),
            GraphCluster("layer1.0", "layer1.0 (BasicBlock)", "layer1"),
        ),
    )


def test_hand_built_graph_reads_back_with_scopes_ops_inputs_shapes(tmp_path: Path):
    nodes = logged(small_record(), tmp_path)
    assert list(nodes) == ["x", "layer1/0/conv1", "layer1/0/add", "layer1/0/add_1", "output"]
    assert [n.op for n in nodes.values()] == ["input", "Conv2d", "add", "add", "output"]
    assert list(nodes["x"].input) == []
    assert list(nodes["layer1/0/conv1"].input) == ["x"]
    # inputs in the order of their producers, whatever the edge order in the record
    assert list(nodes["layer1/0/add"].input) == ["x", "layer1/0/conv1"]
    assert list(nodes["layer1/0/add_1"].input) == ["layer1/0/add"]
    assert list(nodes["output"].input) == ["layer1/0/add_1"]
    assert shapes_of(nodes["layer1/0/conv1"]) == [[1, 3, 8, 8]]
    assert shapes_of(nodes["output"]) == [[1, 3, 8, 8], []]  # a scalar has rank 0
    assert nodes["x"].attr["dtype"].type == types_pb2.DT_FLOAT
    assert nodes["layer1/0/add_1"].attr["dtype"].type == types_pb2.DT_HALF
    assert list(nodes["output"].attr["dtype"].list.type) == [types_pb2.DT_INT64, types_pb2.DT_BOOL]
    # the record's own identity travels along, for the info card
    assert nodes["layer1/0/add_1"].attr["key"].s == b"layer1.0/add#1"
    assert nodes["layer1/0/conv1"].attr["module"].s == b"layer1.0"


def test_graph_def_is_what_log_graph_writes_and_any_writer_with_add_event_works():
    class EventSink:
        def __init__(self) -> None:
            self.events: list[Any] = []
            self.flushed = 0

        def add_event(self, event: Any) -> None:
            self.events.append(event)

        def flush(self) -> None:
            self.flushed += 1

    from tensorboard.compat.proto import graph_pb2

    sink = EventSink()
    log_graph(small_record(), sink)
    assert sink.flushed == 1 and len(sink.events) == 1
    written = graph_pb2.GraphDef.FromString(sink.events[0].graph_def)
    assert written == graph_def(small_record())
    assert written.versions.producer > 0


def node(key: str, label: str, module: str | None, kind: str = "op", order: int = 0) -> GraphNode:
    return GraphNode(key, label, kind, op=label, module=module, order=order)


def test_names_are_sanitised_unique_and_never_sit_on_a_scope():
    nodes = (
        node("a", "x:0", None),  # ":" reads as an output index
        node("b", "^ctrl", None),  # "^" reads as a control input
        node("c", "a/b c", None),  # "/" would open a scope
        node("d", "blocks", None),  # a name that is also the scope of "e"
        node("e", "Mul", "blocks.0"),
        node("f", "Mul", "blocks.0"),
        node("g", "Mul_1", "blocks.0"),  # the suffix a duplicate got: still unique
        node("h", "_private", None),  # TF names start with a letter, digit or "."
        node("i", "", "m-1.é"),  # no label: the key; a scope with nothing valid left is "_"
        node("param:blocks.0.weight", "blocks.0.weight", "blocks.0", "parameter"),
        node("layer.sub#1", "layer.sub#1 (Linear)", "layer", "module"),
        node("..", "..", None),  # "." alone would read as a path step: the kind is left
    )
    graph = ModuleGraph("module", "t", nodes, ())
    names = tensorboard_names(graph)
    assert names == {
        "a": "x_0",
        "b": "ctrl",
        "c": "a_b_c",
        "d": "blocks_1",
        "e": "blocks/0/Mul",
        "f": "blocks/0/Mul_1",
        "g": "blocks/0/Mul_1_1",
        "h": "private",
        "i": "m-1/_/i",
        "param:blocks.0.weight": "blocks/0/weight",
        "layer.sub#1": "layer/sub_1",
        "..": "op",
    }
    assert tensorboard_names(graph) == names  # stable
    assert all(TF_NODE_NAME.fullmatch(name) for name in names.values())


name_text = st.text(alphabet=st.sampled_from("ab_.:/^ #-é0"), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(name_text, st.one_of(st.none(), name_text), st.sampled_from(["op", "module"])),
        max_size=25,
    )
)
def test_names_are_valid_tf_names_unique_and_clear_of_scopes(
    specs: list[tuple[str, str | None, str]],
):
    nodes = tuple(
        node(f"k{i}", label, module, kind, i) for i, (label, module, kind) in enumerate(specs)
    )
    names = tensorboard_names(ModuleGraph("module", "t", nodes, ()))
    values = list(names.values())
    assert len(set(values)) == len(values) == len(nodes)
    assert all(TF_NODE_NAME.fullmatch(name) for name in values)
    scopes = {name.rsplit("/", k)[0] for name in values for k in range(1, name.count("/") + 1)}
    assert not scopes & set(values)


# -- real models -----------------------------------------------------------------------------


def test_resnet_module_graph_scopes_follow_module_paths(tmp_path: Path):
    model = torchvision.models.resnet18(num_classes=10)
    graph = torchscope.module_graph(model, torch.randn(1, 3, 32, 32))
    nodes = logged(graph, tmp_path)
    assert len(nodes) == len(graph.nodes)
    conv = nodes["layer1/0/conv1"]
    assert conv.op == "Conv2d"
    assert list(conv.input) == ["maxpool"]
    assert shapes_of(conv) == [[1, 64, 8, 8]]
    # the skip connection: the block's functional add takes bn2 and the block's input
    assert sorted(nodes["layer1/0/add"].input) == ["layer1/0/bn2", "maxpool"]
    assert list(nodes["fc"].input) == ["flatten"]
    assert shapes_of(nodes["output"]) == [[1, 10]]
    # every input names a node of the graph, and every edge of the record is there
    assert all(name in nodes for n in nodes.values() for name in n.input)
    assert sum(len(n.input) for n in nodes.values()) == len(graph.edges)


def test_vit_where_add_graph_fails_tracing_check(tmp_path: Path):
    model, x = small_vit(), torch.randn(2, 3, 32, 32)
    with SummaryWriter(tmp_path / "add_graph") as writer, jit_trace_warnings_allowed():
        with pytest.raises(torch.jit._trace.TracingCheckError, match="Graphs differed"):
            writer.add_graph(model, x)

    graph = torchscope.autograd_graph_of(model, x)
    nodes = logged(graph, tmp_path / "torchscope")
    assert len(nodes) == len(graph.nodes)
    attention = "encoder/layers/encoder_layer_1/self_attention"
    assert f"{attention}/in_proj_weight" in nodes
    assert shapes_of(nodes[f"{attention}/in_proj_weight"]) == [[96, 32]]
    assert (
        nodes[f"{attention}/in_proj_weight"].op
        == graph.node("param:encoder.layers.encoder_layer_1.self_attention.in_proj_weight").op
    )
    head = nodes["heads/head/AddmmBackward0"]
    assert head.op == "AddmmBackward0"
    assert set(head.input) == {"heads/head/bias", "SelectBackward0", "heads/head/TBackward0"}
    assert shapes_of(head) == [[2, 10]]
    assert shapes_of(nodes["output"]) == [[2, 10]]


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"features": features, "logits": self.head(features)}


def test_dict_output_where_add_graph_refuses_to_trace(tmp_path: Path):
    model, x = DictOutput(), torch.randn(3, 4)
    with SummaryWriter(tmp_path / "add_graph") as writer, jit_trace_warnings_allowed():
        with pytest.raises(RuntimeError, match="dict at the output of the tracer"):
            writer.add_graph(model, x)

    graph = torchscope.module_graph(model, x)
    nodes = logged(graph, tmp_path / "torchscope")
    assert list(nodes) == ["x", "body", "head", "output_features", "output_logits"]
    assert list(nodes["head"].input) == ["body"]
    assert list(nodes["output_features"].input) == ["body"]
    assert shapes_of(nodes["output_logits"]) == [[3, 2]]


class Branchy(nn.Module):
    """Takes a different path depending on the data: relu when the sum is positive, 2 tanh
    otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(4))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if h.sum() > 0:
            return torch.relu(h)
        return torch.tanh(h) * 2


def test_data_dependent_branch_add_graph_bakes_ours_shows_what_ran(tmp_path: Path):
    model = Branchy()
    positive, negative = torch.ones(2, 4), -torch.ones(2, 4)
    with SummaryWriter(tmp_path / "add_graph") as writer, jit_trace_warnings_allowed():
        with pytest.warns(torch.jit.TracerWarning, match="Python boolean"):
            writer.add_graph(model, positive)
    traced_ops = {n.op for n in read_back(tmp_path / "add_graph").values()}
    assert "aten::relu" in traced_ops and "aten::tanh" not in traced_ops
    # the trace fixed the branch: fed the other input it still runs relu, not 2 tanh
    with jit_trace_warnings_allowed():
        traced = torch.jit.trace(model, positive, check_trace=False)
    assert torch.equal(traced(negative), torch.zeros(2, 4))
    assert torch.equal(model(negative), torch.tanh(-torch.ones(2, 4)) * 2)

    # no tracing and no warning (pytest turns warnings into errors): each graph is the
    # branch that ran for its input
    for name, x, present, absent in [
        ("positive", positive, {"ReluBackward0"}, {"TanhBackward0", "MulBackward0"}),
        ("negative", negative, {"TanhBackward0", "MulBackward0"}, {"ReluBackward0"}),
    ]:
        graph = torchscope.autograd_graph_of(model, x)
        ops = {n.op for n in logged(graph, tmp_path / name).values()}
        assert present <= ops and not absent & ops
