"""An autograd graph read now and assembled on first use (torchscope.records.graph_assembly).

A capture reads only what the live autograd nodes can tell; the records are built from those
columns when the graph is first read. These tests hold the deferred graph to the records it
assembles: it keeps no tensor or node alive, it is equal to them in every way a record is
used (comparison, hashing, pickling, copying, replace, JSON), and it is assembled once.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import threading
import types
import warnings

import pytest
import torch
from torch import nn

import torchscope
from torchscope.records import AutogradGraph
from torchscope.records.graph_assembly import AutogradColumns

from .zoo import BY_NAME, call

ZOO_NAMES = ("lenet", "resnet18", "small_vit", "lstm", "transformer", "dict_in_out")


def _deferred(graph: AutogradGraph) -> bool:
    return "_columns" in vars(graph)


def _same_graph(outputs, params) -> tuple[AutogradGraph, AutogradGraph]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            torchscope.autograd_graph(outputs, params=params),
            torchscope.autograd_graph(outputs, params=params),
        )


def test_a_capture_reads_now_and_assembles_on_first_read():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    graph = torchscope.autograd_graph(model(torch.randn(5, 4)), params=model)
    assert _deferred(graph)
    # what the capture knew already is read without assembling
    assert graph.kind == "autograd" and graph.title == "autograd graph" and graph.warnings == ()
    assert _deferred(graph)
    assert isinstance(vars(graph)["_columns"], AutogradColumns)
    params = {n.label for n in graph.nodes if n.kind == "parameter"}
    assert not _deferred(graph)
    assert params == {name for name, _ in model.named_parameters()}
    # every deferred field came with it
    assert {"nodes", "edges", "clusters", "folds", "grad_origin"} <= set(vars(graph))


@pytest.mark.parametrize("field", ["nodes", "edges", "clusters", "folds", "grad_origin"])
def test_each_deferred_field_assembles_them_all(field):
    a = nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    for _ in range(5):
        x = x * a + 1.0
    graph, reference = _same_graph(x.sum(), {"a": a})
    getattr(graph, field)
    assert not _deferred(graph)
    assert graph == reference and graph.folds  # five repeated steps fold


def _reachable(root: object) -> list[object]:
    """Every object reachable from ``root`` through references, classes and modules aside."""
    seen = {id(root)}
    found = [root]
    for obj in found:  # grows while it is read
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, (type, types.ModuleType)):
                seen.add(id(ref))
                found.append(ref)
    return found


def test_a_deferred_graph_keeps_no_tensor_and_no_node_alive():
    """The columns are plain values: no tensor, no autograd node, so the activations the
    graph saved for backward are freed with it, though the captured graph lives on unread."""
    weight = nn.Parameter(torch.randn(16, 16))
    activation = (torch.randn(8, 16) @ weight).exp()
    graph = torchscope.autograd_graph(
        {"out": activation.sum(), "pair": activation.unbind(0)[:2]}, params={"weight": weight}
    )
    assert _deferred(graph)
    held = _reachable(vars(graph)["_columns"])
    assert len(held) > 20  # it did look inside
    assert not [x for x in held if isinstance(x, torch.Tensor)]
    assert not [x for x in held if hasattr(x, "next_functions")]  # autograd nodes
    del activation
    shapes = {n.op: n.shapes for n in graph.nodes}
    assert shapes["ExpBackward0"] == ((8, 16),) and shapes["MmBackward0"] == ((8, 16),)
    assert shapes["AccumulateGrad"] == ((16, 16),)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_a_deferred_graph_is_the_records_it_assembles(name):
    entry = BY_NAME[name]
    model = entry.build().eval()
    torch.manual_seed(0)
    outputs = call(model, entry.make_input())
    read, reference = _same_graph(outputs, model)
    reference.nodes  # noqa: B018 (assembled)
    eager = AutogradGraph(
        **{f.name: getattr(reference, f.name) for f in dataclasses.fields(reference)}
    )
    assert not _deferred(eager)
    assert read == eager and hash(read) == hash(eager) and repr(read) == repr(eager)
    # each way of copying or converting a record, taken while still deferred
    for made in (
        lambda g: pickle.loads(pickle.dumps(g)),
        copy.copy,
        copy.deepcopy,
        lambda g: dataclasses.replace(g),
        lambda g: AutogradGraph.from_json(g.to_json()),
    ):
        graph, _ = _same_graph(outputs, model)
        assert _deferred(graph)
        assert made(graph) == eager
    graph, _ = _same_graph(outputs, model)
    assert graph.to_dot() == eager.to_dot() and str(graph) == str(eager)
    assert len(graph) == len(eager.nodes)


def test_an_unread_graph_pickles_as_the_read_one():
    """Byte for byte: the pickle names only the record classes (an unread graph's columns
    would name torch.Size and the assembly module, which a weights_only load refuses)."""
    a = nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    for _ in range(4):
        x = x * a + 1.0
    unread, read = _same_graph(x.sum(), {"a": a})
    read.nodes  # noqa: B018 (assembled)
    data = pickle.dumps(unread)
    assert data == pickle.dumps(read)
    assert b"graph_assembly" not in data and b"Size" not in data
    assert pickle.loads(data) == read


def test_reading_a_graph_is_out_of_reach_of_the_torch_context():
    """The fold search uses tensors; reading a graph under a device context or a dispatch
    mode neither fails nor shows the mode the record's own work."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    a = nn.Parameter(torch.randn(3))
    x = torch.randn(3)
    for _ in range(6):
        x = x * a + 1.0
    unread, reference = _same_graph(x.sum(), {"a": a})
    other, _ = _same_graph(x.sum(), {"a": a})
    with torch.device("meta"):
        assert unread.folds == reference.folds and reference.folds
    with Seen():
        assert len(other) == len(reference)
    assert seen == []


