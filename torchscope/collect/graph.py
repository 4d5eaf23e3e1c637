"""Graph collectors: the autograd graph behind tensors and the data flow between modules.

- :func:`autograd_graph` walks ``grad_fn.next_functions`` iteratively (linear time, no
  recursion limit) from any nesting of output tensors.
- :func:`capture` records, while a forward runs, which module created each autograd node
  (``torch.autograd.graph.node_creation_hook``) and, with ``grads=True``, the gradient each
  node receives in the next backward pass.
- :func:`autograd_graph_of` runs a model's forward under :func:`capture` and returns the
  autograd graph with module clusters.
- :func:`module_graph` runs a forward with module hooks and a ``TorchFunctionMode`` and links
  modules (and the functional ops between them) by tensor identity.

Node keys are stable: the same model and input give the same keys, DOT and JSON in every run
and process (they come from module names, op names and execution order, never from ``id()``).
Repeated computation is found with :func:`torchscope.records.graph_views.find_repeats` and recorded as
:class:`~torchscope.records.GraphFold`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import torchscope._util.nested as _nested
from torchscope._util.format import format_shapes
from torchscope._util.inputs import call_arguments, model_devices, resolve_device, unwrap
from torchscope.collect._torchscript import (
    OPTIMIZED_NOTE,
    follow_scripted_calls,
    is_script,
    plain_execution,
    split_modules,
    type_name,
)
from torchscope.collect.hooks import HookSet, initialised, instrumented, iter_modules
from torchscope.errors import GraphError, TorchscopeWarning
from torchscope.records import (
    AutogradGraph,
    GradInfo,
    GraphCluster,
    GraphDiff,
    GraphEdge,
    GraphFold,
    GraphNode,
    ModuleGraph,
)
from torchscope.records.graph_views import check_depth, common_module, diff, find_repeats, view

__all__ = [
    "ModuleCapture",
    "autograd_graph",
    "autograd_graph_of",
    "capture",
    "graph_diff",
    "module_graph",
    "run_forward",
]

Node = Any  # torch.autograd.graph.Node; its Python type differs per op

#: Fewest back-to-back repetitions that are folded.
MIN_FOLD_COUNT = 3


# --------------------------------------------------------------------------------------------
# capture: which module created each autograd node


@dataclasses.dataclass
class _Call:
    """A module call on the capture's stack."""

    name: str
    type: str
    input_shapes: tuple[tuple[int, ...], ...]


class ModuleCapture:
    """What :func:`capture` recorded: the module that created each autograd node, and the
    gradients nodes received (``grads=True``). Pass it to ``autograd_graph(module=...)``."""

    def __init__(self, model: nn.Module, *, grads: bool = False) -> None:
        self.model = model
        self.grads = grads
        # the grad mode the forward started in: advice to enable it is no help when it was on
        self.grad_enabled = torch.is_grad_enabled()
        self.module_of: dict[Node, str] = {}  # strong keys: node identity must stay stable
        self.types: dict[str, str] = {"": type_name(model)}
        self.received: dict[Node, torch.Tensor] = {}  # node -> [sumsq, nonfinite, max|g|]
        self.stack: list[_Call] = []
        self.failed: _Call | None = None
        self._node_hooks = HookSet()
        self._calls: dict[str, int] = {}

    def _on_node(self, node: Node) -> None:
        self.module_of[node] = self.stack[-1].name if self.stack else ""
        if self.grads:
            self._node_hooks.add(node.register_hook(self._grad_hook(node)))

    def _grad_hook(self, node: Node) -> Callable[[Any, Any], None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            self.received[node] = _grad_stats(grad_outputs)

        return hook

    def remove_node_hooks(self) -> None:
        """Take the gradient hooks off the captured nodes (after the backward pass)."""
        self._node_hooks.remove_all()


def _grad_stats(grads: Any) -> torch.Tensor:
    """[sum of squares, count of non-finite values, max |g|, any grad present] on the device."""
    present = [g for g in grads if isinstance(g, torch.Tensor)]
    if not present:
        return torch.zeros(4)
    with torch.no_grad():
        stats = []
        for g in present:
            g = g.detach().float()
            stats.append(
                torch.stack(
                    [
                        torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).square().sum(),
                        (~torch.isfinite(g)).sum().float(),
                        torch.nan_to_num(g.abs(), nan=0.0, posinf=0.0).amax()
                        if g.numel()
                        else g.new_zeros(()),
                        torch.isnan(g).sum().float(),
                    ]
                ).cpu()
            )
        total = torch.stack(stats)
        return torch.stack(
            [total[:, 0].sum(), total[:, 1].sum(), total[:, 2].amax(), total[:, 3].sum()]
        )


