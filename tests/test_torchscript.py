"""TorchScript parts (issue 25, class 4): scripted or traced submodules are one opaque node in
both graphs, and a model scripted or traced as a whole is summarised from what can be read
from it; every refusal names the call that was made.

The oracle is PyTorch: the model's own forward for shapes, ``numel()`` for parameters, the
eager model it was scripted from for costs, and the analytic MACs of ``Linear``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import torchscope
from torchscope.errors import GraphError


def quietly(make: Callable[[], Any]) -> Any:
    """torch.jit.script and torch.jit.trace are deprecated (a FutureWarning) but still used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return make()


class Gate(nn.Module):
    """A custom module to script: attributes, a branch, and an op between its submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.full((8,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if bool(y.sum() > 1e9):  # a branch tracing could not keep
            y = y * 0
        return torch.relu(y) * self.scale


def scripted_sequential() -> nn.Module:
    return quietly(lambda: torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.ReLU())))


def scripted_custom() -> nn.Module:
    return quietly(lambda: torch.jit.script(Gate()))


def traced_sequential() -> nn.Module:
    block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    return quietly(lambda: torch.jit.trace(block, torch.zeros(1, 8)))


CHILDREN = {
    "scripted Sequential": scripted_sequential,
    "scripted Gate": scripted_custom,
    "traced Sequential": traced_sequential,
}


class WithScriptedChild(nn.Module):
    def __init__(self, child: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.block = child
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)) + 1)


class Plain(nn.Module):
    """The eager model the fully scripted and traced models are made from."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.register_buffer("offset", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x))) + self.offset


def plain_macs(batch: int) -> int:
    return batch * (4 * 8 + 8 * 8 + 8 * 2)  # Linear: batch * in * out multiply-accumulates


def whole(kind: str) -> tuple[nn.Module, nn.Module]:
    """(the eager model, the same model scripted or traced as a whole), never run yet.

    A fresh class each time: TorchScript shares a scripted class's compiled code, and with it
    the executor's profiling state, between instances.
    """
    torch.manual_seed(0)
    eager = type("Plain", (Plain,), {})()
    if kind == "scripted":
        return eager, quietly(lambda: torch.jit.script(eager))
    return eager, quietly(lambda: torch.jit.trace(eager, torch.zeros(3, 4)))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_left_as_found(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(m.training for m in model.modules())  # the models here are built in train mode
    # the global module hooks that followed the scripted calls are gone
    assert not nn.modules.module._global_forward_pre_hooks
    assert not nn.modules.module._global_forward_hooks
    for module in model.modules():
        if not isinstance(module, torch.jit.ScriptModule):
            assert not module._forward_pre_hooks and not module._forward_hooks


# -- a scripted or traced submodule in an eager model -------------------------------------------


@pytest.mark.parametrize("kind", CHILDREN)
def test_module_graph_draws_a_scripted_child_as_one_node(kind):
    torch.manual_seed(0)
    model = WithScriptedChild(CHILDREN[kind]())
    x = torch.randn(3, 4)
    before = state(model)
    graph = torchscope.module_graph(model, x)
    assert_left_as_found(model, before)

    with torch.no_grad():
        expected = model.block(model.stem(x)).shape  # PyTorch as the oracle
    block = next(node for node in graph.nodes if node.key == "block")
    assert block.kind == "module"
    assert block.label == f"block ({kind})" and block.op == kind
    assert block.shapes == (tuple(expected),)
    assert not any(node.key.startswith("block.") for node in graph.nodes)  # opaque: nothing inside
    edges = {(e.src, e.dst) for e in graph.edges}
    assert {("input:x", "stem"), ("stem", "block"), ("block", "add#0"), ("add#0", "head")} <= edges
    assert [n.key for n in graph.nodes if n.kind == "output"] == ["output"]


@pytest.mark.parametrize("kind", CHILDREN)
def test_autograd_graph_of_clusters_a_scripted_childs_ops(kind):
    torch.manual_seed(0)
    model = WithScriptedChild(CHILDREN[kind]())
    x = torch.randn(3, 4)
    before = state(model)
    graph = torchscope.autograd_graph_of(model, x)
    assert_left_as_found(model, before)

    params = {n.label for n in graph.nodes if n.kind == "parameter"}
    assert params == {name for name, _ in model.named_parameters()}
    clusters = {c.key: c.label for c in graph.clusters}
    assert clusters["block"] == f"block ({kind})"
    inside = [n.op for n in graph.nodes if n.kind == "op" and n.module == "block"]
    assert "AddmmBackward0" in inside  # the child's own ops, clustered under it
    assert not any("DifferentiableGraph" in n.op for n in graph.nodes)
    assert [n.op for n in graph.nodes if n.kind == "op" and not n.module] == ["AddBackward0"]


def test_a_scripted_child_called_twice_is_two_nodes():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = scripted_sequential()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.block(x))

    graph = torchscope.module_graph(Twice(), torch.randn(2, 8))
    assert [n.key for n in graph.nodes if n.kind == "module"] == ["block", "block#1"]
    assert ("block", "block#1") in {(e.src, e.dst) for e in graph.edges}


