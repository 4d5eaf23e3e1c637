"""Plain-text and Markdown tables of torchscope's records: the records' own text face.

Part of the record layer (records call it for ``str()`` and ``to_markdown()``); it imports no
exporter. The pieces of each table (rows, title, notes) are public so that
:mod:`torchscope.records._html` draws the same cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tabulate import tabulate

from torchscope._util.format import format_bytes, format_duration
from torchscope.records._table import HEADERS, NUMERIC_COLUMNS, footer_lines, rows
from torchscope.records._table import title as summary_title

if TYPE_CHECKING:
    from torchscope.records.freezing import TrainableReport, TrainableRow
    from torchscope.records.gradients import GradientReport
    from torchscope.records.graph import Graph, GraphDiff
    from torchscope.records.summary import MemoryEstimate, ModelSummary
    from torchscope.records.timing import Measurement, TimingReport
    from torchscope.records.training import History

__all__ = [
    "FINDING_HEADERS",
    "HISTORY_HEADERS",
    "finding_rows",
    "gradient_headline",
    "history_notes",
    "history_rows",
    "measurement_statistics",
    "memory_rows",
    "render_gradient_report",
    "render_graph",
    "render_graph_diff",
    "render_history",
    "render_measurement",
    "render_memory",
    "render_summary",
    "render_timing",
    "render_trainable_report",
    "timing_notes",
    "timing_table",
    "timing_title",
    "trainable_footer",
    "trainable_mode",
]


def render_summary(summary: ModelSummary, *, markdown: bool = False) -> str:
    """The summary as a table with the module hierarchy drawn as a tree, totals under it."""
    table_rows = rows(summary)
    columns = ["layer", *summary.columns]
    body = [
        [row.tree_prefix + row.label, *(row.cells[c] for c in summary.columns)]
        for row in table_rows
    ]
    align = ["right" if c in NUMERIC_COLUMNS else "left" for c in columns]
    table = tabulate(
        body,
        headers=[HEADERS[c] for c in columns],
        tablefmt="github" if markdown else "simple",
        colalign=align,
        disable_numparse=True,
        preserve_whitespace=True,
    )
    title = summary_title(summary)
    footer = footer_lines(summary, table_rows)
    if markdown:
        return "\n".join([f"**{title}**", "", table, "", *(f"- {line}" for line in footer)]) + "\n"
    rule = "=" * max(len(line) for line in table.splitlines())
    return "\n".join([title, rule, table, rule, *footer])


def render_trainable_report(report: TrainableReport) -> str:
    """The table of :func:`torchscope.trainable_report`: counts per module, totals under it."""
    body = [
        [
            "  " * row.depth
            + (row.name.rsplit(".", 1)[-1] if row.name else row.type)
            + (f" ({row.type})" if row.name else ""),
            f"{row.trainable_params:,}",
            f"{row.frozen_params:,}",
            trainable_mode(row),
        ]
        for row in report.rows
    ]
    table = tabulate(
        body,
        headers=["Module", "Trainable", "Frozen", "Mode"],
        tablefmt="simple",
        colalign=["left", "right", "right", "left"],
        disable_numparse=True,
        preserve_whitespace=True,
    )
    return "\n".join([table, *trainable_footer(report)])


def trainable_mode(row: TrainableRow) -> str:
    """The Mode cell: ``eval``, ``train`` or ``mixed (2/5 eval)``, and the pinned count."""
    in_eval, total, pinned = row.modules_in_eval, row.modules, row.pinned_eval
    text = (
        "eval"
        if in_eval == total
        else "train"
        if in_eval == 0
        else f"mixed ({in_eval}/{total} eval)"
    )
    return f"{text}, {pinned} pinned" if pinned else text


def trainable_footer(report: TrainableReport) -> list[str]:
    """The totals under the trainable table, and the warning about unpinned frozen norms."""
    root = report.rows[0]
    total = root.trainable_params + root.frozen_params
    share = f" ({100 * root.frozen_params / total:.1f}% frozen)" if total else ""
    return [
        f"Trainable params: {root.trainable_params:,}",
        f"Frozen params: {root.frozen_params:,}{share}",
        f"Modules in eval mode: {root.modules_in_eval} of {root.modules}"
        + (f", {root.pinned_eval} pinned in eval by torchscope.freeze" if root.pinned_eval else ""),
        *(
            [
                "Warning: frozen norm layers are in training mode without their eval pin "
                "(rebuilt after freezing, e.g. by convert_sync_batchnorm?); their running "
                "statistics will drift. Freeze them again after the conversion: "
                + ", ".join(report.unpinned_frozen_norms)
            ]
            if report.unpinned_frozen_norms
            else []
        ),
    ]


def render_memory(memory: MemoryEstimate) -> str:
    """The memory estimate as a small table of categories (SI units)."""
    text = tabulate(
        memory_rows(memory),
        headers=[f"Memory estimate ({memory.device})", "Bytes"],
        colalign=["left", "right"],
    )
    notes = [f"Memory {memory.measured}."] if memory.measured else []
    if memory.training_error:
        notes.append(f"No training step estimate: {memory.training_error}.")
    return "\n".join([text, *notes])


#: Findings shown per kind in the text table; the rest are counted in one line.
FINDINGS_PER_KIND = 10


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def gradient_headline(report: GradientReport) -> str:
    """One line: what was observed and the verdict (``healthy``, or the error/warning counts)."""
    counts = {
        s: sum(f.severity == s for f in report.findings) for s in ("error", "warning", "info")
    }
    trainable = sum(p.trainable for p in report.parameters)
    # without optimizer steps the step unit is the backward pass: say it once
    counted = (
        f"{report.backward_passes} backward pass(es)"
        if report.step_unit == "backward pass"
        else f"{report.steps} {report.step_unit}(s), {report.backward_passes} backward pass(es)"
    )
    return (
        f"Gradient health: {counted}, {trainable} trainable parameter tensors: "
        + (
            "healthy"
            if report.ok
            else f"{counts['error']} error(s), {counts['warning']} warning(s)"
        )
        + (f", {counts['info']} note(s)" if counts["info"] else "")
    )


#: Columns of the findings table.
FINDING_HEADERS = ("severity", "kind", "where", "step", "value", "threshold", "message")


def finding_rows(report: GradientReport) -> list[list[str]]:
    """The rows of the findings table: at most :data:`FINDINGS_PER_KIND` per kind, then one
    ``... and N more`` row per kind that had more."""
    table = []
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for finding in report.findings:
        shown[finding.kind] = shown.get(finding.kind, 0) + 1
        if shown[finding.kind] > FINDINGS_PER_KIND:
            hidden[finding.kind] = hidden.get(finding.kind, 0) + 1
            continue
        table.append(
            [
                finding.severity,
                finding.kind,
                finding.where,
                "" if finding.step is None else str(finding.step),
                _number(finding.value),
                _number(finding.threshold),
                finding.message,
            ]
        )
    for kind, count in hidden.items():
        table.append(["", kind, f"... and {count} more", "", "", "", ""])
    return table


def render_gradient_report(report: GradientReport, *, markdown: bool = False) -> str:
    """The findings as a table (most severe first), with one line of totals above it."""
    head = gradient_headline(report)
    if not report.findings:
        return head
    table = finding_rows(report)
    headers = list(FINDING_HEADERS)
    if markdown:
        return head + "\n\n" + tabulate(table, headers=headers, tablefmt="github")
    body = tabulate(
        table,
        headers=headers,
        tablefmt="simple",
        maxcolwidths=[None, None, 40, None, None, None, 60],
    )
    return head + "\n" + body


def render_graph(graph: Graph) -> str:
    """A few lines about a graph: what it shows, node counts by kind, folds and warnings."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        counts[node.kind] = counts.get(node.kind, 0) + 1
    kinds = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items()))
    lines = [
        f"{type(graph).__name__} of {graph.title}: {len(graph.nodes)} nodes ({kinds}), "
        f"{len(graph.edges)} edges, {len(graph.clusters)} clusters"
    ]
    for fold in graph.folds:
        lines.append(
            f"  repeated: {fold.label} ×{fold.count} ({len(fold.instances[0])} nodes each)"
        )
    if graph.grad_origin is not None:
        lines.append(f"  gradient first went bad at: {graph.grad_origin}")
    lines.extend(f"  warning: {w}" for w in graph.warnings)
    return "\n".join(lines)


