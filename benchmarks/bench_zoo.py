"""The training zoo (tests/training_zoo/): what GradientMonitor, a hand-written before/after probe
and the training-sanity peers each catch, and where each cries wolf.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_zoo`` (``--quick`` for a subset,
``--only NAME,...`` for some scenarios). Peers: torchtest 0.5, torchtest2 0.1.0, pytest-torch
1.1.1, each when installed (``pip install -c constraints.txt -e '.[bench]'``).

Every bug scenario runs twice (the bug and its fixed twin), every correct script once, per tool:

- **torchscope**: ``harness.run``, the zoo's own judge. *Named*: an error or warning of the
  scenario's kind at its place. *Flagged*: any error or warning. A false alarm is any error or
  warning on a twin or a correct script.
- **probe**: what a user writes in 60 lines around the same loop: snapshot the trainable
  parameters on entry; on exit flag each one whose ``.grad`` is None, whose grad or value is not
  finite, or whose value is bit-identical to the snapshot. It *catches* a bug when it flags
  something on the bug run that it does not flag on the twin; any flag on a twin or a correct
  script is a false alarm.
- **peers**: their own checks, as in bench_monitor.py, on the model and optimizer handed to
  ``watch`` (deep-copied as they were on entry) and the first batch of the run. The first batch
  is the arguments of the model's first call inside ``watch``; the loss is the user's own: the
  torch calls from the model's output (and the parameters) to the tensor of the first
  ``backward()`` are recorded and replayed on a new output, with the batch's other tensors
  (targets, masks) as they were. Where this cannot be done (the model is never called, is called
  twice before the first backward, takes both positional and keyword arguments, cannot be
  copied), the peers are *not applicable* to that scenario and it is counted apart. A peer flags
  a run when one of its checks fails or raises.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import available_peers as _available_peers
from benchmarks._common import first_line, quietly, table
from tests.training_zoo.harness import Scenario, load_all, run

#: steps of pytest-torch's run_training on the first batch (bench_monitor.py uses the same)
RUN_STEPS = 8


class NotApplicable(Exception):
    """The peers cannot be given this scenario's batch or loss; the message says why."""


# -- the probe's watch, which also captures the first batch and loss for the peers -------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, so that NaN compares equal to the same NaN."""
    return t.detach().contiguous().view(-1).view(torch.uint8)


