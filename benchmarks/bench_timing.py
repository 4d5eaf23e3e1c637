"""torchscope.benchmark and time_layers against torch.utils.benchmark, on the CPU.

1. ``benchmark`` vs ``torch.utils.benchmark.Timer.blocked_autorange`` on a matmul and a
   convolution: the medians should agree (the GPU version of this check, with
   ``triton.testing.do_bench`` and CUDA events, is ``benchmarks/gpu_validate.py``).
2. ``time_layers`` on resnet18: coverage (per-module rows against the step timed without
   hooks), the sum of self times against that step, and the instrumentation's cost per call.

Run: ``.venv/bin/python benchmarks/bench_timing.py``
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch.utils.benchmark import Timer

import torchscope
from benchmarks._common import table


def _timer_median(fn, *args) -> float:
    return (
        Timer(
            stmt="fn(*args)",
            globals={"fn": fn, "args": args},
            num_threads=torch.get_num_threads(),  # Timer runs on 1 thread unless told
        )
        .blocked_autorange(min_run_time=1.0)
        .median
    )


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_known_args(argv)
    torch.manual_seed(0)
    cases = {
        "matmul 1024x1024": (torch.mm, torch.randn(1024, 1024), torch.randn(1024, 1024)),
        "conv3x3 64ch 56x56 b4": (
            torch.nn.functional.conv2d,
            torch.randn(4, 64, 56, 56),
            torch.randn(64, 64, 3, 3),
        ),
    }
    rows = []
    worst = 0.0
    for name, (fn, *args) in cases.items():
        ours = torchscope.benchmark(fn, *args, warmup=5, repeat=50).median
        reference = _timer_median(fn, *args)
        worst = max(worst, abs(ours / reference - 1))
        rows.append(
            [name, f"{ours * 1e3:.3f}", f"{reference * 1e3:.3f}", f"{ours / reference:.3f}x"]
        )
    print(table(["work", "torchscope.benchmark ms", "utils.benchmark.Timer ms", "ratio"], rows))

    model = torchvision.models.resnet18()
    x = torch.randn(8, 3, 112, 112)
    report = torchscope.time_layers(model, x, warmup=3, repeat=15)
    self_sum = sum(row.self_time for row in report.layers)
    print()
    print(report)
    print(
        f"\nresnet18 b8 112x112: sum of self times {self_sum * 1e3:.1f} ms vs step without hooks "
        f"{report.step.median * 1e3:.1f} ms ({self_sum / report.step.median:.2f}x); coverage "
        f"{100 * report.coverage:.1f}%; instrumented step {report.instrumented_step.median * 1e3:.1f}"
        f" ms; {report.overhead_per_call * 1e6:.1f} us per module call"
    )
    return {
        "benchmark() vs utils.benchmark.Timer (worst of 2)": f"{100 * worst:.1f}% apart",
        "resnet18 self-time sum / bare step": f"{self_sum / report.step.median:.2f}x",
        "resnet18 timing overhead per module call": f"{report.overhead_per_call * 1e6:.1f} us",
    }


if __name__ == "__main__":
    main()
