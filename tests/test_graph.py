"""autograd_graph, autograd_graph_of, module_graph, folding, diff and the DOT/JSON output.

PyTorch is the oracle: the parameters a graph shows are those that receive a gradient in a
real backward pass; the shapes are those the forward produced.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchscope
from torchscope import GraphError, TorchscopeWarning
from torchscope.records.graph_views import find_repeats, view
from torchscope.render import dot as render_dot

from .state import assert_unchanged, snapshot
from .zoo import ZOO, call

GRAPH_ZOO = [entry for entry in ZOO if entry.name != "meta_lenet"]


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)) + x)


class Chain(nn.Module):
    """``x = x * a + b``, ``steps`` times: a long graph of one repeated step."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.full((4,), 0.5))
        self.b = nn.Parameter(torch.zeros(4))
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = x * self.a + self.b
        return x


class UnrolledRNN(nn.Module):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.cell = nn.RNNCell(8, 16)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 16)
        for _ in range(self.steps):
            h = self.cell(x, h)
        return h


def tiny_vit(layers: int = 4) -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=16, mlp_dim=32
    )


# ---------------------------------------------------------------------------------------------
# autograd graph


@pytest.mark.parametrize("entry", GRAPH_ZOO, ids=repr)
def test_parameters_are_those_backward_reaches(entry):
    """Oracle: after a real backward pass, exactly the parameters with a gradient are leaves."""
    model = entry.build()
    torch.manual_seed(0)
    inputs = entry.make_input()
    graph = torchscope.autograd_graph_of(model, inputs)
    shown = {n.label for n in graph.nodes_of("parameter")}
    model.eval()
    outputs = call(model, inputs)
    loss = sum(t.float().sum() for t in torchscope._util.nested.tensors(outputs) if t.requires_grad)
    loss.backward()
    reached = {name for name, p in model.named_parameters() if p.grad is not None}
    assert shown == reached
    keys = [n.key for n in graph.nodes]
    assert len(keys) == len(set(keys))
    known = set(keys)
    assert all(e.src in known and e.dst in known for e in graph.edges)


def test_nested_outputs_all_appear_and_no_grad_outputs_warn():
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        frozen = a * 2

    @dataclasses.dataclass
    class Out:
        hidden: torch.Tensor

    outputs = {"logits": a * b, "extra": [b.exp(), Out(a.sin())], "frozen": frozen}
    with pytest.warns(TorchscopeWarning, match=r"output\['frozen'\] has no grad_fn.*no_grad"):
        graph = torchscope.autograd_graph(outputs, {"a": a, "b": b})
    outs = {n.key for n in graph.nodes_of("output")}
    assert outs == {"output:['logits']", "output:['extra'][0]", "output:['extra'][1].hidden"}
    assert {n.label for n in graph.nodes_of("parameter")} == {"a", "b"}
    assert any("frozen" in w for w in graph.warnings)


def test_inference_mode_output_says_so():
    a = torch.randn(2, requires_grad=True)
    with torch.inference_mode():
        out = torch.ones(2) * 3
    with pytest.warns(TorchscopeWarning, match="inference_mode"):
        graph = torchscope.autograd_graph([a * 2, out])
    assert len(graph.nodes_of("output")) == 1


def test_no_tensor_is_a_clear_error():
    with pytest.raises(TypeError, match="contains no tensor"):
        torchscope.autograd_graph({"a": 1})


def test_params_must_be_named_tensors():
    with pytest.raises(TypeError, match="params"):
        torchscope.autograd_graph(torch.ones(1, requires_grad=True) * 2, params=[1, 2])


def test_deep_graph_has_no_recursion_limit():
    """A chain far longer than Python's recursion limit is walked (torchviz dies at ~1,000)."""
    a = torch.ones(2, requires_grad=True)
    x = a
    for _ in range(20_000):
        x = x * 1.0001
    graph = torchscope.autograd_graph(x, {"a": a})
    assert len(graph.nodes_of("op")) == 20_000
    assert graph.folds and graph.folds[0].count >= 19_000
    assert len(view(graph).nodes) < 10


