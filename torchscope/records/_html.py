"""HTML tables of torchscope's records, for Jupyter's ``_repr_html_``: the records' own face.

Part of the record layer; it imports no exporter. Each is a self-contained ``<div>`` (no
script, no external style sheet) that shows the same cells as the text table of
:mod:`torchscope.records._text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

import torchscope.records._text as text
from torchscope._util.format import format_duration
from torchscope.records._table import HEADERS, NUMERIC_COLUMNS, footer_lines, rows
from torchscope.records._table import title as summary_title

if TYPE_CHECKING:
    from torchscope.records.freezing import TrainableReport
    from torchscope.records.gradients import GradientReport
    from torchscope.records.graph import GraphDiff
    from torchscope.records.summary import MemoryEstimate, ModelSummary
    from torchscope.records.timing import Measurement, TimingReport
    from torchscope.records.training import History

__all__ = [
    "render_gradient_report",
    "render_graph_diff",
    "render_history",
    "render_measurement",
    "render_memory",
    "render_summary",
    "render_timing",
    "render_trainable_report",
    "table",
]


def table(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    css_class: str,
    title: str = "",
    notes: Sequence[str] = (),
    right: Sequence[int] = (),
    indent: Sequence[int] = (),
) -> str:
    """A ``<div>`` with an optional bold title, a table and a list of notes; every text is
    escaped. ``right``: indices of right-aligned (numeric) columns; ``indent``: per row, the
    nesting depth of its first cell."""

    def cell(tag: str, column: int, content: str, style: str = "") -> str:
        align = "right" if column in right else "left"
        return f'<{tag} style="text-align:{align};{style}">{escape(content)}</{tag}>'

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    lines = []
    for r, row in enumerate(body):
        cells = []
        for i, content in enumerate(row):
            style = ""
            if i == 0 and indent:
                style = f"padding-left:{0.3 + 1.2 * indent[r]:.1f}em"
            elif i in right:
                style = "font-family:monospace"
            cells.append(cell("td", i, content, style))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    heading = f"<p><strong>{escape(title)}</strong></p>" if title else ""
    footer = "".join(f"<li>{escape(note)}</li>" for note in notes)
    return (
        f'<div class="{css_class}">{heading}'
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"
        + (f"<ul>{footer}</ul>" if footer else "")
        + "</div>"
    )


def render_summary(summary: ModelSummary) -> str:
    """A self-contained ``<div>`` holding the table (hierarchy by indentation) and the totals."""
    table_rows = rows(summary)
    columns = ["layer", *summary.columns]

    def cell(tag: str, column: str, text: str, style: str = "") -> str:
        align = "right" if column in NUMERIC_COLUMNS else "left"
        return f'<{tag} style="text-align:{align};{style}">{escape(text)}</{tag}>'

    head = "".join(cell("th", c, HEADERS[c]) for c in columns)
    body = []
    for row in table_rows:
        cells = [cell("td", "layer", row.label, f"padding-left:{0.3 + 1.2 * row.depth:.1f}em")]
        cells += [cell("td", c, row.cells[c], "font-family:monospace") for c in summary.columns]
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = summary_title(summary)
    footer = "".join(f"<li>{escape(line)}</li>" for line in footer_lines(summary, table_rows))
    return (
        '<div class="torchscope-summary">'
        f"<p><strong>{escape(title)}</strong></p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<ul>{footer}</ul></div>"
    )


def render_gradient_report(report: GradientReport) -> str:
    """The headline, then the findings table (as many rows per kind as the text table)."""
    return table(
        text.FINDING_HEADERS,
        text.finding_rows(report),
        css_class="torchscope-gradients",
        title=text.gradient_headline(report),
        right=(3, 4, 5),
    )


def render_trainable_report(report: TrainableReport) -> str:
    """The trainable/frozen table (hierarchy by indentation), totals under it."""
    body = [
        [
            (row.name.rsplit(".", 1)[-1] if row.name else row.type)
            + (f" ({row.type})" if row.name else ""),
            f"{row.trainable_params:,}",
            f"{row.frozen_params:,}",
            text.trainable_mode(row),
        ]
        for row in report.rows
    ]
    return table(
        ["Module", "Trainable", "Frozen", "Mode"],
        body,
        css_class="torchscope-trainable",
        notes=text.trainable_footer(report),
        right=(1, 2),
        indent=[row.depth for row in report.rows],
    )


def render_timing(report: TimingReport, *, limit: int | None = 30) -> str:
    """The per-module timing table, most expensive self time first, accuracy notes under it."""
    headers, body, left_out = text.timing_table(report, limit=limit)
    return table(
        headers,
        body,
        css_class="torchscope-timing",
        title=text.timing_title(report),
        notes=text.timing_notes(report, left_out),
        right=range(1, len(headers)),
    )


def render_history(history: History) -> str:
    """One row per epoch, then the resume, gradient-health and checkpoint lines."""
    return table(
        text.HISTORY_HEADERS,
        text.history_rows(history),
        css_class="torchscope-history",
        notes=text.history_notes(history),
        right=range(1, len(text.HISTORY_HEADERS)),
    )


def render_measurement(measurement: Measurement) -> str:
    """One row: label, median, spread, mean, min, runs and device."""
    return table(
        ["Label", "Median", "IQR", "Mean", "Min", "Runs", "Device"],
        [
            [
                measurement.label,
                format_duration(measurement.median),
                format_duration(measurement.iqr),
                format_duration(measurement.mean),
                format_duration(measurement.min),
                str(measurement.n),
                measurement.device + (", L2 flushed" if measurement.flushed_cache else ""),
            ]
        ],
        css_class="torchscope-measurement",
        right=(1, 2, 3, 4, 5),
    )


def render_memory(memory: MemoryEstimate) -> str:
    """The categories of the memory estimate and their bytes (SI units)."""
    return table(
        [f"Memory estimate ({memory.device})", "Bytes"],
        text.memory_rows(memory),
        css_class="torchscope-memory",
        right=(1,),
    )


def render_graph_diff(diff: GraphDiff) -> str:
    """A row per added (``+``), removed (``-``) and changed (``~``) node."""
    body = [["+", key, "added"] for key in diff.added]
    body += [["-", key, "removed"] for key in diff.removed]
    body += [["~", key, what] for key, what in diff.changed]
    title = (
        f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed"
        if diff
        else "no structural difference"
    )
    return table(["", "Node", "Change"], body, css_class="torchscope-graph-diff", title=title)
