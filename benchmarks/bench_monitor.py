"""torchscope.GradientMonitor against the training-sanity checkers: which classic training bugs
each one catches, and what watching a training loop costs per step.

Run: ``python benchmarks/bench_monitor.py`` (or ``make bench``; ``--quick`` for fewer timing
rounds). Peers: torchtest 0.5, torchtest2 0.1.0 and pytest-torch 1.1.1, each when installed
(``pip install 'torchscope[bench]'``).

Catch rate: the 19 bugs planted in ``tests/bugs.py``, plus two clean setups that must raise no
alarm. torchscope watches the user's own loop (``bug.loop``). The peers run their own checks
on the bug's model, loss function, optimizer and first batch, with their full battery as their
READMEs show it; pytest-torch's ``run_training`` also runs the user's step (the bug's own loop,
as one step, where the loop itself is buggy). A peer catches a bug when one of its checks
fails.

Overhead: training steps (SGD with momentum, ``cross_entropy``, one fixed random batch) bare
and inside a ``GradientMonitor``, timed in alternating rounds; per-step medians.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
import torchscope.collect.gradients._state as monitor_state
from benchmarks._common import available_peers as _available_peers
from benchmarks._common import first_line, ratio, table
from tests.bugs import (
    BUGS,
    CLASSES,
    MLP,
    STEPS,
    Bug,
    Setup,
    SmallCNN,
    cnn_setup,
    mlp_setup,
    standard_loop,
)
from torchscope.collect.gradients.history import HISTORY_STEPS

# Clean setups, trained with the standard loop: every tool must stay quiet on them.
CLEAN = [
    Bug("clean MLP", "", "tests.bugs.mlp_setup(), standard loop", mlp_setup),
    Bug("clean SmallCNN", "", "tests.bugs.cnn_setup(), standard loop", cnn_setup),
]


@dataclass(frozen=True)
class Verdict:
    """What one tool said about one setup: did a check fail, and which."""

    caught: bool
    detail: str
    exact: bool = False  # torchscope only: the report named exactly the planted kind


Checker = Callable[[Bug], Verdict]


@dataclass
class Totals:
    caught: int = 0
    exact: int = 0
    false_alarms: int = 0
    seconds: float = 0.0


def _quietly(fn: Callable[[], Any]) -> Any:
    """Run a tool's check with its warnings and prints out of the table."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return fn()


# -- torchscope ----------------------------------------------------------------------------------


def check_torchscope(bug: Bug) -> Verdict:
    s = bug.setup()
    with torchscope.GradientMonitor(s.model, optimizer=s.optimizer, **bug.monitor) as monitor:
        _quietly(lambda: bug.loop(s))
    kinds = monitor.report().kinds
    if not bug.kind:  # a clean setup
        return Verdict(
            bool(kinds), ("false alarm: " + ", ".join(sorted(kinds))) if kinds else "quiet"
        )
    if bug.kind not in kinds:
        return Verdict(False, "missed" + (f" (found {', '.join(sorted(kinds))})" if kinds else ""))
    extra = sorted(kinds - {bug.kind})
    return Verdict(
        True,
        "caught" + (f" (+ {', '.join(extra)})" if extra else ", exact kind"),
        exact=not extra,
    )


# -- torchtest 0.5 -------------------------------------------------------------------------------
# README: assert_vars_change (every variable moves after one step), NaN and Inf checks on the
# output, an output range where the model has one. These models output unbounded logits, so
# there is no range to test.


def check_torchtest(bug: Bug) -> Verdict:
    import torchtest

    s = bug.setup()
    try:
        _quietly(
            lambda: torchtest.test_suite(
                s.model,
                s.loss_fn,
                s.optimizer,
                list(s.batches[0]),
                test_vars_change=True,
                test_nan_vals=True,
                test_inf_vals=True,
            )
        )
    except Exception as error:
        check = {
            "VariablesChangeException": "vars_change",
            "NaNTensorException": "never_nan",
            "InfTensorException": "never_inf",
        }.get(type(error).__name__, f"raised {type(error).__name__}")
        return Verdict(True, f"{check}: {first_line(error)}")
    return Verdict(False, "passed")


