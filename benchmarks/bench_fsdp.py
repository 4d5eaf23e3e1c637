"""GradientMonitor on an FSDP2 (``fully_shard``) model: the cost per training step, and the
cost of the report that combines the shards' figures.

Run: ``python -m benchmarks.bench_fsdp`` (starts itself on 2 processes, gloo on the CPU;
``--steps N`` per timed round, ``--width W``). The model is a 4-layer MLP, each layer an FSDP2
unit, SGD with momentum. Bare and monitored rounds alternate (interleaved medians); each
monitored round is a fresh ``with`` block timed after its first 100 steps (the steady state,
where the weights' change is measured every 10th step) and, apart, over its first steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import torchscope
from torchscope import distributed
from torchscope.collect.gradients._state import MEASURE_EVERY_STEP


def _model(width: int) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def _worker(steps: int, rounds: int, width: int) -> None:
    with distributed.process_group(backend="gloo") as info:
        model = _model(width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(info.rank)
        x = torch.randn(256, width, generator=generator)
        y = torch.randint(0, 10, (256,), generator=generator)

        def timed(n: int) -> float:
            start = time.perf_counter()
            for _ in range(n):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            return (time.perf_counter() - start) / n

        timed(3)
        bare, first, steady, reports = [], [], [], []
        for _ in range(rounds):
            bare.append(timed(steps))
            with torchscope.GradientMonitor(model, optimizer) as monitor:
                first.append(timed(steps))
                timed(max(MEASURE_EVERY_STEP - steps, 0))
                steady.append(timed(steps))
            start = time.perf_counter()
            monitor.report()
            reports.append(time.perf_counter() - start)
        if info.rank == 0:
            b, f, s = (statistics.median(v) * 1e3 for v in (bare, first, steady))
            print(f"FSDP2, {info.world_size} ranks (gloo, CPU), {width}-wide 4-layer MLP")
            print(f"bare ms/step               {b:8.2f}")
            print(f"monitored, first steps     {f:8.2f}  ({f / b:.2f}x)")
            print(f"monitored, after step {MEASURE_EVERY_STEP:<4} {s:8.2f}  ({s / b:.2f}x)")
            print(f"report() incl. combining   {statistics.median(reports) * 1e3:8.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args(argv)
    if distributed.launched_by_torchrun():
        _worker(args.steps, args.rounds, args.width)
        return
    forwarded = ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    sys.exit(
        distributed.launch("benchmarks.bench_fsdp", 2, [*forwarded, "--width", str(args.width)])
    )


if __name__ == "__main__":
    main()
