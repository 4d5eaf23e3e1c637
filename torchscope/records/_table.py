"""The rows of a summary table, shared by the records' text, Markdown and HTML faces."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchscope._util.format import format_bytes, format_count, format_shapes

if TYPE_CHECKING:
    from torchscope.records.summary import LayerRecord, ModelSummary

__all__ = ["HEADERS", "NUMERIC_COLUMNS", "Row", "footer_lines", "rows", "title"]

HEADERS = {
    "layer": "Layer (type)",
    "input_shape": "Input shape",
    "output_shape": "Output shape",
    "params": "Params",
    "params_percent": "Params %",
    "subtree_params": "With submodules",
    "trainable": "Trainable",
    "macs": "MACs",
    "flops": "FLOPs",
}
NUMERIC_COLUMNS = frozenset(
    {"params", "params_percent", "subtree_params", "trainable", "macs", "flops"}
)

REPEAT = "(repeat)"
SHARED = "(shared)"
LAZY = "(uninitialised)"


@dataclass(frozen=True)
class Row:
    depth: int
    tree_prefix: str  # box-drawing guides, e.g. "│  ├─ "
    label: str  # "conv1 (Conv2d)"
    cells: dict[str, str]  # column name -> text


def _label(layer: LayerRecord) -> str:
    if layer.parent is None:
        return layer.type
    return f"{layer.name.rsplit('.', 1)[-1]} ({layer.type})"


def rows(summary: ModelSummary) -> list[Row]:
    """The visible rows (calls at depth <= summary.depth) with their cells.

    A row whose children are drawn shows the parameters its module holds directly; a row
    drawn without its children (cut at ``depth``, or a leaf) shows its whole subtree and
    whatever the calls beneath it used (a block may call a module held elsewhere). Every
    parameter tensor is counted in the first row that shows it, so the Params column adds up
    to the total (apart from modules the forward never called, listed under the table).
    """
    reached = _reached_parameters(summary)
    visible = [layer for layer in summary.layers if layer.depth <= summary.depth]
    children: dict[int, list[int]] = {}
    for layer in visible:
        if layer.parent is not None:
            children.setdefault(layer.parent, []).append(layer.index)
    last_child = {kids[-1] for kids in children.values()}

    guides: dict[int, str] = {}  # index -> guide prefix inherited by its children
    counted: set[int] = set()
    total = summary.total_params
    out: list[Row] = []
    for layer in visible:
        if layer.parent is None:
            prefix = ""
            guides[layer.index] = ""
        else:
            inherited = guides.get(layer.parent, "")
            is_last = layer.index in last_child
            prefix = inherited + ("└─ " if is_last else "├─ ")
            guides[layer.index] = inherited + ("   " if is_last else "│  ")

        expanded = layer.index in children
        indices = layer.own_parameters if expanded else reached[layer.index]
        new = [i for i in indices if i not in counted]
        counted.update(new)
        count = sum(summary.parameters[i].numel for i in new)
        trainable = sum(summary.parameters[i].numel for i in new if summary.parameters[i].trainable)
        if indices and not new:
            params_text = REPEAT if layer.is_repeat else SHARED
        else:
            params_text = _params_cell(count, _has_lazy(summary, new))

        cells = {
            "input_shape": format_shapes(layer.input_shapes),
            "output_shape": "(failed)" if layer.failed else format_shapes(layer.output_shapes),
            "params": params_text,
            "params_percent": f"{100 * count / total:.2f}%" if count and total else "--",
            "subtree_params": _params_cell(
                layer.params, _has_lazy(summary, layer.subtree_parameters)
            ),
            "trainable": f"{trainable:,}" if count else params_text,
            "macs": _count_cell(layer.self_macs if expanded else layer.macs),
            "flops": _count_cell(layer.self_flops if expanded else layer.flops),
        }
        out.append(Row(layer.depth, prefix, _label(layer), cells))
    return out


def _has_lazy(summary: ModelSummary, indices: Iterable[int]) -> bool:
    return any(not summary.parameters[i].initialized for i in indices)


def _params_cell(count: int, lazy: bool) -> str:
    """A parameter count; uninitialised lazy parameters (no count yet) are marked."""
    if lazy:
        return f"{count:,} + {LAZY}" if count else LAZY
    return f"{count:,}" if count else "--"


def title(summary: ModelSummary) -> str:
    """The line above the table: the model and how it was summarised."""
    how = "parameters only" if summary.parameters_only else f"mode={summary.mode}"
    return f"{summary.model_type} ({how}, device={summary.device}, depth={summary.depth})"


def _exact_count(n: int) -> str:
    short = format_count(n)
    return short if short == f"{n:,}" else f"{short} ({n:,})"


def _count_cell(n: int) -> str:
    return format_count(n) if n else "--"


def _reached_parameters(summary: ModelSummary) -> dict[int, tuple[int, ...]]:
    """Per call: its module's subtree, then every other parameter the calls beneath it used."""
    has_children = {layer.parent for layer in summary.layers if layer.parent is not None}
    accounted: dict[int, set[int]] = {}  # call index -> parameters its call subtree accounts for
    reached: dict[int, tuple[int, ...]] = {}
    for layer in reversed(summary.layers):  # children come after their parent in call order
        mine = accounted.pop(layer.index, set())
        mine.update(
            layer.own_parameters if layer.index in has_children else layer.subtree_parameters
        )
        reached[layer.index] = layer.subtree_parameters + tuple(
            sorted(mine.difference(layer.subtree_parameters))
        )
        if layer.parent is not None:
            accounted.setdefault(layer.parent, set()).update(mine)
    return reached