# -- torchtest2 0.1.0 ----------------------------------------------------------------------------
# README: check_model(model, x, y, loss_fn=, optimizer=) runs all 18 checks; assert_model_ok
# raises when one FAILs (WARN only raises with strict=True).


def check_torchtest2(bug: Bug) -> Verdict:
    import torchtest2

    s = bug.setup()
    x, y = s.batches[0]
    try:
        report = _quietly(
            lambda: torchtest2.check_model(
                s.model,
                x,
                y,
                loss_fn=s.loss_fn,
                optimizer=s.optimizer,
                output_shape=(None, CLASSES),
            )
        )
    except Exception as error:
        return Verdict(True, f"raised {type(error).__name__}: {first_line(error)}")
    failed = [r.name for r in report.failures]
    warned = [r.name for r in report.warnings]
    parts = [f"FAIL {', '.join(failed)}"] if failed else []
    parts += [f"WARN {', '.join(warned)}"] if warned else []
    return Verdict(bool(failed), "; ".join(parts) if parts else "passed")


# -- pytest-torch 1.1.1 --------------------------------------------------------------------------
# A pytest plugin whose helpers are plain functions (the "training sanity" and "training loops"
# guides); called directly here, each on the bug's setup. Its own optimizer (Adam) is used where
# the helper trains a copy, as its README does; run_training uses the user's optimizer and step.


def _pytest_torch_step(s: Setup) -> Callable[[Any, Any], Any]:
    def step(setup: Any, batch: Any) -> torch.Tensor:  # one step of tests.bugs.standard_loop
        x, y = batch
        setup.optimizer.zero_grad()
        loss = s.loss_fn(setup.model(x), y)
        loss.backward()
        setup.optimizer.step()
        return loss.detach()

    return step


def check_pytest_torch(bug: Bug) -> Verdict:
    import pytest_torch as pt

    s = bug.setup()
    x, y = s.batches[0]

    def loss(out: Any) -> torch.Tensor:
        return s.loss_fn(out, y)

    def run_user_loop() -> None:
        fresh = bug.setup()
        if bug.loop is standard_loop:
            step, steps, data = _pytest_torch_step(fresh), STEPS, fresh.batches[:STEPS]
        else:  # the user's loop is the bug: run all of it as one step of pytest-torch's runner
            step, steps, data = (lambda setup, batch: bug.loop(fresh)), 1, fresh.batches[0]
        pt.run_training(
            lambda: pt.TrainingSetup(fresh.model, fresh.optimizer), data, step, steps=steps
        ).assert_healthy()

    checks: dict[str, Callable[[], Any]] = {
        "optimizer_coverage": lambda: pt.assert_optimizer_coverage(s.model, s.optimizer),
        "gradients_finite": lambda: pt.assert_gradients_finite(s.model, x, loss),
        "all_params_receive_grad": lambda: pt.assert_all_params_receive_grad(s.model, x, loss),
        "loss_decreases": lambda: pt.assert_loss_decreases(s.model, x, loss),
        "overfits_one_batch": lambda: pt.assert_overfits_one_batch(s.model, x, loss),
        # an inference test gets the model in eval mode, as its README's `model` fixture does
        "inference_contract": lambda: pt.check_inference_contract(copy.deepcopy(s.model).eval(), x),
        "run_training.healthy": run_user_loop,
    }
    failed = []
    for name, check in checks.items():
        try:
            _quietly(check)
        except AssertionError:
            failed.append(name)
        except Exception as error:
            failed.append(f"{name} raised {type(error).__name__}")
    return Verdict(bool(failed), f"FAIL {', '.join(failed)}" if failed else "passed")


PEERS: dict[str, tuple[str, str, Checker]] = {
    # display name: (distribution, module, checker)
    "torchtest": ("torchtest", "torchtest", check_torchtest),
    "torchtest2": ("torchtest2", "torchtest2", check_torchtest2),
    "pytest-torch": ("pytest-torch", "pytest_torch", check_pytest_torch),
}


def available_peers() -> dict[str, Checker | str]:
    """Each peer's checker, or why it cannot run; imported here so import time is not timed."""
    return _available_peers(PEERS, missing="not installed (pip install 'torchscope[bench]')")


