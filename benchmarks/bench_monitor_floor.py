"""What GradientMonitor's hooks cost on a small step before they do anything: an ablation.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_monitor_floor.py`` (``--rounds N``, 7 by
default).

The loop: the MLP of ``tests/bugs.py`` on one fixed batch of 64 (SGD with momentum,
``cross_entropy``), about 0.6 ms a step on one CPU thread, past the first 100 steps (the
whole-tensor statistics on every 10th). In one process, in alternating rounds of 300 steps,
it runs bare, inside the monitor as it is, and inside the monitor with some of its hooks
replaced by ones that do nothing (the mode is still entered and left around each step):

- every hook a no-op: what calling the hooks costs (module pre/post hooks, gradient hooks,
  the optimizer's pre/post hooks, the function mode's watched calls; the mode rests through
  the forward and wakes for the loss and backward(), as the monitor's does off the stride);
  and the same with the mode never woken: what its pass-through of the loss's and
  backward()'s calls costs;
- the forward's hooks a no-op (module pre/post hooks and ReLU sites): what the rest costs;
- without the max |grad| row off the stride, or without the module output maxima: what each of
  those per-step parts costs.

The ablations monkeypatch private methods; they measure, they are not ways to run the
monitor (its findings need every part). Ratios are to the bare loop of the same round.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope.collect.gradients._state as state
from benchmarks._common import table
from tests.bugs import CLASSES, MLP
from torchscope.collect.gradients.monitor import GradientMonitor

STEPS = 300


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def _post_hook_waking(monitor: Any, info: Any, output: Any) -> None:
    if info.module is monitor._model:
        monitor._wake()  # as the monitor does: the mode is back for the loss and backward()


def _step_pre_leaving(monitor: Any, optimizer: Any, args: Any, kwargs: Any) -> None:
    monitor._mode_off()


def _step_post_resting(monitor: Any, optimizer: Any, args: Any, kwargs: Any) -> None:
    monitor._rest()


def _max_grad_on_the_stride_only(original: Callable[..., Any]) -> Callable[..., Any]:
    def row(monitor: Any, *, from_step: bool, weights: Any = None, measured: bool = True) -> Any:
        if not measured:
            return None
        return original(monitor, from_step=from_step, weights=weights, measured=measured)

    return row


def _after_forward_without_maxima(monitor: Any, info: Any, output: Any) -> None:
    if monitor._stack and monitor._stack[-1].info is info:
        monitor._stack.pop()
    monitor._last_finished = info.path
    if info.module is monitor._model:
        monitor._end_forward()


def variants() -> dict[str, dict[str, Callable[..., Any]]]:
    forward = {
        "_on_forward_pre": _nothing,
        "_on_forward": _post_hook_waking,
        "_on_relu": _nothing,
    }
    hooks = {
        **forward,
        "_on_gradient": _nothing,
        "_on_step_pre": _step_pre_leaving,
        "_on_step_post": _step_post_resting,
        "_on_backward_call": _nothing,
        "_on_classification_loss": _nothing,
    }
    return {
        "the monitor as it is": {},
        "every hook a no-op": hooks,
        "every hook a no-op, the mode never woken": {**hooks, "_on_forward": _nothing},
        "the forward's hooks a no-op": forward,
        "without the max |grad| row off the stride": {
            "_gradient_row": _max_grad_on_the_stride_only(GradientMonitor._gradient_row)
        },
        "without the module output maxima": {"_after_forward": _after_forward_without_maxima},
    }


def run(rounds: int) -> list[list[str]]:
    torch.manual_seed(0)
    model = MLP().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 10), torch.randint(0, CLASSES, (64,))

    def loop(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - start) / steps

    cases = variants()
    originals = {name: getattr(GradientMonitor, name) for patch in cases.values() for name in patch}
    seconds: dict[str, list[float]] = {"bare": [], **{name: [] for name in cases}}
    every, state.MEASURE_EVERY_STEP = state.MEASURE_EVERY_STEP, 0  # past step 100
    try:
        loop(100)
        for _ in range(rounds):
            loop(20)
            seconds["bare"].append(loop(STEPS))
            for name, patch in cases.items():
                for attribute, original in originals.items():
                    setattr(GradientMonitor, attribute, patch.get(attribute, original))
                with GradientMonitor(model, optimizer=opt):
                    loop(20)
                    seconds[name].append(loop(STEPS))
    finally:
        state.MEASURE_EVERY_STEP = every
        for attribute, original in originals.items():
            setattr(GradientMonitor, attribute, original)
    bare = sorted(seconds["bare"])
    rows = []
    for name, values in seconds.items():
        values = sorted(values)
        middle = len(values) // 2
        rows.append(
            [
                name,
                f"{values[0] * 1e6:.0f}",
                f"{values[middle] * 1e6:.0f}",
                f"{values[0] / bare[0]:.2f}x",
                f"{values[middle] / bare[middle]:.2f}x",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(
        f"## GradientMonitor's hooks on the MLP's fixed-batch step (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of {STEPS} steps)\n"
    )
    print(
        table(
            ["loop", "min µs/step", "median µs/step", "ratio (min)", "ratio (median)"],
            run(args.rounds),
        )
    )


if __name__ == "__main__":
    main()
