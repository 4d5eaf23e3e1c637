"""HTML tables for ``_repr_html_``: moved to :mod:`torchscope._records_html` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope._records_html import (
    render_gradient_report,
    render_graph_diff,
    render_history,
    render_measurement,
    render_memory,
    render_summary,
    render_timing,
    render_trainable_report,
    table,
)

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
