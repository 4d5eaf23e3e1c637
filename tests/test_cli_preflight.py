"""``torchscope preflight FILE``: the file's example_input and example_target (or --classes),
the exit status (0 all checks pass, 1 a check failed or warned, 2 a usage error), and clean
errors for files that lack what it needs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from torchscope.cli.main import main

HEAD = """
import torch
from torch import nn

torch.manual_seed(0)
example_input = torch.randn(24, 10, generator=torch.Generator().manual_seed(1))
"""


def _file(tmp_path: Path, body: str, name: str = "model.py") -> str:
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return str(path)


def test_a_healthy_file_passes_and_exits_0(tmp_path, capsys):
    path = _file(
        tmp_path,
        """
        model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        example_target = example_input[:, :3].argmax(dim=1)
        """,
    )
    assert main(["preflight", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Preflight: all 6 checks passed")


def test_a_failed_check_exits_1_and_json_is_the_report(tmp_path, capsys):
    path = _file(
        tmp_path,
        """
        model = nn.Sequential(nn.Linear(10, 3), nn.Softmax(dim=1))
        """,
    )
    assert main(["preflight", path, "--classes", "3", "--json", "--steps", "40"]) == 1
    report = json.loads(capsys.readouterr().out)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert verdicts["loss_contract"] == "fail"
    assert report["steps"] == 40


@pytest.mark.parametrize(
    ("body", "argv", "message"),
    [
        (
            "model = nn.Linear(10, 3)\n",
            [],
            "no target known for * define example_target in the file * or pass --classes C",
        ),
        (
            "model = nn.Linear(10, 3)\nexample_target = torch.zeros(24, dtype=torch.long)\n",
            ["--classes", "3"],
            "*defines example_target; --classes would replace it*",
        ),
        (
            "model = nn.Linear(10, 3)\nexample_target = torch.zeros(24, dtype=torch.long)\n",
            ["--loss", "mse"],
            "*loss_fn(output, target) failed*shape (24, 3)*shape (24,) (int64)*",
        ),
        ("model = nn.Linear(10, 3)\n", ["--classes", "1"], "*--classes must be 2 or more*"),
    ],
    ids=["no-target", "both-targets", "wrong-loss", "one-class"],
)
def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, body, argv, message):
    import fnmatch

    path = _file(tmp_path, body)
    with pytest.warns(UserWarning) if "mse" in argv else _nothing():
        assert main(["preflight", path, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchscope: error: ") and "Traceback" not in err
    assert fnmatch.fnmatch(err.strip(), "*" + message + "*"), err


def _nothing():
    import contextlib

    return contextlib.nullcontext()