def test_parameter_names_module_clusters_and_shapes():
    model = MLP()
    x = torch.randn(2, 4)
    graph = torchscope.autograd_graph_of(model, x)
    fc1 = graph.node("param:fc1.weight")
    assert fc1.kind == "parameter" and fc1.shapes == ((8, 4),) and fc1.module == "fc1"
    addmm = graph.node("fc2/AddmmBackward0#0")
    assert addmm.module == "fc2" and addmm.shapes == ((2, 3),) and addmm.dtypes == ("float32",)
    assert {c.key for c in graph.clusters} == {"fc1", "act", "fc2"}
    assert graph.node("output").shapes == ((2, 3),)


def test_show_saved_lists_saved_tensors():
    a = torch.randn(3, 4, requires_grad=True)
    graph = torchscope.autograd_graph((a * a).sum(), {"a": a}, show_saved=True)
    mul = graph.node("MulBackward0#0")
    assert dict(mul.attrs)["self"] == "[3, 4] float32"


def test_keys_and_text_are_stable_across_processes():
    code = (
        "import torch, torchvision, torchscope, hashlib;"
        "torch.manual_seed(0);"
        "m = torchvision.models.resnet18(num_classes=10);"
        "g = torchscope.autograd_graph_of(m, input_size=(1, 3, 32, 32));"
        "print(hashlib.sha256((g.to_dot() + g.to_json()).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    torch.manual_seed(0)
    here = torchscope.autograd_graph_of(
        torchvision.models.resnet18(num_classes=10), input_size=(1, 3, 32, 32)
    )
    import hashlib

    digests.add(hashlib.sha256((here.to_dot() + here.to_json()).encode()).hexdigest())
    assert len(digests) == 1


def test_json_round_trip():
    graph = torchscope.autograd_graph_of(Residual(), torch.randn(1, 3, 4, 4))
    again = torchscope.Graph.from_json(graph.to_json())
    assert again == graph and isinstance(again, torchscope.AutogradGraph)


# ---------------------------------------------------------------------------------------------
# gradients on the graph


def test_grads_colour_parameters_and_find_the_detach():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x).detach() + x)

    model = Detached()
    out = model(torch.randn(3, 4))
    out.sum().backward()
    graph = torchscope.autograd_graph(out, model, grads=True)
    assert graph.node("param:head.weight").grad.status == "ok"
    grad = model.head.weight.grad
    assert graph.node("param:head.weight").grad.norm == pytest.approx(
        grad.double().norm().item(), rel=grad.numel() * torch.finfo(torch.float32).eps
    )
    # the detached layer is not in the graph at all: nothing reaches it
    assert "param:body.weight" not in {n.key for n in graph.nodes}


def test_grads_name_where_the_gradient_died():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU input negative: dead
    x = torch.randn(5, 4)
    with torchscope.capture(model, grads=True) as cap:
        out = model(x)
    out.sum().backward()
    graph = torchscope.autograd_graph(out, model, grads=True, module=cap)
    assert graph.node("param:0.weight").grad.status == "zero"
    assert graph.node("param:2.bias").grad.status == "ok"
    relu = graph.node("1/ReluBackward0#0")
    assert relu.grad.status == "ok"  # it received a gradient ...
    assert graph.node("0/AddmmBackward0#0").grad.status == "zero"  # ... and passed on zeros
    assert graph.grad_origin == "1/ReluBackward0#0"
    assert any("became zero" in w for w in graph.warnings)


def test_grads_without_capture_name_the_dead_subgraph():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    out = model(torch.randn(5, 4))
    out.sum().backward()
    graph = torchscope.autograd_graph(out, model, grads=True)
    assert graph.grad_origin is not None
    assert graph.node(graph.grad_origin).op in ("ReluBackward0", "AddmmBackward0")


def test_grads_flag_nan():
    a = torch.tensor([1.0, -1.0], requires_grad=True)
    out = torch.sqrt(a).sum()  # sqrt(-1) is nan, and so is its gradient
    out.backward()
    graph = torchscope.autograd_graph(out, {"a": a}, grads=True)
    assert graph.node("param:a").grad.status == "nan"


def test_grads_none_before_backward():
    model = MLP()
    graph = torchscope.autograd_graph(model(torch.randn(2, 4)), model, grads=True)
    assert {n.grad.status for n in graph.nodes_of("parameter")} == {"none"}


# ---------------------------------------------------------------------------------------------
# folding


