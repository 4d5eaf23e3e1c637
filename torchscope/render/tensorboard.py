"""Writing records to TensorBoard through a ``SummaryWriter`` (or anything with its methods)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch

from torchscope.records._text import render_gradient_report, render_timing
from torchscope.records.graph_views import common_module

if TYPE_CHECKING:
    from torchscope.records import GradientReport, Graph, GraphNode, TimingReport

__all__ = [
    "fold_scopes",
    "graph_def",
    "log_gradient_report",
    "log_graph",
    "log_timing",
    "tensorboard_names",
]


def log_gradient_report(report: GradientReport, writer: Any) -> None:
    """Per parameter and step: ``gradients/norm/<name>`` and ``gradients/update_ratio/<name>``
    scalars; per step: a histogram of log10 gradient norms over parameters; the loss; and the
    findings table as text (``gradients/findings``)."""
    per_step: dict[int, list[float]] = {}
    for p in report.parameters:
        for step, norm, ratio in zip(p.steps, p.grad_norm, p.update_ratio, strict=True):
            writer.add_scalar(f"gradients/norm/{p.name}", norm, step)
            if ratio is not None:
                writer.add_scalar(f"gradients/update_ratio/{p.name}", ratio, step)
            if norm > 0 and math.isfinite(norm):
                per_step.setdefault(step, []).append(math.log10(norm))
    for step, values in sorted(per_step.items()):
        writer.add_histogram("gradients/log10_norm", torch.tensor(values), step)
    for k, loss in enumerate(report.losses):
        writer.add_scalar("gradients/loss", loss, k)
    writer.add_text("gradients/findings", render_gradient_report(report, markdown=True))


# -- graphs ------------------------------------------------------------------------------------

#: torch dtype names (as in ``GraphNode.dtypes``) -> TensorFlow ``DataType`` enum names.
_TF_DTYPES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
    "float8_e5m2": "DT_FLOAT8_E5M2",
    "float8_e4m3fn": "DT_FLOAT8_E4M3FN",
    "float8_e4m3fnuz": "DT_FLOAT8_E4M3FNUZ",
    "float8_e5m2fnuz": "DT_FLOAT8_E5M2FNUZ",
}

#: What a node whose record has no ``op`` is shown as; ``IO Node`` is what ``add_graph`` uses.
_DEFAULT_OPS = {"input": "IO Node", "output": "IO Node", "parameter": "Parameter"}

# TensorFlow's rule for node names (tensorflow/python/framework/ops.py, _VALID_OP_NAME_REGEX):
# a letter, digit or "." first, then letters, digits and "_.-/". ":" (output index) and "^"
# (control input) would be read as input syntax; "/" separates name scopes, so it may only
# appear between the scopes we make.
_INVALID_IN_PART = re.compile(r"[^A-Za-z0-9_.\-]+")
_INVALID_FIRST = re.compile(r"^[^A-Za-z0-9.]+")


def _name_part(text: str) -> str:
    """One "/"-free piece of a node name: invalid characters runs become "_"."""
    part = _INVALID_IN_PART.sub("_", text.strip()).strip("_")
    # "." and ".." are valid characters but would read as path steps
    return "" if set(part) <= {"."} else part


def _local_name(node: GraphNode) -> str:
    """The node's name inside its module's scope: ``conv1`` for module ``layer1.0.conv1``
    drawn in ``layer1.0``, ``fc_1`` for ``block.fc#1`` drawn in ``block#1``, ``weight`` for
    parameter ``fc.weight``, ``AddmmBackward0``."""
    module = _owner(node)
    # a module called again is its own scope (block#1): its children are block.fc#1
    prefix = f"{module.split('#')[0]}." if module else ""
    if node.kind == "module" and node.key.startswith(prefix) and node.key != module:
        text = node.key[len(prefix) :]
    else:
        text = node.label or node.key
        if node.kind == "module":  # "conv1 (Conv2d)": the name, not the class
            text = text.split(" (")[0]
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
    return _name_part(text) or _name_part(node.op) or node.kind


def _owner(node: GraphNode) -> str:
    """The module path a node is named under: its module, or for a parameter of a graph
    captured without module information, the module owning it (``fc`` for ``fc.weight``)."""
    if node.module is None and node.kind == "parameter" and "." in node.label:
        return node.label.rpartition(".")[0]
    return node.module or ""


def fold_scopes(graph: Graph) -> dict[str, tuple[tuple[int, str], ...]]:
    """Node key -> the repeat markers on its name: ``(position, "EncoderBlock_x12")`` for each
    of ``graph.folds`` holding the node, the marker going after the first ``position`` parts
    of its module path (where the module holding every repetition is)."""
    owner = {node.key: _owner(node) for node in graph.nodes}
    markers: dict[str, list[tuple[int, str]]] = {}
    for fold in graph.folds:
        keys = [key for inst in fold.instances for key in inst]
        if not all(key in owner for key in keys):
            continue  # a fold of another view of this graph
        common = common_module(owner[key] for key in keys)
        position = common.count(".") + 1 if common else 0
        marker = _name_part(f"{fold.label} x{fold.count}") or f"x{fold.count}"
        for key in keys:
            markers.setdefault(key, []).append((position, marker))
    # outer folds come first in graph.folds; sorted() keeps that order at equal positions
    return {key: tuple(sorted(found, key=lambda m: m[0])) for key, found in markers.items()}


def tensorboard_names(graph: Graph, *, fold: bool = True) -> dict[str, str]:
    """Node key -> TensorBoard node name: the module path as "/"-separated name scopes, then
    the node's own name (``layer1/0/conv1``, ``fc/AddmmBackward0_2``, ``fc/weight``).

    With ``fold``, every repetition of a repeated step (``graph.folds``) sits in a scope
    that says so, placed where the module holding the run is: the 12 blocks of
    ``encoder.layers`` are ``encoder/layers/EncoderBlock_x12/0/...`` to ``.../11/...``, so
    TensorBoard draws one box ``EncoderBlock_x12`` that opens onto the blocks.

    Names are valid TensorFlow node names, unique, and depend only on the graph record (the
    same model and input give the same names). A name that is taken, or that is also a scope
    holding other nodes, gets the first free ``_1``, ``_2``, ... suffix, in node order.
    """
    markers = fold_scopes(graph) if fold else {}
    scopes: dict[tuple[str, tuple[tuple[int, str], ...]], str] = {}

    def scope(module: str, marks: tuple[tuple[int, str], ...]) -> str:
        if (module, marks) not in scopes:
            parts = [_name_part(p) or "_" for p in module.split(".")] if module else []
            for position, marker in reversed(marks):
                parts.insert(min(position, len(parts)), marker)
            scopes[(module, marks)] = _INVALID_FIRST.sub("", "/".join(parts))
        return scopes[(module, marks)]

    bases = []
    taken: set[str] = set()
    for node in graph.nodes:
        where = scope(_owner(node), markers.get(node.key, ()))
        local = _local_name(node)
        bases.append(f"{where}/{local}" if where else _INVALID_FIRST.sub("", local) or "node")
        # every enclosing scope is reserved: a node named like one would sit on top of it
        while where:
            taken.add(where)
            where = where.rpartition("/")[0]
    names: dict[str, str] = {}
    # suffixes below next_suffix[base] are all taken already (taken only grows), so the search
    # resumes there: 3,000 MulBackward0 in one scope cost linear time, not quadratic
    next_suffix: dict[str, int] = {}
    for node, base in zip(graph.nodes, bases, strict=True):
        name, k = base, next_suffix.get(base, 0)
        if k:
            name = f"{base}_{k}"
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        next_suffix[base] = k
        taken.add(name)
        names[node.key] = name
    return names


def graph_def(graph: Graph, *, fold: bool = True) -> Any:
    """A TensorBoard ``GraphDef`` for ``graph``: one ``NodeDef`` per node, named by
    :func:`tensorboard_names` (with ``fold``, repeated steps in a scope such as
    ``EncoderBlock_x12``), with its ``op``, its inputs (the sources of its edges, in node
    order), ``_output_shapes`` and ``dtype`` where the record knows them, and the record's
    key, kind, label, attributes and repetition (``EncoderBlock ×12, repetition 3``) as
    string attributes."""
    try:
        from tensorboard.compat.proto import (
            attr_value_pb2,
            graph_pb2,
            node_def_pb2,
            tensor_shape_pb2,
            types_pb2,
            versions_pb2,
        )
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Graph.log_to needs TensorBoard: pip install tensorboard") from e

    AttrValue = attr_value_pb2.AttrValue
    names = tensorboard_names(graph, fold=fold)
    repeats: dict[str, list[str]] = {}
    if fold:
        for repeated in graph.folds:
            for r, inst in enumerate(repeated.instances):
                for key in inst:
                    repeats.setdefault(key, []).append(
                        f"{repeated.label} ×{repeated.count}, repetition {r + 1}"
                    )
    order = {node.key: i for i, node in enumerate(graph.nodes)}
    inputs: dict[str, list[str]] = {}
    for edge in sorted(
        (e for e in graph.edges if e.src in order and e.dst in order),
        key=lambda e: (order[e.dst], order[e.src]),
    ):
        inputs.setdefault(edge.dst, []).append(names[edge.src])

    def dtype_attr(dtypes: tuple[str, ...]) -> Any:
        enums = [types_pb2.DataType.Value(_TF_DTYPES[d]) for d in dtypes if d in _TF_DTYPES]
        if len(enums) != len(dtypes):  # a dtype TensorFlow has no name for: say it in words
            return AttrValue(s=", ".join(dtypes).encode())
        if len(set(enums)) == 1:
            return AttrValue(type=enums[0])
        return AttrValue(list=AttrValue.ListValue(type=enums))

    nodes = []
    for node in graph.nodes:
        attr: dict[str, Any] = {}
        for name, value in node.attrs:
            attr[name] = AttrValue(s=value.encode())
        attr["key"] = AttrValue(s=node.key.encode())
        attr["kind"] = AttrValue(s=node.kind.encode())
        if node.label:
            attr["label"] = AttrValue(s=node.label.encode())
        if node.module is not None:
            attr["module"] = AttrValue(s=node.module.encode())
        if node.key in repeats:
            attr["repeat"] = AttrValue(s="; ".join(repeats[node.key]).encode())
        if node.grad is not None:
            norm = "none" if node.grad.norm is None else f"{node.grad.norm:.4g}"
            attr["grad"] = AttrValue(s=f"{node.grad.status} (norm {norm})".encode())
        if node.shapes:
            shapes = [
                tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
                )
                for shape in node.shapes
            ]
            attr["_output_shapes"] = AttrValue(list=AttrValue.ListValue(shape=shapes))
        if node.dtypes:
            attr["dtype"] = dtype_attr(node.dtypes)
        nodes.append(
            node_def_pb2.NodeDef(
                name=names[node.key],
                op=node.op or _DEFAULT_OPS.get(node.kind, node.kind),
                input=inputs.get(node.key, []),
                attr=attr,
            )
        )
    # producer 22: what torch's add_graph writes
    return graph_pb2.GraphDef(node=nodes, versions=versions_pb2.VersionDef(producer=22))


def log_graph(graph: Graph, writer: Any, *, fold: bool = True) -> None:
    """None: writes ``graph`` to TensorBoard's graph tab through ``writer`` (a
    ``SummaryWriter``, or anything with its ``_get_file_writer()`` or an ``add_event``) and
    flushes it.

    Modules become expandable boxes (name scopes), and with ``fold`` each run of repeated
    steps one box named with its count (``EncoderBlock_x12``); nothing is traced, so models that
    ``SummaryWriter.add_graph`` cannot trace (dict outputs, data-dependent branches) work,
    and the graph shows the branch that actually ran.
    """
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event(graph_def=graph_def(graph, fold=fold).SerializeToString())
    file_writer = writer._get_file_writer() if hasattr(writer, "_get_file_writer") else writer
    file_writer.add_event(event)
    writer.flush()


def log_timing(report: TimingReport, writer: Any, step: int = 0) -> None:
    """Per module ``timing/forward_ms/<name>`` and ``timing/backward_ms/<name>`` (inclusive
    medians), ``timing/step_ms`` (the step without hooks) and the table as text."""
    for row in report.layers:
        name = row.name or "(root)"
        writer.add_scalar(f"timing/forward_ms/{name}", row.forward * 1e3, step)
        if report.backward:
            writer.add_scalar(f"timing/backward_ms/{name}", row.backward * 1e3, step)
    writer.add_scalar("timing/step_ms", report.step.median * 1e3, step)
    writer.add_text("timing/table", f"```\n{render_timing(report, limit=None)}\n```", step)
