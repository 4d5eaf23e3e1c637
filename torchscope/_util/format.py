"""Small text formatters shared by renderers and error messages (no torch, no torchscope imports)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_bytes", "format_count", "format_duration", "format_shapes"]

MAX_SHAPES_SHOWN = 4


def format_bytes(n: int) -> str:
    """SI units: 1 kB = 10^3 bytes, 1 MB = 10^6 bytes, 1 GB = 10^9 bytes."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    """Operation counts in SI units: ``9,408``, ``118.01 M``, ``1.81 G`` (10^6, 10^9, 10^12)."""
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,}"


def format_duration(seconds: float) -> str:
    """Seconds in the unit that keeps 3-4 significant digits: ``812.3 us``, ``12.41 ms``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale or unit == "us":
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds:.3g} s"


def format_shapes(shapes: Sequence[Sequence[int]]) -> str:
    """``[1, 3, 224, 224]``; several shapes comma-separated, at most four shown; ``--`` for none."""
    if not shapes:
        return "--"
    shown = ", ".join("[" + ", ".join(str(d) for d in s) + "]" for s in shapes[:MAX_SHAPES_SHOWN])
    if len(shapes) > MAX_SHAPES_SHOWN:
        shown += f", ... (+{len(shapes) - MAX_SHAPES_SHOWN})"
    return shown
