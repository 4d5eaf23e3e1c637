"""``torchscope run`` on the examples/ scripts (pytorch/examples in style, unmodified): the
clean runs report nothing, each planted bug is named by its cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchscope.cli.main import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = {
    "mnist": ["--epochs", "1", "--batch-size", "64", "--max-batches", "20"],
    "dcgan": ["--epochs", "1", "--batch-size", "64", "--max-batches", "20"],
    "word_language_model": ["--epochs", "1", "--max-batches", "20"],
}
#: (example, --bug) -> the (kind, model) the report must name
BUGS = {
    ("mnist", "no-zero-grad"): ("grad_accumulation", "Net"),
    ("mnist", "softmax"): ("softmax_into_cross_entropy", "Net"),
    ("dcgan", "detach-fake"): ("no_grad", "Generator"),
    ("word_language_model", "no-batch-first"): ("batch_mixing", "RNNModel"),
}
#: planted bugs the monitor does not name yet, and why
MISSES = {
    ("word_language_model", "no-batch-first"): (
        "the loss is taken over (batch x time) flattened, so no 3-D RNN input dim matches the "
        "loss's batch size, which is how batch_mixing tells the batch dim (preflight's batch "
        "independence check, which probes the embedding's output, does catch it)"
    ),
}


def _run(tmp_path: Path, example: str, *extra: str) -> dict:
    report = tmp_path / "report.json"
    script = EXAMPLES / example / "main.py"
    assert main(["run", "--report", str(report), str(script), *SMALL[example], *extra]) == 0
    return json.loads(report.read_text())


def _found(document: dict) -> set[tuple[str, str]]:
    return {
        (f["kind"], entry["model"])
        for entry in document["models"]
        for f in entry["report"]["findings"]
        if f["severity"] in ("error", "warning")
    }


@pytest.mark.parametrize("example", sorted(SMALL))
def test_a_clean_example_reports_nothing(tmp_path, capsys, example):
    document = _run(tmp_path, example)
    assert document["models"], "no model was found to monitor"
    assert _found(document) == set(), capsys.readouterr().err


@pytest.mark.parametrize(
    ("example", "bug"),
    [
        pytest.param(
            *key,
            id=f"{key[0]}-{key[1]}",
            marks=[pytest.mark.xfail(reason=MISSES[key], strict=True)] if key in MISSES else [],
        )
        for key in sorted(BUGS)
    ],
)
def test_a_planted_bug_is_named(tmp_path, capsys, example, bug):
    document = _run(tmp_path, example, "--bug", bug)
    assert BUGS[(example, bug)] in _found(document), capsys.readouterr().err