class _LossRecorder(TorchFunctionMode):
    """Records the torch calls outside the model that lead from its first output to the loss."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        cap = self.capture
        if not cap.recording or cap.depth:
            return func(*args, **kwargs)
        if func in (torch.Tensor.backward, torch.autograd.backward):
            cap.recording = False
            loss = args[0] if args else kwargs.get("tensors")
            if isinstance(loss, (list, tuple)):
                loss = loss[0] if len(loss) == 1 else None
            if not isinstance(loss, torch.Tensor) or id(loss) not in cap.tracked:
                cap.why_not = "the first backward() is not on a tensor computed from the output"
            else:
                cap.loss_id = id(loss)
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        if any(isinstance(a, torch.Tensor) and id(a) in cap.tracked for a in leaves):
            cap.calls.append((func, args, kwargs, result))
            for r in tree_flatten(result)[0]:
                if isinstance(r, torch.Tensor):
                    cap.tracked.add(id(r))
        return result


class Capture:
    """The ``watch`` of the probe: snapshots on entry, flags on exit, captures the first step."""

    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.start: tuple[torch.nn.Module, Any] | None = None
        self.names: dict[int, str] = {}  # id(original parameter) -> its name
        self.inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.output: Any = None
        self.calls: list[tuple[Any, Any, Any, Any]] = []
        self.tracked: set[int] = set()
        self.loss_id: int | None = None
        self.recording = False
        self.depth = 0
        self.forwards = 0
        self.why_not: str | None = None
        self.opened = False
        self.modes: dict[str, bool] = {}  # training flags and requires_grad at the first call
        self.grads: dict[str, bool] = {}

    # the model's own calls are not recorded; the first one gives the batch and the output
    def _pre(self, module: torch.nn.Module, args: Any, kwargs: Any) -> None:
        self.depth += 1
        if self.recording or self.inputs is None:
            self.forwards += 1
        if self.inputs is None:
            clone = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
            self.inputs = (tree_map(clone, tuple(args)), tree_map(clone, dict(kwargs)))
            # the loop may call model.train() or freeze parameters after entering watch()
            self.modes = {n: m.training for n, m in module.named_modules()}
            self.grads = {n: p.requires_grad for n, p in module.named_parameters()}
            self.recording = True

    def _post(self, module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self.depth -= 1
        if self.depth == 0 and self.output is None and self.inputs is not None:
            self.output = output
            self.tracked.update(
                id(t) for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)
            )

    @contextlib.contextmanager
    def __call__(self, model: torch.nn.Module, optimizer: Any = None, **_: Any) -> Iterator[Any]:
        if self.opened:
            raise RuntimeError("a zoo scenario opens watch() once")
        self.opened = True
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        before = {n: _bits(p).clone() for n, p in trainable.items()}
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.tracked.update(self.names)
        try:
            self.start = copy.deepcopy((model, optimizer))
        except Exception as error:
            self.why_not = f"the model or optimizer cannot be copied ({type(error).__name__})"
        handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True, always_call=True),
        ]
        try:
            with _LossRecorder(self):
                yield self
        finally:
            for handle in handles:
                handle.remove()
        for name, p in trainable.items():
            if p.grad is None:
                self.flags.add(f"no grad: {name}")
            elif not torch.isfinite(
                p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            ).all():
                self.flags.add(f"non-finite grad: {name}")
            if not torch.isfinite(p.detach()).all():
                self.flags.add(f"non-finite value: {name}")
            if torch.equal(_bits(p), before[name]):
                self.flags.add(f"unchanged: {name}")

    # -- what the peers get --------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why the peers cannot run on this scenario, or None."""
        if self.why_not:
            return self.why_not
        if self.inputs is None:
            return "the watched model is never called"
        if self.forwards > 1:
            return "the model is called more than once before the first backward()"
        if self.loss_id is None:
            return "no backward() after the model's first call"
        args, kwargs = self.inputs
        if args and kwargs:
            return "the model takes positional and keyword arguments"
        return None

    def batch(self) -> Any:
        """The first batch as the peers take it: a tensor, a tuple of arguments or a dict."""
        args, kwargs = self.inputs or ((), {})
        return kwargs if kwargs else (args[0] if len(args) == 1 else args)

    def fresh(self) -> tuple[torch.nn.Module, Any, Callable[[Any], torch.Tensor]]:
        """A copy of the model and optimizer as on entry (modes as at the first call), and the
        user's loss for it."""
        model, optimizer = copy.deepcopy(self.start)  # type: ignore[misc]
        if isinstance(optimizer, torch.optim.LBFGS):  # Optimizer.__getstate__ drops these two
            optimizer._params = optimizer.param_groups[0]["params"]
            optimizer._numel_cache = None
        for name, module in model.named_modules():
            module.training = self.modes.get(name, module.training)
        params = dict(model.named_parameters())
        for name, param in params.items():
            param.requires_grad_(self.grads.get(name, param.requires_grad))
        seeds = {pid: params[name] for pid, name in self.names.items() if name in params}
        first = tree_flatten(self.output)[0]

        def loss_fn(output: Any) -> torch.Tensor:
            leaves = tree_flatten(output)[0]
            if len(leaves) != len(first):
                raise NotApplicable("the output's structure differs from the recorded one")
            env: dict[int, Any] = dict(seeds)
            env.update({id(a): b for a, b in zip(first, leaves, strict=True)})
            swap = lambda t: env.get(id(t), t) if isinstance(t, torch.Tensor) else t  # noqa: E731
            for func, args, kwargs, result in self.calls:
                again = func(*tree_map(swap, args), **tree_map(swap, kwargs))
                for old, new in zip(tree_flatten(result)[0], tree_flatten(again)[0], strict=False):
                    if isinstance(old, torch.Tensor):
                        env[id(old)] = new
            return env[self.loss_id]  # type: ignore[index]

        return model, optimizer, loss_fn


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)
    random.seed(seed)


