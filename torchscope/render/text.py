"""Plain-text and Markdown tables of a :class:`~torchscope.records.ModelSummary`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tabulate import tabulate

from torchscope.render.table import HEADERS, NUMERIC_COLUMNS, footer_lines, rows

if TYPE_CHECKING:
    from torchscope.records import ModelSummary

__all__ = ["render_summary"]


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
    title = f"{summary.model_type} (mode={summary.mode}, device={summary.device}, depth={summary.depth})"
    footer = footer_lines(summary, table_rows)
    if markdown:
        return "\n".join([f"**{title}**", "", table, "", *(f"- {line}" for line in footer)]) + "\n"
    rule = "=" * max(len(line) for line in table.splitlines())
    return "\n".join([title, rule, table, rule, *footer])