def test_multiply_add_chain_folds_to_a_handful_of_nodes():
    graph = torchscope.autograd_graph_of(Chain(3000), torch.randn(2, 4))
    assert len(graph.nodes) > 6000
    fold = graph.folds[0]
    assert fold.count >= 2990 and len(fold.instances[0]) == 2
    shown = view(graph)
    assert len(shown.nodes) <= 8
    assert any("×" in c.label for c in shown.clusters)
    keys = {n.key for n in shown.nodes}
    assert all(e.src in keys and e.dst in keys for e in shown.edges)


def test_unrolled_rnn_cell_folds_by_module_type():
    graph = torchscope.autograd_graph_of(UnrolledRNN(2000), torch.randn(2, 8))
    fold = graph.folds[0]
    assert fold.label == "RNNCell" and fold.count >= 1990
    assert len(view(graph).nodes) <= 24


def test_identical_blocks_with_their_own_weights_fold():
    model = tiny_vit(layers=6)
    graph = torchscope.module_graph(model, torch.randn(1, 3, 16, 16))
    fold = graph.folds[0]
    assert (fold.label, fold.count) == ("EncoderBlock", 6)
    shown = view(graph)
    assert any(c.label == "EncoderBlock ×6" for c in shown.clusters)
    assert not any(n.key.startswith("encoder.layers.encoder_layer_5") for n in shown.nodes)
    autograd = torchscope.autograd_graph_of(model, torch.randn(1, 3, 16, 16))
    assert autograd.folds[0].label == "EncoderBlock" and autograd.folds[0].count == 6
    assert len(view(autograd).nodes) < len(autograd.nodes) / 3


def test_different_blocks_do_not_fold():
    model = nn.Sequential(*(nn.Linear(4 + i, 5 + i) for i in range(5)))
    graph = torchscope.module_graph(model, torch.randn(1, 4))
    assert graph.folds == ()


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 3), max_size=6),
    block=st.lists(st.integers(4, 9), min_size=1, max_size=5),
    count=st.integers(3, 12),
    suffix=st.lists(st.integers(0, 3), max_size=6),
)
def test_find_repeats_finds_planted_runs(prefix, block, count, suffix):
    sequence = [*prefix, *(block * count), *suffix]
    runs = find_repeats(sequence)
    # every reported run is real: each block equals the first
    covered = [False] * len(sequence)
    for start, period, n in runs:
        first = sequence[start : start + period]
        for k in range(n):
            assert sequence[start + k * period : start + (k + 1) * period] == first
        for i in range(start, start + period * n):
            assert not covered[i]
            covered[i] = True
    # and the planted run is covered (possibly by a shorter period inside a periodic block)
    planted = range(len(prefix) + len(block), len(prefix) + len(block) * (count - 1))
    assert all(covered[i] for i in planted)


@settings(max_examples=80, deadline=None)
@given(
    sequence=st.lists(st.integers(0, 3), max_size=60),
    low=st.integers(1, 12),
    extra=st.integers(0, 12),
    min_count=st.integers(2, 4),
)
def test_repeat_stretches_match_a_plain_scan(sequence, low, extra, min_count):
    """The vectorised scan (all periods of a chunk at once) finds the same stretches as a
    position-by-position scan of each period."""
    from torchscope.records.graph_views import _stretches

    high = low + extra
    expected = []
    for period in range(low, high + 1):
        i = 0
        while i < len(sequence) - period:
            if sequence[i] != sequence[i + period]:
                i += 1
                continue
            start = i
            while i < len(sequence) - period and sequence[i] == sequence[i + period]:
                i += 1
            length = i - start
            if length >= (min_count - 1) * period:
                count = (length + period) // period
                expected.append((-(count * period), period, start, count))
    seq = torch.tensor(sequence, dtype=torch.int64)
    assert sorted(_stretches(seq, low, high, min_count)) == sorted(expected)


