"""Validate torchscope's GPU timing against the references, on a machine with a CUDA GPU.

Checks (issue 7's bar; figures go to docs/timing.md):
1. ``torchscope.benchmark`` agrees with ``torch.utils.benchmark.Timer`` and
   ``triton.testing.do_bench`` within 5% on large matmuls and convolutions;
2. ``time_layers`` on resnet50: the sum of every module's self time (forward and backward) is
   within 10% of the CUDA kernel total that ``torch.profiler`` measures for the same step;
3. repeated runs: the step median varies by less than 2% across three ``time_layers`` runs.

Run: ``python benchmarks/gpu_validate.py [--json out.json]``. Without a GPU it says so and
exits 2 (it is not part of ``make bench``, which must run on CPU-only machines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import torchscope
from benchmarks._common import table

TOLERANCE_BENCH = 0.05
TOLERANCE_PROFILER = 0.10
TOLERANCE_REPEAT = 0.02


def _reference_timer(fn, *args) -> float:
    from torch.utils.benchmark import Timer

    timer = Timer(
        stmt="fn(*args)",
        globals={"fn": fn, "args": args},
        num_threads=torch.get_num_threads(),  # Timer runs on 1 thread unless told
    )
    return timer.blocked_autorange(min_run_time=1.0).median


def _reference_triton(fn, *args) -> float | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench(lambda: fn(*args), warmup=25, rep=200, return_mode="median") / 1e3


def check_benchmark() -> list[dict[str, object]]:
    device = torch.device("cuda")
    cases = {
        "matmul 8192x8192 fp16": (
            torch.mm,
            torch.randn(8192, 8192, device=device, dtype=torch.float16),
            torch.randn(8192, 8192, device=device, dtype=torch.float16),
        ),
        "matmul 4096x4096 fp32": (
            torch.mm,
            torch.randn(4096, 4096, device=device),
            torch.randn(4096, 4096, device=device),
        ),
        "conv3x3 256ch 56x56 b32": (
            torch.nn.functional.conv2d,
            torch.randn(32, 256, 56, 56, device=device),
            torch.randn(256, 256, 3, 3, device=device),
        ),
    }
    results = []
    for name, (fn, *args) in cases.items():
        ours = torchscope.benchmark(fn, *args, warmup=10, repeat=100, flush_cache=True).median
        ours_warm = torchscope.benchmark(fn, *args, warmup=10, repeat=100, flush_cache=False).median
        timer = _reference_timer(fn, *args)
        triton = _reference_triton(fn, *args)
        row: dict[str, object] = {
            "case": name,
            "torchscope_ms": ours * 1e3,
            "torchscope_no_flush_ms": ours_warm * 1e3,
            "timer_ms": timer * 1e3,
            "do_bench_ms": None if triton is None else triton * 1e3,
            "vs_timer": ours / timer - 1,
            "vs_do_bench": None if triton is None else ours / triton - 1,
        }
        row["ok"] = abs(row["vs_timer"]) <= TOLERANCE_BENCH and (
            triton is None or abs(ours / triton - 1) <= TOLERANCE_BENCH
        )
        results.append(row)
    return results


def check_profiler() -> dict[str, object]:
    from torch.profiler import ProfilerActivity, profile
    from torchvision.models import resnet50

    model = resnet50().cuda()
    x = torch.randn(32, 3, 224, 224, device="cuda")
    report = torchscope.time_layers(model, x, warmup=5, repeat=20)
    self_total = sum(row.self_time for row in report.layers)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        out = model(x)
        torch.autograd.grad(out.float().sum(), params)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    kernel_totals = []
    for _ in range(5):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernel_totals.append(
            sum(e.device_time_total for e in prof.key_averages() if e.device_time_total) / 1e6
        )
    kernels = statistics.median(kernel_totals)
    return {
        "model": "resnet50 batch 32",
        "sum_of_self_times_ms": self_total * 1e3,
        "profiler_kernel_total_ms": kernels * 1e3,
        "step_without_hooks_ms": report.step.median * 1e3,
        "coverage": report.coverage,
        "overhead_per_call_us": report.overhead_per_call * 1e6,
        "vs_profiler": self_total / kernels - 1,
        "ok": abs(self_total / kernels - 1) <= TOLERANCE_PROFILER,
    }


def check_repeatability() -> dict[str, object]:
    from torchvision.models import resnet50

    model = resnet50().cuda()
    x = torch.randn(32, 3, 224, 224, device="cuda")
    medians = [torchscope.time_layers(model, x, warmup=5, repeat=20).step.median for _ in range(3)]
    spread = (max(medians) - min(medians)) / statistics.median(medians)
    return {
        "step_medians_ms": [m * 1e3 for m in medians],
        "spread": spread,
        "ok": spread <= TOLERANCE_REPEAT,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_validate: no CUDA GPU here; run it on a GPU machine", file=sys.stderr)
        return 2
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "benchmark": check_benchmark(),
        "profiler": check_profiler(),
        "repeatability": check_repeatability(),
    }
    print(f"device: {results['device']}, torch {results['torch']}\n")
    print(
        table(
            [
                "case",
                "torchscope ms",
                "no flush ms",
                "Timer ms",
                "do_bench ms",
                "vs Timer",
                "vs do_bench",
                "ok",
            ],
            [
                [
                    r["case"],
                    f"{r['torchscope_ms']:.3f}",
                    f"{r['torchscope_no_flush_ms']:.3f}",
                    f"{r['timer_ms']:.3f}",
                    "-" if r["do_bench_ms"] is None else f"{r['do_bench_ms']:.3f}",
                    f"{100 * r['vs_timer']:+.1f}%",
                    "-" if r["vs_do_bench"] is None else f"{100 * r['vs_do_bench']:+.1f}%",
                    r["ok"],
                ]
                for r in results["benchmark"]
            ],
        )
    )
    p = results["profiler"]
    print(
        f"\nresnet50 per-layer self-time sum {p['sum_of_self_times_ms']:.2f} ms vs profiler "
        f"kernels {p['profiler_kernel_total_ms']:.2f} ms ({100 * p['vs_profiler']:+.1f}%), "
        f"coverage {100 * p['coverage']:.1f}%, overhead {p['overhead_per_call_us']:.1f} us/call"
    )
    r = results["repeatability"]
    print(f"repeat spread of step medians: {100 * r['spread']:.2f}% ({r['step_medians_ms']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    ok = all(r["ok"] for r in results["benchmark"]) and p["ok"] and r["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
