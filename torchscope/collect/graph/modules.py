"""module_graph: the data flow between a model's modules for one forward pass.

Module hooks and a ``TorchFunctionMode`` link module calls and the functional ops between them
by tensor identity.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import torchscope._util.nested as _nested
from torchscope._util.inputs import call_arguments, model_devices, resolve_device, unwrap
from torchscope.collect._torchscript import (
    follow_scripted_calls,
    is_script,
    plain_execution,
    split_modules,
    type_name,
)
from torchscope.collect.graph._common import (
    MIN_FOLD_COUNT,
    _Call,
    _dtype_name,
    _forward_error,
    _raising,
)
from torchscope.collect.hooks import initialised, instrumented
from torchscope.records import GraphCluster, GraphEdge, GraphFold, GraphNode, ModuleGraph
from torchscope.records.graph_views import check_depth, find_repeats, view


def _io_node(key: str, label: str, kind: str, tensor: torch.Tensor) -> GraphNode:
    """An input or output node of the module graph."""
    return GraphNode(
        key=key,
        label=label,
        kind=kind,
        op=kind,
        shapes=(_nested.shape_of(tensor),),
        dtypes=(_dtype_name(tensor.dtype),),
        module=None,
    )


@dataclasses.dataclass
class _Item:
    """A node of the module graph being built, or a container call (a cluster)."""

    key: str
    hash: int
    nodes: list[str]  # the graph nodes this item covers, in order


class _ModuleFlow(TorchFunctionMode):
    """Links module calls and the functional ops between them by tensor identity."""

    def __init__(self) -> None:
        super().__init__()
        self.producer: dict[int, tuple[str, torch.Tensor]] = {}
        self.nodes: list[GraphNode] = []
        self.edges: dict[tuple[str, str], GraphEdge] = {}
        self.stack: list[tuple[str, nn.Module, list[_Item]]] = []  # scope, module, its items
        self.scopes: dict[str, tuple[str, str | None]] = {}  # scope -> (label, parent scope)
        self.calls: dict[str, int] = {}
        self.op_counts: dict[tuple[str, str], int] = {}
        self.root_items: list[_Item] = []
        self.item_children: dict[str, list[_Item]] = {}
        self.failed: _Call | None = None
        self.leaf_depth = 0  # > 0 while inside a leaf module
        self.pending: list[_Call] = []

    # -- helpers
    def scope(self) -> str:
        return self.stack[-1][0] if self.stack else ""

    def items(self) -> list[_Item]:
        return self.stack[-1][2] if self.stack else self.root_items

    def link(self, value: Any, key: str) -> None:
        for tensor in _nested.tensors(value):
            found = self.producer.get(id(tensor))
            if found is not None and found[1] is tensor and found[0] != key:
                self.edges.setdefault((found[0], key), GraphEdge(found[0], key))

    def produce(self, value: Any, key: str) -> None:
        for tensor in _nested.tensors(value):
            self.producer[id(tensor)] = (key, tensor)

    def add_node(self, node: GraphNode) -> None:
        self.nodes.append(dataclasses.replace(node, order=len(self.nodes)))

    # -- functional ops in a container's forward
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.leaf_depth or not isinstance(result, (torch.Tensor, tuple, list)):
            return result
        inputs = [
            t
            for t in _nested.tensors((args, kwargs))
            if (found := self.producer.get(id(t))) is not None and found[1] is t
        ]
        outputs = list(_nested.tensors(result))
        if not inputs or not outputs:
            return result
        name = _function_name(func)
        scope = self.scope()
        count = self.op_counts.get((scope, name), 0)
        self.op_counts[(scope, name)] = count + 1
        key = f"{scope}/{name}#{count}" if scope else f"{name}#{count}"
        self.add_node(
            GraphNode(
                key=key,
                label=name,
                kind="op",
                op=name,
                shapes=tuple(_nested.shape_of(t) for t in outputs),
                dtypes=tuple(_dtype_name(t.dtype) for t in outputs),
                module=scope,
            )
        )
        self.link(inputs, key)
        self.produce(result, key)
        self.items().append(_Item(key, hash((name, self.nodes[-1].shapes)), [key]))
        return result


def _function_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name in ("__get__", "__set__"):
        name = getattr(func, "__qualname__", name)
    return name.strip("_") or name


def _is_leaf(module: nn.Module) -> bool:
    # what a TorchScript module calls inside runs where no hook reaches: one opaque node
    return is_script(module) or not any(True for _ in module.children())


def module_graph(
    model: nn.Module,
    input: Any = None,
    *,
    input_size: Any = None,
    dtypes: Any = None,
    device: Any = None,
    depth: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> ModuleGraph:
    """Return the data flow between ``model``'s modules for one forward pass.

    Leaf modules (those without children) are nodes; containers are clusters; functional ops
    called in a container's ``forward`` (``x + identity``, ``torch.flatten``) are nodes of
    their own. Edges follow tensor identity from producer to consumer. Runs of structurally
    identical calls (12 encoder blocks with their own weights) are recorded as folds and
    drawn once with their count.

    Inputs are given like :func:`torchscope.summary`'s. The forward runs once in ``eval``
    mode without gradients; the model is left as found.

    Args:
        depth: show modules down to this nesting level (1: the model's direct children);
            deeper ones are merged into their ancestor at that level. None keeps everything;
            renderers take ``depth=`` too.

    Raises:
        GraphError: the forward failed; names the module and the shapes it received.
    """
    check_depth(depth)  # before the model runs
    model = unwrap(model, caller="module_graph", allow_script=True)
    if is_script(model):
        raise TypeError(
            f"module_graph() cannot see the modules inside a TorchScript model ({type_name(model)}):"
            " its submodule calls run in the TorchScript interpreter, where no hook reaches. Pass "
            "the eager nn.Module (before torch.jit.script/trace), or use autograd_graph_of(model, "
            "...) for its ops or summary(model, ...) for its parameters, module tree and shapes"
        )
    target = resolve_device(model_devices(model), device)
    args, kwargs = call_arguments(
        model, input, input_size, dtypes, device, target, forward_kwargs, caller="module_graph"
    )
    model = initialised(model, args, kwargs, call="module_graph")
    flow = _ModuleFlow()
    input_keys = _input_keys(model, args, kwargs)
    for key, tensor, path in input_keys:
        flow.add_node(_io_node(key, path, "input", tensor))
        flow.produce(tensor, key)
    hookable, scripted = split_modules(model)
    with instrumented(model, grad=False) as hooks:
        model.eval()
        for name, module in hookable:
            hooks.add(module.register_forward_pre_hook(_enter(flow, name), with_kwargs=True))
            hooks.add(
                module.register_forward_hook(_leave(flow, name), always_call=True, with_kwargs=True)
            )
        # TorchScript modules take no hooks: each is one opaque node, followed by global hooks
        follow_scripted_calls(
            hooks,
            scripted,
            lambda name, module, args: _enter(flow, name)(module, args, {}),
            lambda name, module, args, output: _leave(flow, name)(module, args, {}, output),
        )
        try:
            with flow, plain_execution(bool(scripted)):
                outputs = model(*args, **kwargs)
        except Exception as e:
            raise _forward_error(e, flow.failed) from e
    for path, tensor in _nested.named_tensors(outputs, "output"):
        key = "output" if path == "output" else f"output:{path.removeprefix('output')}"
        flow.add_node(_io_node(key, path, "output", tensor))
        flow.link(tensor, key)
    clusters = tuple(
        GraphCluster(scope, label, parent) for scope, (label, parent) in flow.scopes.items()
    )
    folds = _module_folds(flow)
    graph = ModuleGraph(
        kind="module",
        title=type(model).__name__,
        nodes=tuple(flow.nodes),
        edges=tuple(sorted(flow.edges.values(), key=_edge_order(flow.nodes))),
        clusters=clusters,
        folds=folds,
    )
    if depth is not None:
        graph = view(graph, fold=False, depth=depth)  # type: ignore[assignment]
    return graph


def _edge_order(nodes: list[GraphNode]) -> Callable[[GraphEdge], tuple[int, int]]:
    order = {n.key: n.order for n in nodes}
    return lambda e: (order.get(e.src, 0), order.get(e.dst, 0))


def _input_keys(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[str, torch.Tensor, str]]:
    try:
        parameters = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        parameters = []
    found = []
    for i, arg in enumerate(args):
        base = (
            parameters[i] if i < len(parameters) and parameters[i] not in ("args",) else f"input{i}"
        )
        for path, tensor in _nested.named_tensors(arg, base):
            found.append((f"input:{path}", tensor, path))
    for name, value in kwargs.items():
        for path, tensor in _nested.named_tensors(value, name):
            found.append((f"input:{path}", tensor, path))
    return found


def _enter(flow: _ModuleFlow, name: str) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        if flow.leaf_depth:
            flow.leaf_depth += 1
            return
        count = flow.calls.get(name, 0)
        flow.calls[name] = count + 1
        scope = (name if count == 0 else f"{name}#{count}") or type(module).__name__
        call = _Call(scope, type_name(module), _nested.shapes((args, kwargs)))
        flow.pending.append(call)
        if _is_leaf(module):
            flow.leaf_depth = 1
            return
        parent = flow.scope()
        label = f"{scope} ({type_name(module)})"
        if name:
            flow.scopes[scope] = (label, parent or None)
        flow.stack.append((scope if name else "", module, []))

    return pre_hook


def _leave(flow: _ModuleFlow, name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if flow.leaf_depth > 1:
            flow.leaf_depth -= 1
            return
        call = flow.pending.pop() if flow.pending else None
        if _raising():
            if flow.failed is None and call is not None:
                flow.failed = call
            if flow.leaf_depth == 0 and flow.stack:
                flow.stack.pop()
            flow.leaf_depth = 0
            return
        if call is None:
            return
        if flow.leaf_depth == 1:
            flow.leaf_depth = 0
            key = call.name
            scope = flow.scope()
            outs = list(_nested.tensors(output))
            flow.add_node(
                GraphNode(
                    key=key,
                    label=f"{key} ({call.type})" if name else call.type,
                    kind="module",
                    op=call.type,
                    shapes=tuple(_nested.shape_of(t) for t in outs),
                    dtypes=tuple(_dtype_name(t.dtype) for t in outs),
                    module=scope,
                )
            )
            flow.link((args, kwargs), key)
            flow.produce(output, key)
            params = tuple(tuple(p.shape) for p in module.parameters(recurse=is_script(module)))
            flow.items().append(_Item(key, hash((call.type, params, flow.nodes[-1].shapes)), [key]))
            return
        # a container: its nodes are already in; it becomes one item of its caller
        scope, _, items = flow.stack.pop()
        item = _Item(
            scope,
            hash((call.type, tuple(i.hash for i in items))),
            [k for i in items for k in i.nodes],
        )
        flow.item_children[scope] = items
        if name:
            flow.items().append(item)
        else:
            flow.root_items.extend(items)

    return hook


def _module_folds(flow: _ModuleFlow) -> tuple[GraphFold, ...]:
    folds: list[GraphFold] = []
    labels = {n.key: n.op for n in flow.nodes}

    def nesting(scope: str) -> int:
        level = 0
        while scope in flow.scopes and level <= len(flow.scopes):
            scope = flow.scopes[scope][1] or ""
            level += 1
        return level

    # outer containers first: a run of stages is found before the run of blocks in each
    children = sorted(flow.item_children.items(), key=lambda item: nesting(item[0]))
    sequences = [flow.root_items, *(items for _, items in children)]
    covered: dict[str, tuple[int, int]] = {}  # node -> innermost (fold, repetition) holding it
    for items in sequences:
        for start, period, count in find_repeats([i.hash for i in items], min_count=MIN_FOLD_COUNT):
            blocks = [items[start + k * period : start + (k + 1) * period] for k in range(count)]
            instances = tuple(tuple(k for item in block for k in item.nodes) for block in blocks)
            holders = {covered.get(k) for inst in instances for k in inst}
            if len(holders) != 1 or ((holder := holders.pop()) is not None and holder[1] != 0):
                # only a run nested in the first repetition of an outer one is drawn (the
                # others are drawn as that one); one straddling repetitions is not a run
                continue
            for r, inst in enumerate(instances):
                covered.update((k, (len(folds), r)) for k in inst)
            kinds = [
                flow.scopes[item.key][0].rsplit("(", 1)[-1].rstrip(")")
                if item.key in flow.scopes
                else labels.get(item.key, item.key)
                for item in blocks[0]
            ]
            folds.append(GraphFold(" → ".join(kinds), count, instances))
    folds.sort(key=lambda f: -f.count * len(f.instances[0]))
    return tuple(folds)
