"""``python -m tests.training_zoo [--compiled BACKEND] [NAME ...]``: run the zoo and print one
line per run. With ``--compiled``, each run is made eager and with the model compiled by that
backend, and the line says whether the two found the same (kind, place) pairs."""

from __future__ import annotations

import sys
import time

import torch

from tests.training_zoo.harness import load_all, run


def compare(names: list[str], backend: str) -> int:
    scenarios = load_all()
    same = differ = 0
    for name in names:
        scenario = scenarios[name]
        for bug in [False] if scenario.correct else [True, False]:
            start = time.perf_counter()
            eager = run(scenario, bug=bug)
            middle = time.perf_counter()
            compiled = run(scenario, bug=bug, compile_backend=backend)
            seconds = (middle - start, time.perf_counter() - middle)
            agree = eager.pairs() == compiled.pairs()
            same += agree
            differ += not agree
            verdict = "same" if agree else "DIFFERENT"
            extra = "" if agree else f"\n             compiled: {compiled.describe()}"
            print(
                f"{verdict:12} {eager.describe()}  ({seconds[0]:.1f} s, compiled "
                f"{seconds[1]:.1f} s){extra}",
                flush=True,
            )
    print(f"training zoo compiled ({backend}): same findings {same}/{same + differ}")
    return 0


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    scenarios = load_all()
    if argv[:1] == ["--compiled"]:
        return compare(argv[2:] or sorted(scenarios), argv[1])
    names = argv or sorted(scenarios)
    detected = missed = alarms = clean_runs = 0
    for name in names:
        scenario = scenarios[name]
        runs = [False] if scenario.correct else [True, False]
        for bug in runs:
            start = time.perf_counter()
            outcome = run(scenario, bug=bug)
            seconds = time.perf_counter() - start
            if bug:
                verdict = "detected" if outcome.detected else "MISSED"
                detected += outcome.detected
                missed += not outcome.detected
            else:
                verdict = "FALSE ALARM" if outcome.false_alarm else "clean"
                alarms += outcome.false_alarm
                clean_runs += 1
            print(f"{verdict:12} {outcome.describe()}  ({seconds:.1f} s)", flush=True)
    print(
        f"training zoo: detected {detected}/{detected + missed}, false alarms {alarms}/{clean_runs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