def catch_rate(tools: dict[str, Checker | str]) -> tuple[list[list[str]], dict[str, Totals]]:
    """The table rows, and per tool that ran: bugs caught, exact kinds, false alarms, seconds."""
    totals = {name: Totals() for name, checker in tools.items() if not isinstance(checker, str)}
    rows = []
    for bug in [*BUGS, *CLEAN]:
        row = [bug.name, bug.kind or "(none: clean)"]
        for name, checker in tools.items():
            if isinstance(checker, str):
                row.append("not run")
                continue
            start = time.perf_counter()
            try:
                verdict = checker(bug)
            except Exception as error:  # the tool itself broke: say so, keep going
                verdict = Verdict(True, f"raised {type(error).__name__}: {first_line(error)}")
            tally = totals[name]
            tally.caught += verdict.caught and bool(bug.kind)
            tally.exact += verdict.exact
            tally.false_alarms += verdict.caught and not bug.kind
            tally.seconds += time.perf_counter() - start
            row.append(verdict.detail)
        rows.append(row)
    return rows, totals


# -- overhead ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverheadCase:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    classes: int
    steps: int  # per round, each way
    rounds: int
    loader: bool = False  # batches from a shuffling DataLoader (else one fixed batch)


def overhead_cases(quick: bool) -> list[OverheadCase]:
    rounds = 3 if quick else 5
    return [
        OverheadCase("MLP (tests.bugs), batch 64", MLP, (64, 10), CLASSES, 50, rounds),
        OverheadCase(
            "MLP, batch 64 from a DataLoader", MLP, (64, 10), CLASSES, 50, rounds, loader=True
        ),
        OverheadCase(
            "SmallCNN (tests.bugs), batch 16 at 3x32x32",
            SmallCNN,
            (16, 3, 32, 32),
            CLASSES,
            20,
            rounds,
        ),
        *(
            OverheadCase(
                f"resnet18, batch 16 at 3x{side}x{side}",
                torchvision.models.resnet18,
                (16, 3, side, side),
                1000,
                steps,
                # the smaller step is the one whose ratio the load moves most
                rounds if side == 224 else 3 * rounds,
            )
            for side, steps in ((64, 5 if quick else 10), (224, 3 if quick else 5))
        ),
    ]


@contextlib.contextmanager
def _past_the_first_steps() -> Iterator[None]:
    """The monitor as it runs after the first ``MEASURE_EVERY_STEP`` steps of a ``with``
    block (tensor statistics on every ``MEASURE_STRIDE``-th step), from its first step: the
    stride starts at step 0. The same work per step as a long run's, without running
    hundreds of steps of resnet18 per round."""
    before = monitor_state.MEASURE_EVERY_STEP
    monitor_state.MEASURE_EVERY_STEP = 0
    try:
        yield
    finally:
        monitor_state.MEASURE_EVERY_STEP = before


def _batches(case: OverheadCase, g: torch.Generator) -> Iterator[tuple[Any, ...]]:
    """Endless batches of a shuffling DataLoader over 20 batches' worth of samples (the
    usual loop: the loader indexes and stacks every sample between two steps)."""
    samples = 20 * case.input_shape[0]
    inputs = torch.randn((samples, *case.input_shape[1:]), generator=g)
    # labels the inputs decide: a healthy run that learns, with nothing to report
    data = TensorDataset(inputs, inputs.flatten(1)[:, : case.classes].argmax(dim=1))
    loader = DataLoader(data, batch_size=case.input_shape[0], shuffle=True, generator=g)
    while True:
        yield from loader