def probe_run(scenario: Scenario, *, bug: bool) -> Capture:
    """Run one scenario under the probe's watch, from the seed harness.run uses."""
    _seeded()
    capture = Capture()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scenario.correct:
            scenario.main(capture)
        else:
            scenario.main(capture, bug=bug)
    return capture


# -- the peers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    detail: str
    applicable: bool = True


def check_torchtest(cap: Capture) -> Verdict:
    import torchtest

    x = cap.batch()
    if not isinstance(x, torch.Tensor):
        raise NotApplicable("torchtest calls model(x) with one tensor")
    if not isinstance(cap.output, torch.Tensor):
        raise NotApplicable("torchtest checks one output tensor")
    model, optimizer, loss_fn = cap.fresh()
    if optimizer is None:
        raise NotApplicable("torchtest needs the optimizer; watch() was given none")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise NotApplicable("torchtest calls optimizer.step() without a closure")
    try:
        quietly(
            lambda: torchtest.test_suite(
                model,
                lambda out, _target: loss_fn(out),
                optimizer,
                [x, torch.zeros(0)],  # the loss keeps its own targets
                test_vars_change=True,
                test_nan_vals=True,
                test_inf_vals=True,
            )
        )
    except NotApplicable:
        raise
    except Exception as error:
        return Verdict(True, f"{type(error).__name__}: {first_line(error, 50)}")
    return Verdict(False, "passed")


def check_torchtest2(cap: Capture) -> Verdict:
    import torchtest2

    model, optimizer, loss_fn = cap.fresh()
    try:
        report = quietly(
            lambda: torchtest2.check_model(model, cap.batch(), loss_fn=loss_fn, optimizer=optimizer)
        )
    except NotApplicable:
        raise
    except Exception as error:
        return Verdict(True, f"raised {type(error).__name__}: {first_line(error, 50)}")
    failed = [r.name for r in report.failures]
    return Verdict(bool(failed), f"FAIL {', '.join(failed)}" if failed else "passed")


def check_pytest_torch(cap: Capture) -> Verdict:
    import pytest_torch as pt

    x = cap.batch()

    def run_training() -> None:
        model, optimizer, loss_fn = cap.fresh()

        def step(setup: Any, batch: Any) -> torch.Tensor:
            def closure() -> torch.Tensor:  # a closure, so that LBFGS steps too
                setup.optimizer.zero_grad()
                loss = loss_fn(pt.utils.call_model(setup.model, batch))
                loss.backward()
                return loss

            return setup.optimizer.step(closure).detach()

        pt.run_training(
            lambda: pt.TrainingSetup(model, optimizer), [x], step, steps=RUN_STEPS
        ).assert_healthy()

    def on_fresh(fn: Callable[..., Any]) -> Callable[[], Any]:
        def check() -> Any:
            model, optimizer, loss_fn = cap.fresh()
            return fn(model, optimizer, loss_fn)

        return check

    checks: dict[str, Callable[[], Any]] = {
        "gradients_finite": on_fresh(lambda m, o, loss: pt.assert_gradients_finite(m, x, loss)),
        "all_params_receive_grad": on_fresh(
            lambda m, o, loss: pt.assert_all_params_receive_grad(m, x, loss)
        ),
        "loss_decreases": on_fresh(lambda m, o, loss: pt.assert_loss_decreases(m, x, loss)),
        "overfits_one_batch": on_fresh(lambda m, o, loss: pt.assert_overfits_one_batch(m, x, loss)),
        "inference_contract": on_fresh(lambda m, o, loss: pt.check_inference_contract(m.eval(), x)),
    }
    if cap.start is not None and cap.start[1] is not None:
        checks["optimizer_coverage"] = on_fresh(
            lambda m, o, loss: pt.assert_optimizer_coverage(m, o)
        )
        checks["run_training.healthy"] = run_training
    failed = []
    for name, check in checks.items():
        try:
            quietly(check)
        except NotApplicable:
            raise
        except AssertionError:
            failed.append(name)
        except Exception as error:
            failed.append(f"{name} raised {type(error).__name__}")
    return Verdict(bool(failed), f"FAIL {', '.join(failed)}" if failed else "passed")


