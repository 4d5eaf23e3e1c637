"""The rows of a summary table: moved to :mod:`torchscope._records_table` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope._records_table import (
    HEADERS,
    NUMERIC_COLUMNS,
    Row,
    footer_lines,
    rows,
    title,
)

__all__ = [
    "HEADERS",
    "NUMERIC_COLUMNS",
    "Row",
    "footer_lines",
    "rows",
    "title",
]
