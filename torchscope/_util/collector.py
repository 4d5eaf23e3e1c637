"""Python's cyclic garbage collector held off for a block, and put back as it was."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside the block; on exit, on again only if it was
    on before (a caller that turned it off keeps it off), whether the block returns or
    raises. Reference counting still frees what is not in a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
