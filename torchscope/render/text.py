"""Plain-text and Markdown tables: moved to :mod:`torchscope._records_text` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope._records_text import (
    FINDING_HEADERS,
    HISTORY_HEADERS,
    finding_rows,
    gradient_headline,
    history_notes,
    history_rows,
    measurement_statistics,
    memory_rows,
    render_gradient_report,
    render_graph,
    render_graph_diff,
    render_history,
    render_measurement,
    render_memory,
    render_summary,
    render_timing,
    render_trainable_report,
    timing_notes,
    timing_table,
    timing_title,
    trainable_footer,
    trainable_mode,
)

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
