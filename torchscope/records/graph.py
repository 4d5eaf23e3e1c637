"""The records of a captured graph: nodes, edges, module clusters, folds of repeated steps,
the graph itself (autograd or module) and the difference of two graphs.

:func:`~torchscope.collect.graph.autograd_graph` and
:func:`~torchscope.collect.graph.module_graph` produce a :class:`Graph`; ``render/`` draws it,
found by name through :mod:`torchscope.records._exporters`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope._util.format import format_shapes
from torchscope.records._common import SCHEMA_VERSION, Shape, _plural, _pretty, _shapes
from torchscope.records._exporters import exporter

if TYPE_CHECKING:  # it builds these records, so it imports this module
    from torchscope.records.graph_assembly import AutogradColumns

__all__ = [
    "GRAD_STATUSES",
    "NODE_KINDS",
    "AutogradGraph",
    "GradInfo",
    "Graph",
    "GraphCluster",
    "GraphDiff",
    "GraphEdge",
    "GraphFold",
    "GraphNode",
    "ModuleGraph",
    "graph_json",
]

#: What a graph node stands for.
NODE_KINDS = ("op", "parameter", "input", "output", "module")

#: The state of the gradient a node received, after ``backward()``.
GRAD_STATUSES = ("ok", "none", "zero", "nan", "inf")


@dataclass(frozen=True, slots=True)
class GradInfo:
    """The gradient a graph node received in the last backward pass.

    Attributes:
        norm: L2 norm of the gradient (of a parameter: its ``.grad``; of an op: the gradient
            flowing into it from the loss); None when there was none.
        status: one of :data:`GRAD_STATUSES`: ``"ok"``, ``"none"`` (no gradient reached it),
            ``"zero"`` (all zero), ``"nan"`` or ``"inf"`` (non-finite values).
    """

    norm: float | None
    status: str


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node of a graph.

    Attributes:
        key: stable identifier: the same model and input give the same keys in every run and
            process (``param:fc.weight``, ``fc/AddmmBackward0#0``, ``layer1.0.conv1``).
        label: what is drawn (``AddmmBackward0``, ``fc.weight``, ``conv1 (Conv2d)``).
        kind: one of :data:`NODE_KINDS`.
        op: the operation: autograd node class, module class or function name.
        shapes: shapes of what the node produces, where known.
        dtypes: their dtypes (``"float32"``), aligned with ``shapes``.
        module: qualified name of the module that produced the node (``""``: the root
            module), None when unknown.
        order: position in execution (forward) order; ties are broken by ``key``.
        grad: the gradient it received, when the graph was captured with ``grads=True``.
        attrs: further ``(name, value)`` facts, such as saved tensors.
    """

    key: str
    label: str
    kind: str
    op: str = ""
    shapes: tuple[Shape, ...] = ()
    dtypes: tuple[str, ...] = ()
    module: str | None = None
    order: int = 0
    grad: GradInfo | None = None
    attrs: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        shapes = f" {format_shapes(self.shapes)}" if self.shapes else ""
        return f"<GraphNode {self.kind} {self.key}: {self.label}{shapes}>"


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """Data flows from ``src`` to ``dst`` (a parameter into the op that uses it, an op into
    the op that consumes its result)."""

    src: str
    dst: str
    label: str = ""


# Builders of GraphNode and GraphEdge from all their fields, for the collectors that make one
# per node of graphs of 400k nodes: the same objects as the constructors give, about three
# times faster, since the slots are set through their descriptors instead of the frozen
# __init__'s object.__setattr__ calls (tests/test_graph.py compares the two).
_new = object.__new__
(
    _node_key,
    _node_label,
    _node_kind,
    _node_op,
    _node_shapes,
    _node_dtypes,
    _node_module,
    _node_order,
    _node_grad,
    _node_attrs,
) = (getattr(GraphNode, field.name).__set__ for field in dataclasses.fields(GraphNode))
_edge_src, _edge_dst, _edge_label = (
    getattr(GraphEdge, field.name).__set__ for field in dataclasses.fields(GraphEdge)
)


def make_node(
    key: str,
    label: str,
    kind: str,
    op: str,
    shapes: tuple[Shape, ...],
    dtypes: tuple[str, ...],
    module: str | None,
    order: int,
    grad: GradInfo | None,
    attrs: tuple[tuple[str, str], ...],
) -> GraphNode:
    """``GraphNode(...)`` with every field given, positionally, faster."""
    node = _new(GraphNode)
    _node_key(node, key)
    _node_label(node, label)
    _node_kind(node, kind)
    _node_op(node, op)
    _node_shapes(node, shapes)
    _node_dtypes(node, dtypes)
    _node_module(node, module)
    _node_order(node, order)
    _node_grad(node, grad)
    _node_attrs(node, attrs)
    return node