def test_threads_that_read_a_new_graph_at_once_agree():
    a = nn.Parameter(torch.randn(8))
    x = torch.randn(8)
    for _ in range(300):
        x = torch.tanh(x * a)
    graph, reference = _same_graph(x.sum(), {"a": a})
    start = threading.Barrier(4)
    seen: list[object] = []

    def read() -> None:
        start.wait()
        seen.append((graph.nodes, graph.edges, graph.folds))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4
    assert all(s == (reference.nodes, reference.edges, reference.folds) for s in seen)
    # assembled once: every thread holds the very objects the graph keeps
    assert all(s[0] is graph.nodes and s[2] is graph.folds for s in seen)


def test_shapes_of_ops_of_several_outputs_and_of_nested_tensors():
    """Oracle: the tensors themselves. unbind has one output per slice; a nested tensor has
    no shape (its dtype is still known); neither may stop the capture."""
    a = torch.randn(3, 4, requires_grad=True)
    pieces = a.unbind(0)
    graph = torchscope.autograd_graph(sum(p.sum() for p in pieces))
    unbind = next(n for n in graph.nodes if n.op == "UnbindBackward0")
    assert unbind.shapes == tuple(tuple(p.shape) for p in pieces)
    assert unbind.dtypes == ("float32",) * 3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        parts = [torch.randn(2, 4), torch.randn(3, 4)]
        doubled = torch.nested.nested_tensor(parts, requires_grad=True) * 2
    graph = torchscope.autograd_graph(doubled)
    by_op = {n.op: n for n in graph.nodes}
    assert by_op["MulBackward0"].shapes == ((),) and by_op["MulBackward0"].dtypes == ("float32",)
    assert by_op["AccumulateGrad"].shapes == ((),)
    assert by_op["output"].dtypes == ("float32",)


def test_with_grads_the_origin_is_known_at_capture():
    """grads=True names where the gradient went bad in a warning: assembled at capture."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit dead: nothing reaches the first layer
    out = model(torch.randn(3, 4))
    out.sum().backward()
    graph = torchscope.autograd_graph(out, params=model, grads=True)
    assert not _deferred(graph)
    # a falsy grads= (a config's missing key) is grads=False, as before
    assert _deferred(torchscope.autograd_graph(out, params=model, grads=None))  # type: ignore[arg-type]
    assert graph.grad_origin is not None
    assert f"the gradient first became zero at {graph.grad_origin}" in graph.warnings


def test_ops_recorded_on_another_thread_do_not_fold_as_one():
    """autograd numbers each thread's ops apart, so an op's input may come later in forward
    order (an offset back below zero); three different multiplications are no fold."""
    w = torch.randn(4, requires_grad=True)
    for _ in range(50):  # the main thread's numbering well above the worker's
        torch.ones(1, requires_grad=True) * 1
    a = w * 2
    made: dict[str, torch.Tensor] = {}

    def worker() -> None:
        made["b"] = w * 2  # numbered from 0: before `a` in forward order
        made["c"] = a * 2  # its input `a` comes after it

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    graph = torchscope.autograd_graph((made["b"] + made["c"]).sum(), params={"w": w})
    assert graph.folds == ()
    assert sum(node.op == "MulBackward0" for node in graph.nodes) == 3
