"""``python -m tests.training_zoo [NAME ...]``: run the zoo and print one line per run."""

from __future__ import annotations

import sys
import time

import torch

from tests.training_zoo.harness import load_all, run


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    scenarios = load_all()
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
        f"training zoo: detected {detected}/{detected + missed}, "
        f"false alarms {alarms}/{clean_runs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
