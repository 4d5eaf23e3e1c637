"""Small pieces every record file shares: the schema version, the shape type, and the helpers
of the records' one-line ``repr()`` and IPython display."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA_VERSION", "Shape"]

#: Version of the layout of :meth:`ModelSummary.to_dict`; bumped on incompatible changes.
SCHEMA_VERSION = 1

Shape = tuple[int, ...]


# Display: every record has a one-line ``repr()`` (what it is and its headline, never its
# fields: a report's fields run to megabytes); records with a table show it through IPython's
# pretty printer (``_repr_pretty_``, terminal IPython) and as HTML (``_repr_html_``, Jupyter).


def _pretty(record: object, printer: Any, cycle: bool) -> None:
    """IPython's ``_repr_pretty_``: the record's text table (its ``str()``)."""
    printer.text(repr(record) if cycle else str(record))


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def _short(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with ``...``."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _shapes(items: Any) -> tuple[Shape, ...]:
    return tuple(tuple(int(d) for d in s) for s in items)