def render_graph_diff(diff: GraphDiff) -> str:
    """The diff as lines ``+ key``, ``- key`` and ``~ key: what changed``; a single line when
    the graphs are the same."""
    if not diff:
        return "no structural difference"
    lines = [f"+ {key}" for key in diff.added]
    lines += [f"- {key}" for key in diff.removed]
    lines += [f"~ {key}: {what}" for key, what in diff.changed]
    summary = f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
    return "\n".join([summary, *lines])


def render_measurement(measurement: Measurement) -> str:
    """One line: ``label: median 1.234 ms (IQR 12.3 us, mean ..., min ..., n=20, cuda:0)``."""
    label = f"{measurement.label}: " if measurement.label else ""
    return label + measurement_statistics(measurement)


def measurement_statistics(measurement: Measurement) -> str:
    """``median 1.234 ms (IQR 12.3 us, mean ..., min ..., n=20, cpu)``."""
    flushed = ", L2 flushed" if measurement.flushed_cache else ""
    return (
        f"median {format_duration(measurement.median)} (IQR {format_duration(measurement.iqr)}, "
        f"mean {format_duration(measurement.mean)}, min {format_duration(measurement.min)}, "
        f"n={measurement.n}, {measurement.device}{flushed})"
    )


def timing_table(
    report: TimingReport, *, limit: int | None = 30
) -> tuple[list[str], list[list[str]], int]:
    """Headers, rows (most expensive self time first, at most ``limit``) and how many rows
    were left out."""
    rows = sorted(report.layers, key=lambda r: (-r.self_time, r.name))
    shown = rows if limit is None else rows[:limit]
    headers = ["Module (type)", "Calls", "Forward", "± IQR", "Fwd self"]
    if report.backward:
        headers += ["Backward", "± IQR", "Bwd self"]
    headers.append("Share")
    table_rows = []
    for row in shown:
        cells = [
            f"{row.name or '(root)'} ({row.type})",
            str(row.calls),
            format_duration(row.forward),
            format_duration(row.forward_iqr),
            format_duration(row.forward_self),
        ]
        if report.backward:
            cells += [
                format_duration(row.backward),
                format_duration(row.backward_iqr),
                format_duration(row.backward_self),
            ]
        cells.append(f"{100 * row.share:.1f}%")
        table_rows.append(cells)
    return headers, table_rows, len(rows) - len(shown)