PEERS: dict[str, tuple[str, str, Callable[[Capture], Verdict]]] = {
    # display name: (distribution, module, checker)
    "torchtest": ("torchtest", "torchtest", check_torchtest),
    "torchtest2": ("torchtest2", "torchtest2", check_torchtest2),
    "pytest-torch": ("pytest-torch", "pytest_torch", check_pytest_torch),
}


def available_peers() -> dict[str, Callable[[Capture], Verdict] | str]:
    """Each peer's checker, or why it cannot run."""
    return _available_peers(PEERS)


def peer_verdict(checker: Callable[[Capture], Verdict], cap: Capture) -> Verdict:
    why = cap.problem()
    if why:
        return Verdict(False, f"n/a: {why}", applicable=False)
    _seeded()
    try:
        return checker(cap)
    except NotApplicable as error:
        return Verdict(False, f"n/a: {error}", applicable=False)
    except Exception as error:  # the harness itself broke on this peer: say so, count as n/a
        return Verdict(
            False,
            f"n/a: bench error {type(error).__name__}: {first_line(error, 50)}",
            applicable=False,
        )


# -- tallies ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    named: int = 0  # torchscope only: the scenario's kind at its place
    flagged: int = 0  # anything on the bug run
    caught: int = 0  # something on the bug run that is not on its twin
    twin_alarms: int = 0
    correct_alarms: int = 0
    bugs: int = 0  # bug scenarios it could run on
    twins: int = 0
    corrects: int = 0
    not_applicable: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flags(flags: set[str]) -> str:
    if not flags:
        return "quiet"
    kinds: dict[str, int] = {}
    for f in flags:
        kind = f.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))


def bench_scenario(
    scenario: Scenario,
    peers: dict[str, Callable[[Capture], Verdict] | str],
    tallies: dict[str, Tally],
) -> str:
    """Run one scenario (and its twin) with every tool; update the tallies; one line back."""
    runs = [False] if scenario.correct else [True, False]
    parts = []

    start = time.perf_counter()
    outcomes = {b: run(scenario, bug=b) for b in runs}
    t = tallies["torchscope"]
    t.seconds += time.perf_counter() - start
    if scenario.correct:
        t.corrects += 1
        alarm = outcomes[False].false_alarm
        t.correct_alarms += alarm
        parts.append("torchscope " + ("FALSE ALARM" if alarm else "quiet"))
    else:
        bug, twin = outcomes[True], outcomes[False]
        t.bugs += 1
        t.twins += 1
        t.named += bug.detected
        t.flagged += bool(bug.severe)
        kinds = lambda o: {(f.kind, f.where) for f in o.severe}  # noqa: E731
        t.caught += bool(kinds(bug) - kinds(twin))
        t.twin_alarms += twin.false_alarm
        verdict = "named" if bug.detected else ("flagged" if bug.severe else "MISSED")
        parts.append(f"torchscope {verdict}/twin {'ALARM' if twin.false_alarm else 'quiet'}")

    start = time.perf_counter()
    caps = {b: probe_run(scenario, bug=b) for b in runs}
    p = tallies["probe"]
    p.seconds += time.perf_counter() - start
    if scenario.correct:
        p.corrects += 1
        p.correct_alarms += bool(caps[False].flags)
        parts.append(f"probe {_flags(caps[False].flags)}")
    else:
        new = caps[True].flags - caps[False].flags
        p.bugs += 1
        p.twins += 1
        p.flagged += bool(caps[True].flags)
        p.caught += bool(new)
        p.twin_alarms += bool(caps[False].flags)
        parts.append(
            f"probe {'caught' if new else 'missed'} ({_flags(new)})"
            f"/twin {_flags(caps[False].flags)}"
        )

    for name, checker in peers.items():
        if isinstance(checker, str):
            continue
        tally = tallies[name]
        start = time.perf_counter()
        verdicts = {b: peer_verdict(checker, caps[b]) for b in runs}
        tally.seconds += time.perf_counter() - start
        if not all(v.applicable for v in verdicts.values()):
            why = next(v.detail for v in verdicts.values() if not v.applicable)
            tally.not_applicable.append(scenario.name)
            parts.append(f"{name} {why}")
            continue
        if scenario.correct:
            tally.corrects += 1
            tally.correct_alarms += verdicts[False].flagged
            parts.append(f"{name} {_short(verdicts[False].detail)}")
        else:
            bug_v, twin_v = verdicts[True], verdicts[False]
            tally.bugs += 1
            tally.twins += 1
            tally.flagged += bug_v.flagged
            tally.caught += bug_v.flagged and bug_v.detail != twin_v.detail
            tally.twin_alarms += twin_v.flagged
            parts.append(f"{name} {_short(bug_v.detail)}/twin {_short(twin_v.detail)}")
    label = "correct" if scenario.correct else "bug"
    return f"{scenario.name} [{label}]: " + " | ".join(parts)


