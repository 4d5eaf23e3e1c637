"""GradientMonitor on a torch.compile'd model: the cost per training step next to the eager
figure, and the graphs dynamo builds with and without the monitor.

Run: ``python -m benchmarks.bench_compiled`` (``--backend aot_eager`` to skip inductor's C++
compilation; ``--steps N`` per timed round). The model is a 3-layer MLP, 1024 wide, batch
512, SGD with momentum: a mid-sized step where the monitor's per-step cost shows. Bare and
monitored steps are timed in alternating rounds (interleaved medians). Each monitored round
is a fresh ``with`` block, timed twice: over its first steps, where the weights' change is
measured at every step, and after MEASURE_EVERY_STEP steps, where it is measured every
MEASURE_STRIDE-th (the steady state of a real run); both include the eager sample every 50
steps, as a user's loop would.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import torchscope
from benchmarks._common import ratio, table
from torchscope.collect.gradients._state import MEASURE_EVERY_STEP


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def _rounds(compiled: bool, backend: str, steps: int, rounds: int) -> dict[str, object]:
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    runner = torch.compile(model, backend=backend) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(512, 1024), torch.randint(0, 10, (512,))

    def train(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            F.cross_entropy(runner(x), y).backward()
            optimizer.step()

    def timed(n: int) -> float:
        start = time.perf_counter()
        train(n)
        return (time.perf_counter() - start) / n

    train(3)  # compile (when compiled) and warm up
    graphs_bare = dict(counters["stats"]).get("unique_graphs", 0)
    bare: list[float] = []
    first: list[float] = []
    steady: list[float] = []
    monitor = torchscope.GradientMonitor(runner, optimizer)
    for i in range(rounds):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            if which == 0:
                bare.append(timed(steps))
                continue
            with monitor:  # a fresh run: its first steps, then the steady state
                first.append(timed(steps))
                train(max(MEASURE_EVERY_STEP - steps, 0))
                steady.append(timed(steps))
    report = monitor.report()
    return {
        "bare": statistics.median(bare),
        "first": statistics.median(first),
        "monitored": statistics.median(steady),
        "graphs": f"{graphs_bare} -> {dict(counters['stats']).get('unique_graphs', 0)}",
        "findings": report.kinds,
    }


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=4)
    args, _ = parser.parse_known_args(argv)
    rows = []
    figures: dict[str, str] = {}
    for compiled in (False, True):
        result = _rounds(compiled, args.backend, args.steps, args.rounds)
        name = f"compiled ({args.backend})" if compiled else "eager"
        cost = ratio(result["monitored"], result["bare"])  # type: ignore[arg-type]
        early = ratio(result["first"], result["bare"])  # type: ignore[arg-type]
        rows.append(
            [
                name,
                f"{result['bare'] * 1e3:.2f}",  # type: ignore[operator]
                f"{result['first'] * 1e3:.2f} ({early})",  # type: ignore[operator]
                f"{result['monitored'] * 1e3:.2f}",  # type: ignore[operator]
                cost,
                result["graphs"] if compiled else "-",
                ", ".join(sorted(result["findings"])) or "none",  # type: ignore[arg-type]
            ]
        )
        figures[f"monitor cost, {name}"] = cost
        figures[f"monitor cost, {name}, first {MEASURE_EVERY_STEP} steps"] = early
    print(
        table(
            [
                "model run",
                "bare ms/step",
                f"monitored, first {MEASURE_EVERY_STEP} steps",
                "monitored ms/step, after",
                "cost",
                "graphs (bare -> after monitoring)",
                "findings",
            ],
            rows,
        )
    )
    return figures


if __name__ == "__main__":
    main()
