"""Helpers shared by the benchmark scripts: timing medians and plain tables."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tabulate import tabulate

T = TypeVar("T")


def median_seconds(fn: Callable[[], object], *, repeat: int = 9, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: Sequence[Callable[[], object]], *, repeat: int = 9, warmup: int = 2
) -> list[float]:
    """Median wall time of each function, timed in alternating rounds so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def quietly(fn: Callable[[], Any]) -> Any:
    """Run a peer tool with its warnings and prints kept out of the bench's output."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        return fn()


def first_line(error: BaseException, limit: int = 60) -> str:
    """An exception's first line, cut to ``limit`` characters, for a table cell."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def available_peers(
    peers: Mapping[str, tuple[str, str, T]], *, missing: str = "not installed"
) -> dict[str, T | str]:
    """Each peer's checker, under ``"name version"``, or under its name why it cannot run.
    ``peers`` maps a name to (distribution, module to import, checker); the imports happen
    here, so that their time is not timed later."""
    found: dict[str, T | str] = {}
    for name, (dist, module, checker) in peers.items():
        try:
            version = importlib.metadata.version(dist)
            quietly(lambda module=module: importlib.import_module(module))
        except importlib.metadata.PackageNotFoundError:
            found[name] = missing
            continue
        except Exception as error:
            found[name] = f"import failed: {type(error).__name__}: {first_line(error)}"
            continue
        found[f"{name} {version}"] = checker
    return found