def test_fast_record_builders_equal_the_constructors():
    from torchscope.records import GradInfo, GraphEdge, GraphNode
    from torchscope.records.graph import make_edge, make_node

    fields = ("k", "l", "op", "Mul", ((2, 3),), ("float32",), "m.a", 7, GradInfo(1.0, "ok"), ())
    built, constructed = make_node(*fields), GraphNode(*fields)
    assert built == constructed and hash(built) == hash(constructed)
    assert repr(built) == repr(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.key = "other"  # type: ignore[misc]
    assert make_edge("a", "b", "") == GraphEdge("a", "b")
    assert make_edge("a", "b", "x") == GraphEdge("a", "b", "x")


def test_a_deep_graph_warns_that_freeing_it_may_crash(monkeypatch):
    """PyTorch 2.14 frees nodes seen from Python recursively: a capture of a graph deeper
    than the threshold says so (the threshold is lowered here; the real one is 30,000)."""
    from torchscope.collect.graph import autograd as autograd_module

    monkeypatch.setattr(autograd_module, "DEEP_GRAPH", 50)
    a = nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    for _ in range(30):  # two nodes a step
        x = x * a + 1.0
    # sum, 60 steps, the parameter's AccumulateGrad: 62 deep; the walk reached the last Mul
    # by the longest path (61 nodes) and the parameter first from the top, so the warning
    # gives the bound it had at no cost
    with pytest.warns(TorchscopeWarning, match=r"at least 61 nodes deep.*threading.stack_size"):
        torchscope.autograd_graph(x.sum())
    # deeper than the bound the walk found: the longest path is searched for, and exact
    monkeypatch.setattr(autograd_module, "DEEP_GRAPH", 62)
    with pytest.warns(TorchscopeWarning, match=r"graph is 62 nodes deep"):
        torchscope.autograd_graph(x.sum())
    # as many nodes side by side are not deep: no warning
    wide = sum((a * float(k)).sum() for k in range(40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = torchscope.autograd_graph(wide)
    assert len(graph.nodes) > 50


def test_walk_depth_is_the_longest_path():
    from torchscope.collect.graph.walk import _walk

    a = torch.randn(2, requires_grad=True)
    b = a * 2  # MulBackward0
    c = b.exp()  # ExpBackward0
    d = (c + b).sum()  # AddBackward0 joins a long and a short branch, then SumBackward0
    # Sum -> Add -> Exp -> Mul -> AccumulateGrad(a)
    assert _walk([d.grad_fn]).depth() == 5
    assert _walk([]).depth() == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_graph_capture_leaves_the_garbage_collector_as_found(enabled):
    import gc

    x = torch.randn(3, requires_grad=True)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        torchscope.autograd_graph((x * 2).sum())
        assert gc.isenabled() is enabled
        with pytest.raises(TypeError):
            torchscope.autograd_graph((x * 2).sum(), params=42)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


# ---------------------------------------------------------------------------------------------
# module graph


def test_module_graph_links_modules_and_functional_ops():
    graph = torchscope.module_graph(Residual(), torch.randn(1, 3, 4, 4))
    keys = [n.key for n in graph.nodes]
    assert keys == ["input:x", "conv", "bn", "add#0", "relu#0", "output"]
    inputs = {(e.src, e.dst) for e in graph.edges}
    assert ("input:x", "add#0") in inputs and ("bn", "add#0") in inputs  # the skip connection
    assert graph.node("add#0").shapes == ((1, 3, 4, 4),)


def test_module_graph_resnet_clusters_and_depth():
    model = torchvision.models.resnet18(num_classes=10)
    graph = torchscope.module_graph(model, torch.randn(1, 3, 32, 32))
    assert {"layer1", "layer1.0", "layer4.1"} <= {c.key for c in graph.clusters}
    assert graph.node("layer1.0.conv1").module == "layer1.0"
    assert graph.node("layer1.0.relu#1").op == "ReLU"  # the same ReLU called twice
    top = torchscope.module_graph(model, torch.randn(1, 3, 32, 32), depth=1)
    assert [n.key for n in top.nodes if n.kind == "module"] == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert top.node("layer4").shapes == ((1, 512, 1, 1),)
    assert top.clusters == ()


def test_module_graph_dict_inputs_and_outputs():
    from .zoo import BY_NAME

    entry = BY_NAME["dict_in_out"]
    graph = torchscope.module_graph(entry.build(), entry.make_input())
    assert {n.kind for n in graph.nodes} >= {"input", "module", "output"}
    assert all(n.key.startswith("output:") for n in graph.nodes_of("output"))


def test_forward_failure_names_module_and_shapes():
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(7, 2)))
    x = torch.randn(2, 4)
    before = snapshot(model)
    for collect in (torchscope.module_graph, torchscope.autograd_graph_of):
        with pytest.raises(GraphError, match=r"1\.1 \(Linear\) with input shapes \[2, 8\]") as e:
            collect(model, x)
        assert e.value.module_name == "1.1" and e.value.input_shapes == ((2, 8),)
    assert_unchanged(before, model)


@pytest.mark.parametrize("entry", GRAPH_ZOO, ids=repr)
def test_capture_leaves_the_model_as_found(entry):
    model = entry.build()
    model.train()
    inputs = entry.make_input()
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    torchscope.module_graph(model, inputs)
    torchscope.autograd_graph_of(model, inputs)
    assert_unchanged(before, model)
    assert torch.equal(rng, torch.random.get_rng_state())


def test_graph_diff_names_the_changed_layer():
    class Small(nn.Module):
        def __init__(self, hidden: int, extra: bool) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, hidden)
            self.fc2 = nn.Linear(hidden, 2)
            self.extra = nn.Tanh() if extra else None

        def forward(self, x):
            x = self.fc2(self.fc1(x))
            return self.extra(x) if self.extra is not None else x

    x = torch.randn(1, 4)
    a = torchscope.module_graph(Small(8, False), x)
    same = torchscope.graph_diff(a, torchscope.module_graph(Small(8, False), x))
    assert not same and str(same) == "no structural difference"
    changed = torchscope.graph_diff(a, torchscope.module_graph(Small(16, True), x))
    assert changed.added == ("extra",)
    assert dict(changed.changed)["fc1"] == "shapes [1, 8] -> [1, 16]"
    assert "+ extra" in str(changed)