def make_edge(src: str, dst: str, label: str = "") -> GraphEdge:
    """``GraphEdge(src, dst, label)``, faster."""
    edge = _new(GraphEdge)
    _edge_src(edge, src)
    _edge_dst(edge, dst)
    _edge_label(edge, label)
    return edge


@dataclass(frozen=True, slots=True)
class GraphCluster:
    """A module whose nodes are drawn together. ``key`` is its qualified name (``""``: the
    root), ``parent`` the key of the enclosing cluster (None for the outermost)."""

    key: str
    label: str
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class GraphFold:
    """A run of structurally identical steps, drawn once with its count.

    Attributes:
        label: what repeats (``EncoderBlock``, ``MulBackward0 → AddBackward0``).
        count: how many times it ran back to back.
        instances: the node keys of every repetition, aligned position by position
            (``instances[k][i]`` plays the part of ``instances[0][i]``).
    """

    label: str
    count: int
    instances: tuple[tuple[str, ...], ...]

    def __repr__(self) -> str:
        size = len(self.instances[0]) if self.instances else 0
        return f"<GraphFold {self.label} ×{self.count} ({_plural(size, 'node')} each)>"


@dataclass(frozen=True)
class Graph:
    """A captured graph: nodes, data-flow edges, module clusters and folds of repeated steps.

    ``to_dot()``, ``to_json()``, ``to_html()`` and ``render(path)`` draw it; by default
    repeated steps are folded and nothing is collapsed (``fold=``, ``depth=`` change that).

    Attributes:
        kind: ``"autograd"`` or ``"module"``.
        title: what the graph shows (``ResNet``, ``loss``).
        nodes: in execution order.
        edges: sorted by (source, destination) order.
        clusters: parents before children.
        folds: repeated steps found, largest first.
        warnings: what the capture could not show, and why.
        grad_origin: with ``grads=True``: the key of the node closest to the loss where the
            gradient first became zero or non-finite, None when all is well.
    """

    kind: str
    title: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    clusters: tuple[GraphCluster, ...] = ()
    folds: tuple[GraphFold, ...] = ()
    warnings: tuple[str, ...] = ()
    grad_origin: str | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, key: str) -> GraphNode:
        """The node with this key; KeyError names close keys when there is none."""
        for node in self.nodes:
            if node.key == key:
                return node
        close = [n.key for n in self.nodes if key in n.key][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no node {key!r} in this graph{hint}")

    def nodes_of(self, kind: str) -> tuple[GraphNode, ...]:
        """The nodes of one kind (``"parameter"``, ``"op"``, ...), in order."""
        if kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {kind!r}; choose from {', '.join(NODE_KINDS)}")
        return tuple(n for n in self.nodes if n.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 1) -> str:
        """JSON text; byte-identical for the same model and input."""
        return graph_json(self, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        def node(d: dict[str, Any]) -> GraphNode:
            grad = d.get("grad")
            return GraphNode(
                key=d["key"],
                label=d["label"],
                kind=d["kind"],
                op=d.get("op", ""),
                shapes=_shapes(d.get("shapes", ())),
                dtypes=tuple(d.get("dtypes", ())),
                module=d.get("module"),
                order=d.get("order", 0),
                grad=GradInfo(**grad) if grad is not None else None,
                attrs=tuple((str(k), str(v)) for k, v in d.get("attrs", ())),
            )

        graph_type: type[Graph] = AutogradGraph if data["kind"] == "autograd" else ModuleGraph
        return graph_type(
            kind=data["kind"],
            title=data["title"],
            nodes=tuple(node(n) for n in data["nodes"]),
            edges=tuple(GraphEdge(**e) for e in data["edges"]),
            clusters=tuple(GraphCluster(**c) for c in data.get("clusters", ())),
            folds=tuple(
                GraphFold(f["label"], f["count"], tuple(tuple(i) for i in f["instances"]))
                for f in data.get("folds", ())
            ),
            warnings=tuple(data.get("warnings", ())),
            grad_origin=data.get("grad_origin"),
        )

    @classmethod
    def from_json(cls, text: str) -> Graph:
        return cls.from_dict(json.loads(text))

    def to_dot(self, *, fold: bool = True, depth: int | None = None) -> str:
        """Graphviz DOT text (no Graphviz needed to produce it)."""
        to_dot: Callable[..., str] = exporter("graph.dot")
        return to_dot(self, fold=fold, depth=depth)

    def to_html(self, *, fold: bool = True, depth: int | None = None) -> str:
        """A self-contained HTML page: pan, zoom, expand/collapse clusters, search by name.
        Needs no Graphviz and no network."""
        to_html: Callable[..., str] = exporter("graph.html")
        return to_html(self, fold=fold, depth=depth)

    def render(
        self,
        path: str | os.PathLike[str],
        *,
        fold: bool = True,
        depth: int | None = None,
    ) -> str:
        """Write the graph to ``path`` in the format its suffix names: ``.svg``, ``.png``,
        ``.pdf`` (Graphviz's ``dot``, or torchscope's own layout when the graph is too big
        for dot to lay out quickly), ``.dot``, ``.html`` or ``.json``. Returns the path."""
        write: Callable[..., str] = exporter("graph.file")
        return write(self, path, fold=fold, depth=depth)

    def log_to(self, writer: Any, *, fold: bool = True) -> None:
        """Write the graph to TensorBoard's graph tab through a ``SummaryWriter``; with
        ``fold``, each run of repeated steps is one box named with its count."""
        exporter("graph.tensorboard")(self, writer, fold=fold)

    def __str__(self) -> str:
        return records_text.render_graph(self)

    def __repr__(self) -> str:
        folds = "".join(f", {fold.label} ×{fold.count}" for fold in self.folds[:3])
        return (
            f"<{type(self).__name__} of {self.title}: {_plural(len(self.nodes), 'node')}, "
            f"{_plural(len(self.edges), 'edge')}{folds}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        bundle: dict[str, str] = exporter("graph.display")(self)
        return bundle


def graph_json(graph: Graph, *, indent: int | None = 1) -> str:
    """``graph`` as JSON text (what :meth:`Graph.to_json` returns), for exporters that write it
    without calling back into the record."""
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(graph)},
        indent=indent,
        allow_nan=True,
    )


#: What an :class:`AutogradGraph` made by :meth:`AutogradGraph.from_columns` assembles when one
#: of them is first read.
_ASSEMBLED = frozenset({"nodes", "edges", "clusters", "folds", "grad_origin"})


@dataclass(frozen=True, repr=False)  # repr=False: keep Graph's short repr
class AutogradGraph(Graph):
    """The autograd graph behind one or more tensors: what ``backward()`` will run."""

    @classmethod
    def from_columns(
        cls, columns: AutogradColumns, *, title: str, warnings: tuple[str, ...] = ()
    ) -> AutogradGraph:
        """The graph whose nodes, edges, clusters, folds and ``grad_origin`` are assembled
        from ``columns`` (what a capture read off the autograd nodes) when one of them is
        first read. It equals the graph made from those records directly, and behaves as it
        does in every way (comparison, hashing, ``dataclasses.replace``, pickling)."""
        graph = object.__new__(cls)
        graph.__dict__.update(kind="autograd", title=title, warnings=warnings, _columns=columns)
        return graph

    def __getattribute__(self, name: str) -> Any:
        if name in _ASSEMBLED:
            state = object.__getattribute__(self, "__dict__")
            if "_columns" in state:
                _assemble_into(state)
        return object.__getattribute__(self, name)

    def __getstate__(self) -> dict[str, Any]:
        # the fields, in order, as any graph pickles: one not read yet is assembled first
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


#: Held while a graph is assembled, so that one read by several threads at once is
#: assembled once (the same objects for all) and no thread waits on a graph of its own twice.
_ASSEMBLING = threading.Lock()


def _assemble_into(state: dict[str, Any]) -> None:
    """Put the assembled records in a graph's ``__dict__``, once."""
    with _ASSEMBLING:
        columns = state.get("_columns")
        if columns is None:  # another thread assembled it while this one waited
            return
        nodes, edges, clusters, folds, origin = columns.assemble()
        state.update(nodes=nodes, edges=edges, clusters=clusters, folds=folds)
        state["grad_origin"] = origin
        del state["_columns"]


@dataclass(frozen=True, repr=False)
class ModuleGraph(Graph):
    """The data flow between a model's modules (and the functional ops between them)."""


@dataclass(frozen=True)
class GraphDiff:
    """What changed from graph ``a`` to graph ``b``, node by node (matched by key).

    Attributes:
        added: keys of nodes only in ``b``.
        removed: keys of nodes only in ``a``.
        changed: ``(key, what changed)`` for nodes in both whose op, shapes, dtypes or
            inputs differ.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[tuple[str, str], ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return records_text.render_graph_diff(self)

    def __repr__(self) -> str:
        if not self:
            return "<GraphDiff: no structural difference>"
        return (
            f"<GraphDiff: {len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_graph_diff(self)