@contextlib.contextmanager
def capture(model: nn.Module, *, grads: bool = False) -> Iterator[ModuleCapture]:
    """Record which of ``model``'s modules creates each autograd node while the block runs.

    Use it around your own forward (and loss), then pass the capture to
    :func:`autograd_graph`::

        with torchscope.capture(model, grads=True) as cap:
            loss = loss_fn(model(x), y)
        loss.backward()
        graph = torchscope.autograd_graph(loss, params=model, grads=True, module=cap)

    The module hooks come off when the block ends, also when it raises. With ``grads=True``
    every node created in the block gets a gradient hook that records the gradient it
    receives in the next backward pass; those hooks live on the nodes (they go when the graph
    is freed) and are removed by :func:`autograd_graph`.
    """
    cap = ModuleCapture(model, grads=grads)
    hooks = HookSet()
    node_hook = getattr(torch.autograd.graph, "node_creation_hook", None)
    try:
        hookable, scripted = split_modules(model)
        for name, module in hookable:
            cap.types[name] = type(module).__name__
            hooks.add(module.register_forward_pre_hook(_push(cap, name), with_kwargs=True))
            hooks.add(module.register_forward_hook(_pop(cap), always_call=True))
        # TorchScript modules take no hooks: each is one cluster, followed by global hooks;
        # the modules inside name the clusters of their parameters
        for name, script in scripted.values():
            for inner, module in iter_modules(script):
                cap.types[".".join(filter(None, (name, inner)))] = type_name(module)
        follow_scripted_calls(
            hooks,
            scripted,
            lambda name, module, args: _push(cap, name)(module, args, {}),
            lambda name, module, args, output: _pop(cap)(module, args, output),
        )
        with node_hook(cap._on_node) if node_hook is not None else contextlib.nullcontext():
            if node_hook is None:
                warnings.warn(
                    f"torch {torch.__version__} has no torch.autograd.graph.node_creation_hook: "
                    "the autograd graph cannot name the module of each node",
                    TorchscopeWarning,
                    stacklevel=3,
                )
            yield cap
    finally:
        hooks.remove_all()


def _push(cap: ModuleCapture, name: str) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        count = cap._calls.get(name, 0)
        cap._calls[name] = count + 1
        # a module called again gets its own cluster: name#1, name#2, ...
        scope = name if count == 0 else f"{name}#{count}"
        cap.types.setdefault(scope, type_name(module))
        cap.stack.append(_Call(scope, type_name(module), _nested.shapes((args, kwargs))))

    return pre_hook


def _pop(cap: ModuleCapture) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if cap.stack:
            call = cap.stack.pop()
            if cap.failed is None and _raising():
                cap.failed = call

    return hook


def _raising() -> bool:
    """Whether an exception is propagating through the caller (an ``always_call`` hook)."""
    import sys

    return sys.exc_info()[0] is not None


# --------------------------------------------------------------------------------------------
# autograd_graph


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


_DTYPE_NAMES: dict[torch.dtype, str] = {}


def _dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32`` (cached: it runs once per node of graphs of 400k)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _node_meta(node: Node) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
    """Shapes and dtypes of what the forward op produced (the gradients the node receives)."""
    try:
        metadata = node._input_metadata
    except (AttributeError, RuntimeError):
        return (), ()
    shapes = []
    dtypes = []
    for meta in metadata:
        try:
            shapes.append(tuple(meta.shape))  # a torch.Size: already ints
            dtypes.append(_dtype_name(meta.dtype))
        except (RuntimeError, TypeError, ValueError):  # nested / symbolic shapes
            shapes.append(())
            dtypes.append("")
    return tuple(shapes), tuple(dtypes)


def _saved(node: Node) -> tuple[tuple[str, str], ...]:
    facts = []
    for attr in sorted(a for a in dir(node) if a.startswith("_saved_")):
        try:
            value = getattr(node, attr)
        except RuntimeError:  # freed by backward
            facts.append((attr.removeprefix("_saved_"), "freed by backward"))
            continue
        if isinstance(value, torch.Tensor):
            text = f"{list(value.shape)} {_dtype_name(value.dtype)}"
        elif isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            text = ", ".join(f"{list(t.shape)}" for t in value)
        else:
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
        facts.append((attr.removeprefix("_saved_"), text))
    return tuple(facts)


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


