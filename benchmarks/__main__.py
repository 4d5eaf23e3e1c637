"""``python -m benchmarks``: run every benchmark of the project and print one table of ratios."""

from __future__ import annotations

import sys

from benchmarks import (
    bench_compiled,
    bench_costs,
    bench_freezing,
    bench_graph,
    bench_graph_zoo,
    bench_monitor,
    bench_summary,
    bench_timing,
    bench_zoo,
)
from benchmarks._common import table

BENCHMARKS = {
    "summary": bench_summary.main,
    "costs": bench_costs.main,
    "freezing": bench_freezing.main,
    "monitor": bench_monitor.main,
    "graph": bench_graph.main,
    "graph_zoo": bench_graph_zoo.main,
    "timing": bench_timing.main,
    "zoo": bench_zoo.main,
    "compiled": bench_compiled.main,
}


def main() -> None:
    argv = sys.argv[1:]
    headline: list[list[str]] = []
    for name, run in BENCHMARKS.items():
        print(f"\n{'=' * 20} {name} {'=' * 20}\n")
        for metric, value in run(argv).items():
            headline.append([name, metric, value])
    print("\n# Headline figures\n")
    print(table(["benchmark", "metric", "value"], headline))


if __name__ == "__main__":
    main()