def overhead(case: OverheadCase, *, warmup: int = 3) -> dict[str, Any]:
    """Per-step times bare and monitored (the first steps of a ``with`` block, and past its
    first 100), in rotating rounds on the same model and batch."""
    torch.manual_seed(0)
    model = case.build().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.input_shape, generator=g)
    y = torch.randint(0, case.classes, (case.input_shape[0],), generator=g)
    batches = _batches(case, g) if case.loader else itertools.repeat((x, y))

    def train(steps: int) -> None:
        for _ in range(steps):
            x, y = next(batches)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    def monitored(steps: int) -> tuple[float, float, float, set[str]]:
        start = time.perf_counter()
        with torchscope.GradientMonitor(model, optimizer=optimizer) as monitor:
            entered = time.perf_counter()
            train(steps)
            done = time.perf_counter()
        report = monitor.report()
        reported = time.perf_counter()
        return entered - start, (done - entered) / steps, reported - done, report.kinds

    def steady(steps: int) -> float:
        with _past_the_first_steps(), torchscope.GradientMonitor(model, optimizer=optimizer):
            train(1)  # step 0: measured, like every 10th
            start = time.perf_counter()
            train(steps)
            return (time.perf_counter() - start) / steps

    train(warmup)
    monitored(warmup)
    steady(warmup)
    bare, watched, after, enter, report = [], [], [], [], []
    kinds: set[str] = set()
    for i in range(case.rounds):
        for which in [(0, 1, 2), (1, 2, 0), (2, 0, 1)][i % 3]:  # rotate who goes first
            if which == 0:
                start = time.perf_counter()
                train(case.steps)
                bare.append((time.perf_counter() - start) / case.steps)
            elif which == 1:
                entered, per_step, reported, found = monitored(case.steps)
                enter.append(entered)
                watched.append(per_step)
                report.append(reported)
                kinds |= found
            else:
                after.append(steady(case.steps))
    return {
        "bare": bare,
        "monitored": watched,
        "after": after,
        "enter": statistics.median(enter),
        "report": statistics.median(report),
        "kinds": kinds,
    }


def _spread(values: list[float]) -> str:
    """Median ms with the range of the rounds."""
    return f"{statistics.median(values) * 1e3:,.1f} ({min(values) * 1e3:,.1f}-{max(values) * 1e3:,.1f})"


def _paired(watched: list[float], bare: list[float]) -> float:
    """The median over rounds of each round's watched/bare step time."""
    return statistics.median(w / b for w, b in zip(watched, bare, strict=True))


def overhead_table(quick: bool) -> tuple[list[list[str]], dict[str, float]]:
    rows, ratios = [], {}
    for case in overhead_cases(quick):
        result = overhead(case)
        # each round runs its three variants back to back: the ratio within a round is
        # immune to load that drifts from round to round, and its median over the rounds is
        # what the table gives
        watched = _paired(result["monitored"], result["bare"])
        after = _paired(result["after"], result["bare"])
        ratios[case.name] = after
        rows.append(
            [
                case.name,
                f"{case.rounds} x {case.steps}",
                _spread(result["bare"]),
                f"{_spread(result['monitored'])}, {ratio(watched, 1.0)}",
                f"{_spread(result['after'])}, {ratio(after, 1.0)}",
                f"{result['enter'] * 1e3:,.1f}",
                f"{result['report'] * 1e3:,.1f}",
                ", ".join(sorted(result["kinds"])) or "none",
            ]
        )
    return rows, ratios


