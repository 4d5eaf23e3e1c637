"""autograd_graph and autograd_graph_of: the autograd graph behind tensors, or of one forward.

:func:`autograd_graph_of` runs the forward under :func:`~torchscope.collect.graph.capture` so
that op nodes are clustered by the module that created them.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion

import torchscope._util.nested as _nested
from torchscope._util.collector import collector_paused
from torchscope._util.inputs import call_arguments, model_devices, resolve_device, unwrap
from torchscope.collect._torchscript import (
    OPTIMIZED_NOTE,
    plain_execution,
    split_modules,
    type_name,
)
from torchscope.collect.graph._common import Node, _dtype_name
from torchscope.collect.graph.capturing import ModuleCapture, _grad_stats, capture, run_forward
from torchscope.collect.graph.walk import Walk, _saved, _shape, _walk
from torchscope.collect.hooks import initialised, instrumented, iter_modules
from torchscope.errors import TorchscopeWarning
from torchscope.records import AutogradGraph, GradInfo
from torchscope.records.graph_assembly import AutogradColumns, bad_below


def _parameter_names(params: nn.Module | Mapping[str, torch.Tensor] | None) -> dict[int, str]:
    if params is None:
        return {}
    if isinstance(params, nn.Module):
        named: list[tuple[str, Any]] = []
        for prefix, module in iter_modules(params):
            for pname, p in module._parameters.items():
                if p is not None:
                    named.append((f"{prefix}.{pname}" if prefix else pname, p))
    elif isinstance(params, Mapping):
        named = list(params.items())
        for name, p in named:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"params[{name!r}] is a {type(p).__name__}; params maps names to tensors "
                    "(pass dict(model.named_parameters()) or the model itself)"
                )
    else:
        raise TypeError(
            f"params must be an nn.Module or a dict of name -> tensor, got {type(params).__name__}"
        )
    names: dict[int, str] = {}
    for name, p in named:
        names.setdefault(id(p), name)
    return names


def _tensor_grad(tensor: torch.Tensor) -> GradInfo:
    grad = tensor.grad
    if grad is None:
        return GradInfo(None, "none")
    return _grad_info(_grad_stats((grad,)))


def _grad_info(stats: torch.Tensor) -> GradInfo:
    sumsq, nonfinite, max_abs, nans = (float(v) for v in stats)
    if nans:
        return GradInfo(math.sqrt(sumsq), "nan")
    if nonfinite:
        return GradInfo(math.sqrt(sumsq), "inf")
    if max_abs == 0:
        return GradInfo(0.0, "zero")
    return GradInfo(math.sqrt(sumsq), "ok")


def autograd_graph(
    outputs: Any,
    params: nn.Module | Mapping[str, torch.Tensor] | None = None,
    *,
    grads: bool = False,
    show_saved: bool = False,
    module: ModuleCapture | None = None,
) -> AutogradGraph:
    """Return the autograd graph behind ``outputs``: what ``backward()`` will run.

    Args:
        outputs: a tensor or any nesting of tensors (tuple, list, dict, dataclass). Every
            output that requires grad appears; one without a ``grad_fn`` gives a warning.
        params: a module or a ``name -> tensor`` mapping, so that parameter leaves carry their
            qualified names (``layer1.0.conv1.weight``).
        grads: after ``backward()``: record each parameter's gradient (and, with a
            ``capture(grads=True)``, each op's) and find where it first became zero or
            non-finite (``graph.grad_origin``).
        show_saved: list the tensors each op saved for backward in its ``attrs``.
        module: a :func:`capture` of the forward, to cluster op nodes by module.

    Keys are stable across runs and processes; the walk is iterative and linear in the size
    of the graph, with no recursion limit. The capture reads only what the live autograd
    nodes can tell; the records (nodes, edges, clusters, folds) are built from it when first
    read.
    """
    return _autograd_graph(outputs, params, grads, show_saved, module)[0]


def _autograd_graph(
    outputs: Any,
    params: nn.Module | Mapping[str, torch.Tensor] | None,
    grads: bool,
    show_saved: bool,
    module: ModuleCapture | None,
) -> tuple[AutogradGraph, list[str]]:
    """:func:`autograd_graph`, and the class names of its autograd nodes."""
    names = _parameter_names(params)
    named_outputs = list(_nested.named_tensors(outputs, "output"))
    if not named_outputs:
        raise TypeError(
            f"outputs contains no tensor (got {type(outputs).__name__}); pass the tensor(s) "
            "whose graph you want, e.g. autograd_graph(model(x))"
        )
    warn: list[str] = []
    roots: list[Node] = []
    root_of_output: list[tuple[str, torch.Tensor, Node | None]] = []
    for path, tensor in named_outputs:
        node = tensor.grad_fn
        if node is None and tensor.requires_grad:
            node = _accumulate_node(tensor)
        if node is None:
            grad_was_on = module is not None and module.grad_enabled
            warn.append(f"{path} has no grad_fn: {_why_no_grad_fn(tensor, names, grad_was_on)}")
        else:
            roots.append(node)
        root_of_output.append((path, tensor, node))
    # building a graph makes a few objects per node and frees none, which set the collector
    # off over and over on a heap that only grows (a third of the time of a 40k-node graph);
    # the records hold no reference cycles, so there is nothing for it to find
    with collector_paused():
        walk = _walk(roots)
        graph = _build_autograd(walk, root_of_output, names, module, grads, show_saved, warn)
    for message in warn[: len(warn) - (bool(grads) and graph.grad_origin is not None)]:
        warnings.warn(message, TorchscopeWarning, stacklevel=3)
    if _FREES_SEEN_NODES_RECURSIVELY and len(walk) >= DEEP_GRAPH:
        # the path the walk took is a lower bound of the longest: where it is long enough
        # already, the longest path need not be found
        exact = walk.reached < DEEP_GRAPH
        depth = walk.depth() if exact else walk.reached
        if depth >= DEEP_GRAPH:
            warnings.warn(_deep_graph_note(depth, exact), TorchscopeWarning, stacklevel=3)
    if module is not None and grads:
        module.remove_node_hooks()
    return graph, walk.names


#: Nodes on the longest path from which the capture warns that freeing the graph may crash.
DEEP_GRAPH = 30_000
#: Whether this PyTorch frees nodes that were seen from Python recursively (2.14 does;
#: checked on 2.14.1, where a walked 60,000-node chain crashed on an 8 MB stack and a
#: 40,000-node one did not)
_FREES_SEEN_NODES_RECURSIVELY = TorchVersion(torch.__version__) >= "2.14"


def _deep_graph_note(depth: int, exact: bool = True) -> str:
    """Why freeing a graph this deep may crash, and how to avoid it.

    Since PyTorch 2.14 an autograd node keeps the Python object that stands for it once one
    was made (any walk of ``grad_fn.next_functions`` makes them: this capture, torchviz,
    your own), and freeing such nodes recurses on the C stack, one level per node: on a
    default 8 MB stack a chain of about 60,000 nodes crashes the process with a
    segmentation fault when it is freed, or when backward() frees it (on 2.14.1: 40,000
    nodes freed fine, 60,000 crashed).
    """
    return (
        f"this autograd graph is {'' if exact else 'at least '}{depth:,} nodes deep. "
        "PyTorch 2.14 frees a graph whose "
        "nodes were seen from Python (by this capture, or any walk of grad_fn.next_functions) "
        "recursively, one C stack frame per node: freeing one this deep, or calling "
        "backward() through it, may overflow the stack and crash the process (a default 8 MB "
        "stack freed 40,000 nodes and crashed on 60,000). Build, capture and free it in a "
        "thread with a larger stack (threading.stack_size(1 << 29) before starting the "
        "thread), or raise the limit of the main thread (ulimit -s unlimited)"
    )


def _accumulate_node(tensor: torch.Tensor) -> Node | None:
    """The AccumulateGrad node of a leaf that requires grad (an output that is a parameter)."""
    try:
        return torch.autograd.graph.get_gradient_edge(tensor).node
    except (RuntimeError, AttributeError):
        return None


def _why_no_grad_fn(tensor: torch.Tensor, names: dict[int, str], grad_was_on: bool) -> str:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return f"it is a {_dtype_name(tensor.dtype)} tensor, which autograd never differentiates"
    if tensor.is_inference():
        return "it was computed under torch.inference_mode(); run the forward without it"
    if grad_was_on:  # the forward ran with gradients on: it was cut off inside
        return (
            "grad mode was on when the forward started; the forward computed it under "
            "torch.no_grad(), detached it, or built it from tensors none of which require grad"
        )
    if any(True for _ in names):
        return (
            "it was computed under torch.no_grad(), detached, or from tensors none of which "
            "require grad; run the forward with gradients enabled"
        )
    return (
        "it was computed under torch.no_grad(), detached, or from tensors none of which "
        "require grad"
    )


def _build_autograd(
    walk: Walk,
    outputs: list[tuple[str, torch.Tensor, Node | None]],
    names: dict[int, str],
    capture_: ModuleCapture | None,
    grads: bool,
    show_saved: bool,
    warn: list[str],
) -> AutogradGraph:
    """The graph of ``walk``: what only the live nodes can tell is read now, into columns;
    the records are assembled from them when first read (``AutogradColumns``)."""
    nodes = walk.nodes
    leaves = walk.leaves
    modules: list[str | None] | None = None
    if capture_ is not None:
        module_of = capture_.module_of
        modules = [module_of.get(node) for node in nodes] if module_of else [None] * len(nodes)
    grad_of: dict[int, GradInfo] | None = None
    if grads:
        grad_of = {}
        received = capture_.received if capture_ is not None else {}
        for i, node in enumerate(nodes):
            leaf = leaves.get(i)
            if leaf is not None:
                grad_of[i] = _tensor_grad(leaf)
            elif capture_ is not None and capture_.grads:
                stats = received.get(node)
                grad_of[i] = _grad_info(stats) if stats is not None else GradInfo(None, "none")
    columns = AutogradColumns(
        names=walk.names,
        seqs=walk.seqs,
        children=walk.children,
        sizes=walk.sizes,
        dtypes=walk.dtypes,
        leaves={i: names.get(id(leaf)) for i, leaf in leaves.items()},
        modules=modules,
        types=dict(capture_.types) if capture_ is not None else None,
        outputs=[
            (path, tuple(_shape(tensor)), _dtype_name(tensor.dtype), walk.index[node])
            for path, tensor, node in outputs
            if node is not None
        ],
        grads=grad_of,
        saved=(
            {i: _saved(node) for i, node in enumerate(nodes) if i not in leaves}
            if show_saved
            else {}
        ),
    )
    title = type_name(capture_.model) if capture_ is not None else "autograd graph"
    if not grads:  # assembled when first read
        return AutogradGraph.from_columns(columns, title=title, warnings=tuple(warn))
    # the gradient's origin is given as a warning too: assembled now
    built, edges, clusters, folds, origin = columns.assemble()
    if origin is not None:
        warn.append(f"the gradient first became {bad_below(built)} at {origin}")
    return AutogradGraph(
        kind="autograd",
        title=title,
        nodes=built,
        edges=edges,
        clusters=clusters,
        folds=folds,
        warnings=tuple(warn),
        grad_origin=origin,
    )


def autograd_graph_of(
    model: nn.Module,
    input: Any = None,
    *,
    input_size: Any = None,
    dtypes: Any = None,
    device: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    show_saved: bool = False,
) -> AutogradGraph:
    """Return the autograd graph of one forward pass of ``model``, clustered by module.

    Inputs are given like :func:`torchscope.summary`'s (``input=`` values or
    ``input_size=`` shapes). The model is left as found (state, flags, hooks, RNG); the
    forward runs in ``eval`` mode with gradients enabled.

    Raises:
        GraphError: the forward failed; names the module and the shapes it received.
    """
    model = unwrap(model, caller="autograd_graph_of", allow_script=True)
    target = resolve_device(model_devices(model), device)
    args, kwargs = call_arguments(
        model, input, input_size, dtypes, device, target, forward_kwargs, caller="autograd_graph_of"
    )
    model = initialised(model, args, kwargs, call="autograd_graph_of")
    with instrumented(model, grad=True):
        model.eval()
        with capture(model) as cap, plain_execution(_has_script(model)):
            outputs = run_forward(model, args, kwargs, cap)
        if next(_nested.tensors(outputs), None) is None:
            return _empty_autograd_graph(outputs, cap)
        graph, ops = _autograd_graph(outputs, model, False, show_saved, cap)
    if "DifferentiableGraphBackward" in ops:
        graph = dataclasses.replace(graph, warnings=(*graph.warnings, OPTIMIZED_NOTE))
    return graph


def _empty_autograd_graph(outputs: Any, cap: ModuleCapture) -> AutogradGraph:
    """The graph of a forward that returned no tensor (None, a string, a class): no nodes,
    and a note (also given as a warning) that says why."""
    if outputs is None or isinstance(outputs, type):
        got = repr(outputs) if outputs is None else f"the class {outputs.__qualname__}"
    elif isinstance(outputs, (str, bytes, int, float, complex)):
        got = f"a {type(outputs).__name__}"
    else:
        got = f"a {type(outputs).__name__} holding no tensor"
    note = (
        f"the forward returned {got}, so backward() has nothing to run and the autograd graph "
        "is empty; module_graph() and summary() show the modules it called"
    )
    warnings.warn(note, TorchscopeWarning, stacklevel=3)
    return _build_autograd(_walk([]), [], {}, cap, False, False, [note])


def _has_script(model: nn.Module) -> bool:
    return bool(split_modules(model)[1])