# ---------------------------------------------------------------------------------------------
# rendering


def test_dot_golden_autograd(golden):
    torch.manual_seed(0)
    graph = torchscope.autograd_graph_of(MLP(), input_size=(2, 4))
    golden("graph_mlp_autograd.dot", graph.to_dot())


def test_dot_golden_module(golden):
    graph = torchscope.module_graph(Residual(), input_size=(1, 3, 4, 4))
    golden("graph_residual_module.dot", graph.to_dot())
    golden("graph_residual_module.json", graph.to_json() + "\n")


def test_dot_quotes_hostile_names():
    a = torch.ones(2, requires_grad=True)
    graph = torchscope.autograd_graph(a * 2, {'we"ird\\name': a})
    text = graph.to_dot()
    assert '"param:we\\"ird\\\\name"' in text


def test_render_svg_by_suffix(tmp_path):
    graph = torchscope.module_graph(Residual(), torch.randn(1, 3, 4, 4))
    path = graph.render(tmp_path / "g.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert "conv (Conv2d)" in ET.tostring(root, encoding="unicode")
    assert (
        json.loads(
            (tmp_path / "g.json").write_text(graph.to_json()) and (tmp_path / "g.json").read_text()
        )["kind"]
        == "module"
    )
    with pytest.raises(ValueError, match=r"\.svg"):
        graph.render(tmp_path / "g.bmp")


def test_missing_graphviz_names_the_install_command(tmp_path, monkeypatch):
    graph = torchscope.module_graph(Residual(), torch.randn(1, 3, 4, 4))
    monkeypatch.setattr(render_dot.shutil, "which", lambda name: None)
    with pytest.raises(torchscope.TorchscopeError, match="apt-get install graphviz"):
        graph.render(tmp_path / "g.png")
    graph.render(tmp_path / "g.dot")  # needs no Graphviz
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


def test_big_graph_skips_dot_and_still_renders(tmp_path, monkeypatch):
    calls = []
    real = render_dot._run_dot
    monkeypatch.setattr(
        render_dot, "_run_dot", lambda *a, **k: calls.append(k.get("program")) or real(*a, **k)
    )
    graph = torchscope.autograd_graph_of(
        torchvision.models.densenet121(num_classes=10), torch.randn(1, 3, 32, 32)
    )
    assert not render_dot.fits_dot_budget(view(graph))
    path = graph.render(tmp_path / "densenet.svg")
    assert ET.parse(path).getroot().tag.endswith("svg")
    assert calls == []  # dot never saw it


def test_mimebundle_and_str():
    graph = torchscope.module_graph(MLP(), torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = graph._repr_mimebundle_()
    assert "ModuleGraph of MLP: 5 nodes" in bundle["text/plain"]
    assert "image/svg+xml" in bundle or "text/html" in bundle