def _resident_mb() -> float:
    """This process's resident memory (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def scaling(steps: int, block: int) -> list[list[str]]:
    """One ``with`` block over ``steps`` steps of the MLP: ms per step and resident memory
    after each ``block`` of steps (the process's, and its change since the block was
    entered: the allocator may hand back what earlier benchmarks freed, so the change can be
    negative; flat is what matters), then the time of ``report()``."""
    torch.manual_seed(0)
    model = MLP().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 10, generator=g)
    y = torch.randint(0, CLASSES, (64,), generator=g)
    rows = []
    with torchscope.GradientMonitor(model, optimizer=optimizer) as monitor:
        base = _resident_mb()
        for done in range(block, steps + 1, block):
            start = time.perf_counter()
            for _ in range(block):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            per_step = (time.perf_counter() - start) / block
            resident = _resident_mb()
            rows.append(
                [
                    f"{done:,}",
                    f"{per_step * 1e3:.3f}",
                    f"{resident:,.1f}",
                    f"{resident - base:+.1f}",
                ]
            )
    start = time.perf_counter()
    monitor.report()
    rows.append(["report()", f"{(time.perf_counter() - start) * 1e3:,.0f} ms once", ""])
    return rows


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and steps")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    print(
        f"# GradientMonitor vs training-sanity checkers (torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads)\n"
    )
    print(
        f"## Catch rate: {len(BUGS)} planted bugs (tests/bugs.py) and {len(CLEAN)} clean setups\n"
    )
    ours = f"torchscope {torchscope.__version__}"
    tools: dict[str, Checker | str] = {ours: check_torchscope, **available_peers()}
    rows, totals = catch_rate(tools)
    print(table(["bug", "expected kind", *tools], rows))
    print()
    summary = []
    for name, checker in tools.items():
        if isinstance(checker, str):
            summary.append([name, checker, "", "", ""])
            continue
        tally = totals[name]
        summary.append(
            [
                name,
                f"caught {tally.caught}/{len(BUGS)}",
                f"{tally.exact}/{len(BUGS)}" if name == ours else "n/a",
                f"{tally.false_alarms}/{len(CLEAN)}",
                f"{tally.seconds:.2f}",
            ]
        )
    print(
        table(
            ["tool", "bugs", "exact kind named", "false alarms (clean)", "seconds, all cases"],
            summary,
        )
    )
    loop_bugs = [b.name for b in BUGS if b.loop is not standard_loop]
    print(
        "\nA peer's catch means one of its checks failed on that setup; the check shown may point "
        "at a side effect rather than the planted bug (read its name).\n"
        f"Bugs in the loop itself ({', '.join(loop_bugs)}) are invisible to checkers that run "
        "their own training step; of the peers, only pytest-torch's run_training runs the user's "
        "loop.\ntorchtest's output-range check is not used: the models output unbounded logits. "
        "Its never_inf check (0.5) fails only when every output value is infinite.\n"
    )

    load = os.getloadavg()[0]
    print(
        "## Overhead: one training step (SGD momentum, cross_entropy, a fixed batch unless "
        "said), "
        "bare vs inside GradientMonitor\n"
    )
    rows, ratios = overhead_table(args.quick)
    print(
        table(
            [
                "model",
                "rounds x steps",
                "bare ms/step (range)",
                "monitored, first 100 steps",
                "monitored, after step 100",
                "enter ms",
                "report() ms",
                "findings",
            ],
            rows,
        )
    )
    print(
        "\nTimes: medians of per-round means (range over rounds); ratios: the median over "
        "rounds of each round's monitored/bare (a round runs the three back to back); 3 "
        "warm-up steps each way; rounds rotate which goes first. 'First 100 steps': a fresh with block, where every step takes the tensor "
        "statistics; 'after step 100': every 10th does (the stride started at step 0, the "
        "same work per step as a long run's past its 100th). Load average "
        f"(1 min, this run included): {load:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after.\n"
    )

    steps = 4_000 if args.quick else 20_000
    print(f"## Scaling: one with block over {steps:,} steps of the MLP (tests.bugs), batch 64\n")
    print(
        table(
            ["steps done", "ms/step in the block", "resident MB", "since entry"],
            scaling(steps, steps // 10),
        )
    )
    print(
        f"\nEvery per-step series keeps at most {HISTORY_STEPS:,} steps, evenly spaced over the "
        "run (history.py); what it drops is folded into exact counts and the first non-finite "
        "value of each kind. Resident memory levels off once the run passes that many steps.\n"
    )

    mine = totals[ours]
    resnet = next(value for name, value in ratios.items() if name.startswith("resnet18"))
    peers = "; ".join(
        f"{name} {totals[name].caught}/{len(BUGS)}" if name in totals else f"{name} not run"
        for name in tools
        if name != ours
    )
    print(
        f"Headline: torchscope caught {mine.caught}/{len(BUGS)} (exact kind {mine.exact}/"
        f"{len(BUGS)}, false alarms {mine.false_alarms}/{len(CLEAN)}); {peers}; resnet18 bs16 "
        f"CPU step overhead past the first 100 steps {resnet:.2f}x (target <= 1.05x). "
        f"Bench time {time.perf_counter() - began:.0f} s."
    )
    headline = {
        f"{name}: bugs caught, false alarms": (
            f"{totals[name].caught}/{len(BUGS)}, {totals[name].false_alarms}/{len(CLEAN)}"
            if name in totals
            else str(tools[name])
        )
        for name in tools
    }
    headline[f"{ours}: exact kind named"] = f"{mine.exact}/{len(BUGS)}"
    for name, value in ratios.items():
        headline[f"monitored/bare step time after step 100, {name}"] = f"{value:.2f}x"
    return headline


if __name__ == "__main__":
    main()