def test_a_failing_scripted_child_is_named_and_the_hooks_come_off():
    model = WithScriptedChild(scripted_sequential())
    model.stem = nn.Linear(4, 5)  # the scripted Linear(8, 8) now gets 5 features
    before = state(model)
    for collect in (torchscope.module_graph, torchscope.autograd_graph_of):
        with pytest.raises(GraphError) as info:
            collect(model, torch.randn(3, 4))
        assert info.value.module_name == "block"
        assert info.value.module_type == "scripted Sequential"
        assert info.value.input_shapes == ((3, 5),)
        assert_left_as_found(model, before)


def test_another_threads_calls_of_other_modules_are_not_followed():
    """The global hooks only look at this run's scripted modules, in this run's thread."""
    model = WithScriptedChild(scripted_sequential())
    other = scripted_sequential()
    stop = threading.Event()
    calls = [0]

    def busy() -> None:
        while not stop.is_set():
            other(torch.randn(1, 8))
            calls[0] += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        graphs = [torchscope.module_graph(model, torch.randn(3, 4)) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert calls[0] > 0
    for graph in graphs:
        assert [n.key for n in graph.nodes if n.kind == "module"] == ["stem", "block", "head"]


# -- a model scripted or traced as a whole ------------------------------------------------------


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_summary_reads_a_whole_torchscript_model(kind):
    eager, script = whole(kind)
    x = torch.randn(3, 4)
    before = state(script)
    result = torchscope.summary(script, x)
    assert_left_as_found(script, before)

    assert result.model_type == f"{kind} Plain"
    assert [p.name for p in result.parameters] == [n for n, _ in eager.named_parameters()]
    assert [p.shape for p in result.parameters] == [tuple(p.shape) for p in eager.parameters()]
    assert result.total_params == sum(p.numel() for p in eager.parameters())
    assert [b.name for b in result.buffers] == ["offset"]
    with torch.no_grad():
        assert result.output_shapes == (tuple(eager(x).shape),)
    assert result.input_shapes == ((3, 4),)
    # the dispatcher sees TorchScript's ops: the MACs are the eager model's, exactly
    assert result.total_macs == plain_macs(3) == torchscope.summary(eager, x).total_macs
    # the root is the one call; under it, the module tree
    assert [layer.name for layer in result.layers] == [n for n, _ in eager.named_modules()]
    root, *tree = result.layers
    assert root.output_shapes == result.output_shapes and root.macs == result.total_macs
    assert all(layer.input_shapes == () and layer.macs == 0 for layer in tree)
    assert result.scripted == ("",)
    text = str(result)
    assert "rows under the root are its module tree, not calls" in text


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_summary_of_a_torchscript_model_in_train_mode_counts_the_backward(kind):
    eager, script = whole(kind)
    x = torch.randn(3, 4)
    result = torchscope.summary(script, x, mode="train")
    oracle = torchscope.summary(eager, x, mode="train")
    assert result.backward_macs == oracle.backward_macs > 0
    assert all(p.grad is None for p in script.parameters())


def test_a_failing_torchscript_model_is_reported_as_its_root():
    _, script = whole("scripted")
    with pytest.raises(torchscope.SummaryError) as info:
        torchscope.summary(script, torch.randn(3, 5))
    assert info.value.module_name == "" and info.value.module_type == "scripted Plain"
    assert info.value.input_shapes == ((3, 5),)
    assert [layer.failed for layer in info.value.partial.layers] == [True]


def backward_ops(output: torch.Tensor) -> list[str]:
    seen: list[Any] = []
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.append(node)
            stack.extend(child for child, _ in node.next_functions)
    return [node.name().rpartition("::")[2] for node in seen]


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_autograd_graph_of_a_torchscript_model_is_its_ops(kind):
    eager, script = whole(kind)
    x = torch.randn(3, 4)
    first = torchscope.autograd_graph_of(script, x)
    second = torchscope.autograd_graph_of(script, x)
    oracle = torchscope.autograd_graph_of(eager, x)
    assert [n.key for n in first.nodes] == [n.key for n in second.nodes]
    ops = sorted(n.op for n in first.nodes if n.kind == "op")
    assert ops == sorted(n.op for n in oracle.nodes if n.kind == "op")
    assert ops.count("AddmmBackward0") == 3
    assert {n.label for n in first.nodes if n.kind == "parameter"} == {
        name for name, _ in eager.named_parameters()
    }
    assert first.title == f"{kind} Plain"
    assert first.warnings == ()


class Lone(nn.Module):
    """No submodules: its compiled code (and executor) belongs to its class alone."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 8))
        self.w2 = nn.Parameter(torch.randn(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1) @ self.w2


def test_collecting_does_not_advance_torchscripts_executor():
    """TorchScript profiles a method's first calls and then optimises it: a collector that ran
    it optimising would change how the user's next calls run."""

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return quietly(lambda: torch.jit.script(type("Lone", (Lone,), {})()))

    x = torch.randn(3, 4)
    collected, twin = fresh(), fresh()
    torchscope.autograd_graph_of(collected, x)
    torchscope.summary(collected, x, mode="train")
    calls = [backward_ops(collected(x)) for _ in range(4)]
    assert calls == [backward_ops(twin(x)) for _ in range(4)]
    assert calls[0] != calls[-1]  # the executor does change between calls: the test can fail


def test_autograd_graph_of_an_optimised_torchscript_model_says_why_it_is_one_node():
    _, script = whole("scripted")
    x = torch.randn(3, 4)
    for _ in range(4):  # profiled, then optimised: parts run as a DifferentiableGraph
        script(x)
    graph = torchscope.autograd_graph_of(script, x)
    again = torchscope.autograd_graph_of(script, x)
    assert [n.key for n in graph.nodes] == [n.key for n in again.nodes]
    assert "DifferentiableGraphBackward" in [n.op for n in graph.nodes if n.kind == "op"]
    assert any("already optimised" in w and "eager nn.Module" in w for w in graph.warnings)
    # what the summary counts does not depend on it: the ops still pass the dispatcher
    assert torchscope.summary(script, x).total_macs == plain_macs(3)


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_module_graph_of_a_torchscript_model_names_itself_and_what_works(kind):
    _, script = whole(kind)
    with pytest.raises(TypeError) as info:
        torchscope.module_graph(script, torch.randn(3, 4))
    message = str(info.value)
    assert message.startswith("module_graph() cannot see the modules inside a TorchScript")
    assert f"{kind} Plain" in message
    assert "autograd_graph_of(model" in message and "summary(model" in message


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: torchscope.estimate_memory(m, torch.randn(3, 4)), "estimate_memory"),
        (lambda m: torchscope.time_layers(m, torch.randn(3, 4)), "time_layers"),
        (lambda m: torchscope.GradientMonitor(m), "GradientMonitor"),
    ],
)
def test_calls_that_need_hooks_refuse_a_torchscript_model_by_their_own_name(call, name):
    _, script = whole("scripted")
    with pytest.raises(TypeError, match=rf"^{name}\(\) cannot hook a TorchScript module"):
        call(script)


def test_a_non_module_is_refused_by_the_call_made():
    with pytest.raises(TypeError, match=r"^autograd_graph_of\(\) needs an nn.Module"):
        torchscope.autograd_graph_of(lambda x: x, torch.randn(2))