def timing_title(report: TimingReport) -> str:
    what = "forward + backward" if report.backward else "forward"
    return (
        f"{report.model_type} per-module {what} times on {report.device} "
        f"(median of {report.repeat} steps after {report.warmup} warm-up, sorted by self time)"
    )


def timing_notes(report: TimingReport, left_out: int) -> list[str]:
    """The lines under the timing table: rows left out, the step, overhead and coverage."""
    lines = []
    if left_out:
        lines.append(f"... {left_out} more modules (to_dict() has them all)")
    lines += [
        f"Step without hooks: {measurement_statistics(report.step)}",
        f"Step with timing hooks: median {format_duration(report.instrumented_step.median)}; "
        f"instrumentation costs {format_duration(report.overhead_per_call)} per module call",
        f"Coverage: the model's direct children account for {100 * report.coverage:.1f}% of "
        "the step without hooks",
    ]
    return lines


def render_timing(report: TimingReport, *, limit: int | None = 30) -> str:
    """The per-module table, most expensive self time first, then the accuracy lines."""
    headers, table_rows, left_out = timing_table(report, limit=limit)
    table = tabulate(
        table_rows,
        headers=headers,
        disable_numparse=True,
        colalign=("left",) + ("right",) * (len(headers) - 1),
    )
    return "\n".join([timing_title(report), table, *timing_notes(report, left_out)])


#: Columns of the per-epoch table of a :class:`~torchscope.records.History`.
HISTORY_HEADERS = (
    "Epoch",
    "Train loss",
    "Train acc",
    "Val loss",
    "Val acc",
    "LR",
    "Steps",
    "Samples/s",
)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def history_rows(history: History) -> list[list[str]]:
    """One row per epoch: loss, accuracy, lr, steps, throughput."""
    return [
        [
            str(e.epoch),
            f"{e.train_loss:.4f}",
            _percent(e.train_accuracy),
            "-" if e.val_loss is None else f"{e.val_loss:.4f}",
            _percent(e.val_accuracy),
            f"{e.lr:.3g}",
            str(e.optimizer_steps),
            f"{e.samples_per_second:,.0f}",
        ]
        for e in history.epochs
    ]


def history_notes(history: History) -> list[str]:
    """The lines under the epoch table: resume point, gradient health, checkpoint."""
    lines = []
    if history.resumed_from:
        lines.append(f"Resumed after epoch {history.resumed_from}.")
    report = history.gradient_report
    if report is not None:
        kinds = ", ".join(sorted(report.kinds))
        lines.append(
            "Gradient health: ok" if report.ok else f"Gradient health: problems found ({kinds})"
        )
    if history.checkpoint:
        lines.append(f"Last checkpoint: {history.checkpoint}")
    return lines


def render_history(history: History) -> str:
    """One row per epoch (loss, accuracy, lr, throughput), then the gradient-health line."""
    table = tabulate(history_rows(history), headers=list(HISTORY_HEADERS), disable_numparse=True)
    return "\n".join([table, *history_notes(history)])


def memory_rows(memory: MemoryEstimate) -> list[list[str]]:
    """``[category, bytes]`` rows of a memory estimate (SI units)."""
    return [
        ["Parameters", format_bytes(memory.parameters)],
        ["Buffers", format_bytes(memory.buffers)],
        ["Inputs", format_bytes(memory.inputs)],
        ["Activations (saved for backward, output)", format_bytes(memory.activations)],
        ["Gradients", format_bytes(memory.gradients)],
        ["Optimizer state", format_bytes(memory.optimizer_state)],
        [
            "Training step peak",
            "unknown" if memory.training_peak is None else format_bytes(memory.training_peak),
        ],
        ["Inference forward peak", format_bytes(memory.inference_peak)],
    ]