def _of(a: int, b: int) -> str:
    return f"{a}/{b} ({a / b:.0%})" if b else "-"


def summary_rows(
    tallies: dict[str, Tally], peers: dict[str, Callable[[Capture], Verdict] | str]
) -> list[list[str]]:
    rows = []
    for name, t in tallies.items():
        rows.append(
            [
                name,
                _of(t.named, t.bugs) if name == "torchscope" else "n/a",
                _of(t.flagged, t.bugs),
                _of(t.caught, t.bugs),
                _of(t.twin_alarms, t.twins),
                _of(t.correct_alarms, t.corrects),
                str(len(t.not_applicable)),
                f"{t.seconds:.0f}",
            ]
        )
    for name, why in peers.items():
        if isinstance(why, str):
            rows.append([name, why, "", "", "", "", "", ""])
    return rows


# -- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one scenario in eight")
    parser.add_argument("--only", help="comma-separated scenario names")
    args, _ = parser.parse_known_args(argv)
    scenarios = load_all()
    names = sorted(scenarios)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    elif args.quick:
        names = names[::8]
    peers = available_peers()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as python -m tests.training_zoo: the zoo's figures assume it
    began = time.perf_counter()
    print(
        f"# Training zoo: torchscope {torchscope.__version__}, a before/after probe and the peers "
        f"(torch {torch.__version__}, {platform.machine()}, 1 thread)\n"
    )
    tallies = {"torchscope": Tally(), "probe": Tally()}
    tallies.update(
        {name: Tally() for name, checker in peers.items() if not isinstance(checker, str)}
    )
    try:
        for name in names:
            print(bench_scenario(scenarios[name], peers, tallies), flush=True)
    finally:
        torch.set_num_threads(threads)
    bugs = sum(not scenarios[n].correct for n in names)
    print(
        f"\n## {bugs} bugs with their fixed twins, {len(names) - bugs} correct scripts "
        f"({time.perf_counter() - began:.0f} s)\n"
    )
    print(
        table(
            [
                "tool",
                "bugs named (kind and place)",
                "bug runs flagged",
                "flagged, and not as on the twin",
                "false alarms: twins",
                "false alarms: correct",
                "not applicable",
                "seconds",
            ],
            summary_rows(tallies, peers),
        )
    )
    for name, t in tallies.items():
        if t.not_applicable:
            print(f"\n{name}: not applicable to {', '.join(t.not_applicable)}")
    print(
        "\nA peer's or the probe's flag says that something looks wrong, not what; only "
        "torchscope's findings name a kind and a place. 'flagged, and not as on the twin' counts "
        "bug runs whose flags differ from the fixed twin's (the probe's 'catch'); a user has no "
        "twin to compare with. The peers check the first batch from the start state: bugs that "
        "appear later in training (a schedule, a rare batch) are out of their reach."
    )
    headline = {}
    for name, t in tallies.items():
        headline[f"{name}: bugs flagged (not as on twin), false alarms twins/correct"] = (
            f"{t.caught}/{t.bugs}, {t.twin_alarms}/{t.twins}, {t.correct_alarms}/{t.corrects}"
        )
    headline["torchscope: zoo bugs named"] = f"{tallies['torchscope'].named}/{bugs}"
    return headline


if __name__ == "__main__":
    main()