def footer_lines(summary: ModelSummary, table_rows: list[Row]) -> list[str]:
    """Totals with explicit units, then notes that explain the markers used in the table."""
    lines = [
        f"Total params: {summary.total_params:,}",
        f"Trainable params: {summary.trainable_params:,}",
        f"Non-trainable params: {summary.non_trainable_params:,}",
        f"Buffers: {summary.total_buffers:,} ({format_bytes(summary.buffer_bytes)})",
        f"Parameter size: {format_bytes(summary.param_bytes)}",
    ]
    if not summary.parameters_only:
        lines += [
            f"Input size: {format_bytes(summary.input_bytes)}",
            f"Output size: {format_bytes(summary.output_bytes)}",
            f"Forward MACs: {_exact_count(summary.total_macs)}; "
            f"FLOPs: {format_count(summary.total_flops)}"
            + (" (all ops)" if summary.all_ops else " (2 per MAC)"),
        ]
    if summary.backward_macs is not None and summary.backward_flops is not None:
        lines.append(
            f"Backward MACs: {_exact_count(summary.backward_macs)}; "
            f"FLOPs: {format_count(summary.backward_flops)}"
        )
    lines.append(
        "Units: 1 kB = 10^3 bytes, 1 MB = 10^6 bytes, 1 GB = 10^9 bytes"
        + ("." if summary.parameters_only else "; 1 M = 10^6, 1 G = 10^9, 1 T = 10^12 operations.")
    )
    markers = {row.cells["params"] for row in table_rows}
    if summary.uninitialized:
        lines.append(
            f"{LAZY}: lazy parameters or buffers whose shapes the first forward pass sets; "
            "not in the totals: " + ", ".join(summary.uninitialized)
        )
    if REPEAT in markers:
        lines.append(
            f"{REPEAT}: a module called again; its parameters are counted at its first call."
        )
    if SHARED in markers:
        lines.append(
            f"{SHARED}: parameters already counted in an earlier row (tied or shared weights)."
        )
    if summary.memory is not None:
        memory = summary.memory
        training = "unknown" if memory.training_peak is None else format_bytes(memory.training_peak)
        lines.append(
            f"Estimated peak memory: inference {format_bytes(memory.inference_peak)}, training step "
            f"{training} (parameters {format_bytes(memory.parameters)}, "
            f"activations {format_bytes(memory.activations)}, gradients {format_bytes(memory.gradients)}"
            + (
                f", optimizer {format_bytes(memory.optimizer_state)}"
                if memory.optimizer_state
                else ""
            )
            + ")"
        )
        if memory.measured:
            lines.append(f"Memory {memory.measured}.")
        if memory.training_error:
            lines.append(f"No training step estimate: {memory.training_error}.")
    elif summary.memory_error is not None:
        lines.append(f"Memory estimate unavailable: {summary.memory_error}")
    if summary.uncounted_ops:
        ops = ", ".join(f"{name} x{count}" for name, count in summary.uncounted_ops.items())
        lines.append(f"Ops without a FLOP formula (the totals are lower bounds): {ops}")
    if summary.scripted and summary.parameters_only:
        lines.append(
            "TorchScript modules (parameters read from the script): "
            + ", ".join(name or "(root)" for name in summary.scripted)
        )
    elif "" in summary.scripted:
        lines.append(
            "TorchScript model: no hook reaches inside, so the rows under the root are its "
            "module tree, not calls; shapes and costs are the whole model's, in the root row."
        )
    elif summary.scripted:
        lines.append(
            "TorchScript submodules (no hooks; parameters shown in the enclosing row): "
            + ", ".join(summary.scripted)
        )
    if summary.uncalled:
        lines.append(
            "Never called by forward (their parameters count in the totals): "
            + ", ".join(summary.uncalled)
        )
    if summary.parameters_only:
        lines.append(
            "Parameters only: no input was given, so the model was not run. Shapes and costs "
            "(MACs, FLOPs, memory) need one: summary(model, x), summary(model, "
            "input_size=(1, 3, 224, 224)), or summary(model, ()) for a forward without arguments."
        )
    return lines
