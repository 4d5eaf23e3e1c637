"""Preflight on a torchvision resnet18 batch, and ``torchscope run`` against plain ``python``
on the mnist example.

Run: ``python -m benchmarks.bench_preflight`` (``--size 224 --batch 8`` for the resnet18
batch; ``--runs N`` for the paired script timings). Preflight is timed after one warm-up
call (the first forward of a process pays for kernel selection); the script is run in fresh
processes, alternating ``python examples/mnist/main.py ARGS`` and ``torchscope run
examples/mnist/main.py ARGS``, and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import torchscope

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "examples" / "mnist" / "main.py"
MNIST_ARGS = ["--epochs", "1", "--max-batches", "60"]


def time_preflight(size: int, batch: int) -> tuple[float, torchscope.PreflightReport]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    torchscope.preflight(model, x, y, loss_fn=F.cross_entropy, steps=3)  # warm-up
    start = time.perf_counter()
    report = torchscope.preflight(model, x, y, loss_fn=F.cross_entropy)
    return time.perf_counter() - start, report


def time_run(runs: int) -> tuple[float, float]:
    plain = [sys.executable, str(MNIST), *MNIST_ARGS]
    watched = [sys.executable, "-m", "torchscope", "run", str(MNIST), *MNIST_ARGS]
    times: dict[int, list[float]] = {0: [], 1: []}
    for i in range(runs):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            subprocess.run(
                plain if which == 0 else watched, check=True, capture_output=True, cwd=ROOT
            )
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args(argv)
    seconds, report = time_preflight(args.size, args.batch)
    print(
        f"preflight, resnet18, batch {args.batch}x3x{args.size}x{args.size}: {seconds:.2f} s "
        f"({report.steps} overfitting steps; {'ok' if report.ok else report.failed})"
    )
    figures = {"preflight resnet18 s": f"{seconds:.2f}"}
    if MNIST.is_file():
        plain, watched = time_run(args.runs)
        print(
            f"examples/mnist/main.py {' '.join(MNIST_ARGS)}: python {plain:.2f} s, "
            f"torchscope run {watched:.2f} s ({watched / plain:.2f}x, process start included)"
        )
        figures["torchscope run / python"] = f"{watched / plain:.2f}x"
    return figures


if __name__ == "__main__":
    main()
