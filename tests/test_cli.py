from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from torchscope.cli import main

MODEL_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    EXAMPLE_INPUT_SIZE = [(2, 8)]

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(x)
    """
)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL_FILE)
    return path


def test_demo_prints_both_summaries(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "LeNet (mode=eval" in out and "Total params: 61,706" in out
    assert "ResNet (mode=eval" in out and "Total params: 11,689,512" in out


def test_summary_of_a_file(model_file, capsys):
    assert main(["summary", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "fc (Linear)" in out and "Total params: 27" in out


def test_summary_formats_and_options(model_file, capsys):
    assert main(["summary", f"{model_file}:Tiny", "--input-size", "5,8", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shapes"] == [[5, 8]] and data["totals"]["total_params"] == 27
    assert (
        main(["summary", str(model_file), "--format", "markdown", "--columns", "params,trainable"])
        == 0
    )
    assert "| Layer (type)" in capsys.readouterr().out


def test_summary_costs_and_memory_flags(model_file, capsys):
    argv = [
        "summary",
        str(model_file),
        "--mode",
        "train",
        "--memory",
        "--optimizer",
        "adam",
        "--all-ops",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Backward MACs" in out and "Estimated peak memory" in out and "(all ops)" in out
    assert main(["summary", str(model_file), "--optimizer", "adam"]) == 2
    assert "pass memory=True" in capsys.readouterr().err


def test_integer_inputs_with_dtype(tmp_path, capsys):
    path = tmp_path / "tokens.py"
    path.write_text(
        "from torch import nn\nmodel = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))\n"
    )
    assert main(["summary", str(path), "--input-size", "2,5", "--dtype", "int64"]) == 0
    assert "Total params: 50" in capsys.readouterr().out


def test_summary_of_an_importable_factory(capsys):
    assert (
        main(["summary", "torchscope.models:LeNet", "--input-size", "1x1x28x28", "--depth", "1"])
        == 0
    )
    assert "Total params: 61,706" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "missing.py"], "no such file: missing.py"),
        (["summary", "torchscope.models"], "cannot tell which model"),
        (
            ["summary", "torchscope.models:Nope", "--input-size", "1,2"],
            "has no attribute 'Nope'; models found: DecoderBlock, DecoderOnly, LeNet, RMSNorm",
        ),
        (["summary", "torchscope.models:LeNet"], "give the input shape with --input-size"),
        (["summary", "no_such_package_xyz:Model"], "cannot import module"),
        (
            [
                "summary",
                "torchscope.models:LeNet",
                "--input-size",
                "1,1,28,28",
                "--columns",
                "gflops",
            ],
            "unknown column",
        ),
    ],
)
def test_user_mistakes_get_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_forward_failure_is_reported_without_traceback(capsys):
    assert main(["summary", "torchscope.models:LeNet", "--input-size", "1,3,28,28"]) == 1
    err = capsys.readouterr().err
    assert "forward pass failed in module 'features.0' (Conv2d)" in err and "Traceback" not in err


def test_bad_shape_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary", "torchscope.models:LeNet", "--input-size", "one,two"])
    assert info.value.code == 2
    assert "is not a shape" in capsys.readouterr().err


def test_console_script_help_does_not_import_torch():
    code = "import sys; from torchscope.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().endswith("False")


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchscope",
            "summary",
            "torchscope.models:LeNet",
            "--input-size",
            "1,1,28,28",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "Total params: 61,706" in result.stdout
