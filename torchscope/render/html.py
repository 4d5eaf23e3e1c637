"""HTML table of a :class:`~torchscope.records.ModelSummary`, for Jupyter's ``_repr_html_``."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from torchscope.render.table import HEADERS, NUMERIC_COLUMNS, footer_lines, rows

if TYPE_CHECKING:
    from torchscope.records import ModelSummary

__all__ = ["render_summary"]


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
    title = f"{summary.model_type} (mode={summary.mode}, device={summary.device}, depth={summary.depth})"
    footer = "".join(f"<li>{escape(line)}</li>" for line in footer_lines(summary, table_rows))
    return (
        '<div class="torchscope-summary">'
        f"<p><strong>{escape(title)}</strong></p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<ul>{footer}</ul></div>"
    )