@dataclasses.dataclass
class _Walked:
    """One autograd node found by the walk, before keys are assigned."""

    node: Node
    name: str
    leaf: torch.Tensor | None  # the tensor of an AccumulateGrad node
    children: list[int]  # indices of next_functions' nodes (inputs of the forward op)
    seq: int
    discovered: int
    meta: tuple[tuple[tuple[int, ...], ...], tuple[str, ...]] | None = None

    def shapes_and_dtypes(self) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
        if self.meta is None:
            self.meta = _node_meta(self.node)
        return self.meta


def _walk(roots: list[Node]) -> list[_Walked]:
    """Every node reachable from ``roots`` through ``next_functions``, iteratively."""
    index: dict[Node, int] = {}
    walked: list[_Walked] = []
    pending: list[Node] = []

    def visit(node: Node) -> int:
        found = index.get(node)
        if found is None:
            found = index[node] = len(walked)
            name = node.name().rpartition("::")[2]
            # only AccumulateGrad nodes hold a tensor; asking the others costs a lookup each
            leaf = getattr(node, "variable", None) if name == "AccumulateGrad" else None
            try:
                seq = int(node._sequence_nr())
            except (AttributeError, RuntimeError):
                seq = -1
            walked.append(
                _Walked(
                    node=node,
                    name=name,
                    leaf=leaf if isinstance(leaf, torch.Tensor) else None,
                    children=[],
                    seq=seq,
                    discovered=found,
                )
            )
            pending.append(node)
        return found

    for root in roots:
        visit(root)
    while pending:
        node = pending.pop()
        entry = walked[index[node]]
        for child, _ in node.next_functions:
            if child is not None:
                entry.children.append(visit(child))
    return walked


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
    of the graph, with no recursion limit.
    """
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
    walked = _walk(roots)
    graph = _build_autograd(walked, root_of_output, names, module, grads, show_saved, warn)
    for message in warn[: len(warn) - (graph.grad_origin is not None)]:
        warnings.warn(message, TorchscopeWarning, stacklevel=2)
    if module is not None and grads:
        module.remove_node_hooks()
    return graph


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
    walked: list[_Walked],
    outputs: list[tuple[str, torch.Tensor, Node | None]],
    names: dict[int, str],
    capture_: ModuleCapture | None,
    grads: bool,
    show_saved: bool,
    warn: list[str],
) -> AutogradGraph:
    # forward (execution) order: op nodes by sequence number; a leaf just before its first user
    consumers: list[list[int]] = [[] for _ in walked]
    for i, entry in enumerate(walked):
        for child in entry.children:
            consumers[child].append(i)
    unsequenced = 2**63

    def position(i: int) -> tuple[int, int, int]:
        entry = walked[i]
        if entry.seq >= 0 and entry.seq < unsequenced:
            return (entry.seq, 1, entry.discovered)
        first_user = min(
            (walked[c].seq for c in consumers[i] if 0 <= walked[c].seq < unsequenced), default=-1
        )
        return (first_user, 0, entry.discovered)

    order = sorted(range(len(walked)), key=position)
    module_of = capture_.module_of if capture_ is not None else {}
    # parameter leaves go in the cluster of the module owning them
    keys: list[str] = [""] * len(walked)
    modules: list[str | None] = [None] * len(walked)
    kinds: list[str] = [""] * len(walked)
    labels: list[str] = [""] * len(walked)
    counters: dict[tuple[str | None, str], int] = {}
    input_count = 0
    for i in order:
        entry = walked[i]
        if entry.leaf is not None:
            name = names.get(id(entry.leaf))
            if name is not None:
                keys[i], kinds[i], labels[i] = f"param:{name}", "parameter", name
                owner = name.rpartition(".")[0]
                modules[i] = owner if capture_ is not None else None
            else:
                keys[i], kinds[i] = f"input:{input_count}", "input"
                labels[i] = f"input {input_count}"
                input_count += 1
            continue
        module = module_of.get(entry.node) if capture_ is not None else None
        count = counters.get((module, entry.name), 0)
        counters[(module, entry.name)] = count + 1
        prefix = f"{module}/" if module else ""
        keys[i], kinds[i], labels[i], modules[i] = (
            f"{prefix}{entry.name}#{count}",
            "op",
            entry.name,
            module,
        )
    received = capture_.received if capture_ is not None else {}
    nodes: list[GraphNode] = []
    grad_of: dict[int, GradInfo] = {}
    for r, i in enumerate(order):
        entry = walked[i]
        if entry.leaf is not None:
            shapes: tuple[tuple[int, ...], ...] = (tuple(entry.leaf.shape),)
            dtypes: tuple[str, ...] = (_dtype_name(entry.leaf.dtype),)
        else:
            shapes, dtypes = entry.shapes_and_dtypes()
        grad: GradInfo | None = None
        if grads:
            if entry.leaf is not None:
                grad = _tensor_grad(entry.leaf)
            elif capture_ is not None and capture_.grads:
                stats = received.get(entry.node)
                grad = _grad_info(stats) if stats is not None else GradInfo(None, "none")
            if grad is not None:
                grad_of[i] = grad
        nodes.append(
            GraphNode(
                key=keys[i],
                label=labels[i],
                kind=kinds[i],
                op=entry.name,
                shapes=shapes,
                dtypes=dtypes,
                module=modules[i],
                order=r,
                grad=grad,
                attrs=_saved(entry.node) if show_saved and entry.leaf is None else (),
            )
        )
    edges = [
        GraphEdge(keys[child], keys[i])
        for i in order
        for child in dict.fromkeys(walked[i].children)
    ]
    index_of_node = {entry.node: i for i, entry in enumerate(walked)}
    next_order = len(nodes)
    for path, tensor, node in outputs:
        if node is None:
            continue
        key = path if path == "output" else f"output:{path.removeprefix('output')}"
        nodes.append(
            GraphNode(
                key=key,
                label=path,
                kind="output",
                op="output",
                shapes=(tuple(tensor.shape),),
                dtypes=(_dtype_name(tensor.dtype),),
                module=None,
                order=next_order,
            )
        )
        next_order += 1
        edges.append(GraphEdge(keys[index_of_node[node]], key))
    clusters = _module_clusters(
        {m for m in modules if m}, capture_.types if capture_ is not None else {}
    )
    folds = _autograd_folds(walked, order, keys, kinds, consumers, modules, capture_)
    origin = _grad_origin(walked, order, grad_of, keys) if grads else None
    if grads and origin is not None:
        warn.append(f"the gradient first became {_bad_below(nodes, origin)} at {origin}")
    return AutogradGraph(
        kind="autograd",
        title=type_name(capture_.model) if capture_ is not None else "autograd graph",
        nodes=tuple(nodes),
        edges=tuple(edges),
        clusters=clusters,
        folds=folds,
        warnings=tuple(warn),
        grad_origin=origin,
    )


def _bad_below(nodes: list[GraphNode], key: str) -> str:
    """What went wrong at the origin: "zero", "nan" or "inf" (the worst below it)."""
    statuses = {n.grad.status for n in nodes if n.grad is not None}
    for status in ("nan", "inf", "zero"):
        if status in statuses:
            return status
    return "zero"


def _module_clusters(modules: set[str], types: Mapping[str, str]) -> tuple[GraphCluster, ...]:
    """Clusters for every module path that holds nodes, with all their ancestors."""
    paths: set[str] = set()
    for module in modules:
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            paths.add(".".join(parts[:n]))
    clusters = []
    for path in sorted(paths, key=lambda p: (p.count("."), p)):
        base = path.split("#")[0]
        parent = path.rpartition(".")[0] or None
        if parent is not None and parent not in paths:
            parent = None
        type_name = types.get(path) or types.get(base, "")
        clusters.append(GraphCluster(path, f"{path} ({type_name})" if type_name else path, parent))
    return tuple(clusters)


def _autograd_folds(
    walked: list[_Walked],
    order: list[int],
    keys: list[str],
    kinds: list[str],
    consumers: list[list[int]],
    modules: list[str | None],
    capture_: ModuleCapture | None,
) -> tuple[GraphFold, ...]:
    ops = [i for i in order if kinds[i] == "op"]
    position = {i: p for p, i in enumerate(ops)}
    signatures = []
    for i in ops:
        entry = walked[i]
        parts: list[Any] = [entry.name, entry.shapes_and_dtypes()]
        for child in entry.children:
            if child in position:
                parts.append(position[i] - position[child])
            else:
                leaf = walked[child].leaf
                parts.append((kinds[child], tuple(leaf.shape) if leaf is not None else ()))
        signatures.append(tuple(parts))
    folds = []
    for start, period, count in find_repeats(signatures, min_count=MIN_FOLD_COUNT):
        blocks = [ops[start + k * period : start + (k + 1) * period] for k in range(count)]
        members = [set(block) for block in blocks]
        # a leaf used only by one repetition (its own weights) folds with it
        own_leaves = []
        for block, inside in zip(blocks, members, strict=True):
            leaves = [
                c
                for i in block
                for c in walked[i].children
                if c not in position and all(u in inside for u in consumers[c])
            ]
            own_leaves.append(list(dict.fromkeys(leaves)))
        same = len({len(leaves) for leaves in own_leaves}) == 1
        instances = tuple(
            tuple(keys[i] for i in block) + (tuple(keys[c] for c in leaves) if same else ())
            for block, leaves in zip(blocks, own_leaves, strict=True)
        )
        folds.append(GraphFold(_fold_label(walked, blocks[0], modules, capture_), count, instances))
    folds.sort(key=lambda f: -f.count * len(f.instances[0]))
    return tuple(folds)


def _fold_label(
    walked: list[_Walked],
    block: list[int],
    modules: list[str | None],
    capture_: ModuleCapture | None,
) -> str:
    """The type of the module one repetition ran in (``Bottleneck``), else its ops."""
    if capture_ is not None:
        common = common_module(modules[i] or "" for i in block)
        type_name = capture_.types.get(common, "") if common else ""
        if type_name:
            return type_name
        # a repetition that straddles two calls of one module type (RNNCell, RNNCell, ...)
        types = {capture_.types.get(m, "") for i in block if (m := modules[i])}
        if len(types) == 1 and all(modules[i] for i in block):
            return types.pop()
    if len(block) <= 4:
        return " → ".join(walked[i].name for i in block)
    return f"{len(block)} ops"


def _grad_origin(
    walked: list[_Walked], order: list[int], grad_of: dict[int, GradInfo], keys: list[str]
) -> str | None:
    """The node closest to the loss where the gradient first became zero or non-finite.

    With op gradients: an op that received a good gradient and passed only bad ones on (a
    dead ReLU), else one that passed some bad one on. With parameter gradients only: the op
    above the largest set of parameters whose gradients all went bad.
    """
    bad = {"zero", "nan", "inf"}
    partial: str | None = None
    for i in reversed(order):
        info = grad_of.get(i)
        if info is None or walked[i].leaf is not None or info.status != "ok":
            continue
        statuses = [grad_of[c].status for c in walked[i].children if c in grad_of]
        if statuses and all(s in bad for s in statuses):
            return keys[i]
        if partial is None and any(s in bad for s in statuses):
            partial = keys[i]
    if partial is not None:
        return partial
    leaf_bits: dict[int, int] = {}
    bad_bits = 0
    for bit, i in enumerate(i for i in order if walked[i].leaf is not None and i in grad_of):
        leaf_bits[i] = 1 << bit
        if grad_of[i].status in bad:
            bad_bits |= 1 << bit
    if not bad_bits:
        return None
    below: dict[int, int] = {}
    for i in order:  # children come before their consumers in forward order
        mask = leaf_bits.get(i, 0)
        for child in walked[i].children:
            mask |= below.get(child, 0)
        below[i] = mask
    best: tuple[int, int] | None = None
    for i in order:
        mask = below[i]
        if mask and mask & bad_bits == mask and walked[i].leaf is None:
            size = bin(mask).count("1")
            if best is None or size >= best[0]:
                best = (size, i)
    return keys[best[1]] if best is not None else None


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
        graph = autograd_graph(outputs, params=model, show_saved=show_saved, module=cap)
    if any(node.op == "DifferentiableGraphBackward" for node in graph.nodes):
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
    return _build_autograd([], [], {}, cap, False, False, [note])


def _has_script(model: nn.Module) -> bool:
    return bool(split_modules(model)[1])


def run_forward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], cap: ModuleCapture
) -> Any:
    """``model(*args, **kwargs)`` inside ``capture(model)``; a failure becomes a
    :class:`GraphError` naming the innermost module that raised and the shapes it got."""
    try:
        return model(*args, **kwargs)
    except Exception as e:
        raise _forward_error(e, cap.failed) from e


def _forward_error(error: Exception, failed: _Call | None) -> GraphError:
    """The GraphError for a forward that raised ``error`` in the module call ``failed``."""
    if failed is None:
        return GraphError(f"the forward pass failed: {type(error).__name__}: {error}")
    return GraphError(
        f"the forward pass failed in {failed.name or 'the root module'} ({failed.type}) with "
        f"input shapes {format_shapes(failed.input_shapes)}: {type(error).__name__}: {error}",
        module_name=failed.name,
        module_type=failed.type,
        input_shapes=failed.input_shapes,
    )


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


def graph_diff(a: Any, b: Any) -> GraphDiff:
    """Nodes added, removed and changed from graph ``a`` to graph ``b`` (matched by key)."""
    return diff(a, b)


# --------------------------------------------------------------------------------------------
# module_graph


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
