"""The options of ``summary()``: its modes and column sets, and the checks of its arguments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from torchscope.records import SUMMARY_COLUMNS

__all__ = [
    "DEFAULT_COLUMNS",
    "FORWARD_COLUMNS",
    "MODES",
    "PARAMETER_COLUMNS",
    "PARAMETER_DEFAULT_COLUMNS",
    "Mode",
    "check_columns",
    "check_depth",
]

Mode = Literal["eval", "train", "same"]
MODES: tuple[str, ...] = ("eval", "train", "same")
DEFAULT_COLUMNS: tuple[str, ...] = ("input_shape", "output_shape", "params", "macs")
#: The columns of a summary made without an input (``summary(model)``), and its default.
PARAMETER_COLUMNS: tuple[str, ...] = ("params", "params_percent", "subtree_params", "trainable")
PARAMETER_DEFAULT_COLUMNS: tuple[str, ...] = ("params", "subtree_params", "trainable")

#: Columns that need a forward pass: refused in a summary without an input.
FORWARD_COLUMNS = ("input_shape", "output_shape", "macs", "flops")


def check_depth(depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(
            f"depth must be an int (levels of nesting to show), got {type(depth).__name__}"
        )
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return depth


def check_columns(columns: Iterable[str] | str | None) -> tuple[str, ...]:
    if columns is None:
        return DEFAULT_COLUMNS
    names = (columns,) if isinstance(columns, str) else tuple(columns)
    unknown = [c for c in names if c not in SUMMARY_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown column(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(map(repr, SUMMARY_COLUMNS))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"columns must not repeat a name, got {names}")
    return names
