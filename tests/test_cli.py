from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torchscope.cli.main import main

MODELS = Path(__file__).parent / "cli_models"
TORCHSCOPE = Path(sys.executable).parent / "torchscope"  # the console script


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


def model(name: str) -> str:
    return str(MODELS / name)


def line_of(name: str, text: str) -> int:
    """The line number of the first line of a model file containing ``text``."""
    lines = (MODELS / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL_FILE)
    return path


def summary_json(argv, capsys) -> dict:
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- the summary command, as before ----------------------------------------------------------


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


def test_json_flag_is_format_json(model_file, capsys):
    assert main(["summary", str(model_file), "--format", "json"]) == 0
    by_format = json.loads(capsys.readouterr().out)
    assert summary_json([str(model_file)], capsys) == by_format


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
        (  # without --memory: the parameter table (tests/test_summary_no_input.py)
            ["summary", "torchscope.models:LeNet", "--memory"],
            "give the input shape with --input-size",
        ),
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
        (
            ["summary", f"{MODELS / 'several.py'}:encoder", "--model", "decoder"],
            "give one",
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


@pytest.mark.parametrize("shape", ["one,two", "", "1,-3", "1,2;x"])
def test_bad_shape_is_an_argparse_error(shape, capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary", "torchscope.models:LeNet", "--input-size", shape])
    assert info.value.code == 2
    assert "is not a shape" in capsys.readouterr().err


# -- finding the model in a file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "model_type", "input_shapes", "total_params"),
    [
        ("instance.py", "Sequential", [[2, 8]], 8 * 16 + 16 + 16 * 4 + 4),  # tensor input
        ("imported_instance.py", "Sequential", [[1, 4]], 4 * 6 + 6),  # not the imported one
        ("wrapped_instance.py", "Sequential", [[1, 8]], 8 * 8 + 8 + 8 * 3 + 3),  # the outer one
        ("factory.py", "Net", [[2, 8]], 8 * 16 + 16 + 16 * 3 + 3),  # build_model(), tuple input
        ("function.py", "Sequential", [[3, 5]], 5 * 7 + 7 + 7 * 2 + 2),  # example_input()
        ("classes.py", "Net", [[2, 8]], 8 * 8 + 8 + 8 * 2 + 2),  # the outer class, dict input
    ],
)
def test_model_and_input_are_found_in_each_style(
    file, model_type, input_shapes, total_params, capsys
):
    data = summary_json([model(file)], capsys)
    assert data["model_type"] == model_type
    assert data["input_shapes"] == input_shapes
    assert data["totals"]["total_params"] == total_params


def test_model_option_picks_one_of_several(capsys):
    decoder = summary_json(
        [model("several.py"), "--model", "decoder", "--input-size", "1,4"], capsys
    )
    assert decoder["model_type"] == "Linear" and decoder["totals"]["total_params"] == 4 * 8 + 8
    # the older file.py:NAME form
    encoder = summary_json([model("several.py") + ":encoder"], capsys)
    assert encoder["totals"]["total_params"] == 8 * 4 + 4


def test_model_option_names_a_class_or_a_factory(capsys):
    assert (
        summary_json([model("classes.py"), "--model", "Block", "--input-size", "1,8"], capsys)[
            "model_type"
        ]
        == "Block"
    )
    assert summary_json([model("factory.py"), "--model", "build_model"], capsys)["model_type"] == (
        "Net"
    )


def test_several_inputs_in_one_option_or_repeated(capsys):
    one = summary_json([model("two_inputs.py"), "--input-size", "2,8;2,10"], capsys)
    repeated = summary_json(
        [model("two_inputs.py"), "--input-size", "2,8", "--input-size", "2,10"], capsys
    )
    assert one["input_shapes"] == repeated["input_shapes"] == [[2, 8], [2, 10]]
    assert one["output_shapes"] == [[2, 4]]


def test_legacy_load_model_still_answers():
    from torch import nn

    from torchscope.cli.loading import load_model

    found, module = load_model(model("factory.py"))
    assert isinstance(found, nn.Module) and type(found).__name__ == "Net"
    assert module.__file__ == model("factory.py")


def test_loading_leaves_no_bytecode_next_to_the_file(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\nmodel = nn.Linear(2, 2)\n")
    assert main(["summary", str(path), "--input-size", "1,2"]) == 0
    assert not (tmp_path / "__pycache__").exists()


# -- user mistakes in the file: a short message, never a traceback ---------------------------


def mistakes() -> list[tuple[str, int, list[str]]]:
    """(file, exit status, what the message must say)."""
    return [
        (
            "syntax_error.py",
            2,
            [
                "syntax error in",
                f"syntax_error.py, line {line_of('syntax_error.py', 'class Net')}",
                "class Net(nn.Module)",
            ],
        ),
        (
            "no_model.py",
            2,
            [
                "found no model in",
                "nn.Module instance",
                "build_model, get_model, make_model, create_model",
                "nn.Module subclass constructible with no arguments",
                "class Net (needs width)",
                "--model NAME",
            ],
        ),
        (
            "several.py",
            2,
            ["several nn.Module instances", "encoder (Linear), decoder (Linear)", "--model"],
        ),
        (
            "no_input.py",
            2,
            ["no input known", "--input-size", "example_input", "try --input-size 1,12"],
        ),
        ("shape_mismatch.py", 1, ["fc2", "(Linear)", "[2, 16]", "RuntimeError"]),
        (
            "import_error.py",
            2,
            [
                "importing",
                f"failed at line {line_of('import_error.py', 'import torchscope_missing')}",
                "No module named 'torchscope_missing_dependency_xyz'",
            ],
        ),
        (
            "factory_raises.py",
            2,
            [
                "build_model() failed in",
                f"factory_raises.py, line {line_of('factory_raises.py', 'raise RuntimeError')}",
                "checkpoint weights.pt not found",
            ],
        ),
    ]


@pytest.mark.parametrize(
    ("command", "file", "status", "expected"),
    [
        (command, *mistake)
        for mistake in mistakes()
        for command in ("graph", "summary")
        # summary without an input shows the parameters (tests/test_summary_no_input.py)
        if (command, mistake[0]) != ("summary", "no_input.py")
    ],
)
def test_mistakes_in_the_file_are_short_messages(command, file, status, expected, capsys):
    assert main([command, model(file)]) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    for text in expected:
        assert text in captured.err
    assert captured.err.startswith("torchscope: ")
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "graph", model("shape_mismatch.py")],
        ["graph", model("shape_mismatch.py"), "--debug"],
        ["summary", model("syntax_error.py"), "--debug"],
    ],
)
def test_debug_shows_the_traceback(argv, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("torchscope: ")


def test_unknown_output_suffix_lists_the_formats_before_running(tmp_path, capsys):
    out = tmp_path / "graph.jpg"
    # the file is broken: the suffix is checked first, so the message is about the suffix
    assert main(["graph", model("syntax_error.py"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'.jpg'" in err and ".svg, .png, .pdf, .dot, .html, .json" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from torch import nn\n\ndef tiny():\n    return nn.Lin(2, 2)\n",
            ["tiny() failed in", "net.py, line 4", "AttributeError", "--model NAME"],
        ),
        (
            "import sys\nfrom torch import nn\nmodel = nn.Linear(2, 2)\nsys.exit(3)\n",
            ["importing", "exited at line 4", 'if __name__ == "__main__"'],
        ),
        (
            "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n        raise ValueError('no config')\n",
            ["Net() failed in", "net.py, line 6", "ValueError: no config"],
        ),
    ],
)
def test_code_that_raises_while_searching_is_named(source, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(source)
    assert main(["graph", "net.py", "--input-size", "1,2"]) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err
    assert "Traceback" not in err


# -- the graph command -----------------------------------------------------------------------


def test_graph_writes_stem_svg_in_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["graph", model("factory.py")]) == 0
    assert capsys.readouterr().out.strip() == "factory.svg"
    svg = (tmp_path / "factory.svg").read_text()
    assert "<svg" in svg and "encoder" in svg and "head" in svg


def test_graph_json_has_the_model_layers(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["graph", model("factory.py"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    data = json.loads(out.read_text())
    assert data["kind"] == "module"
    modules = {n["key"] for n in data["nodes"] if n["kind"] == "module"}
    assert {"encoder", "head"} <= modules


def test_graph_dot_output(tmp_path, capsys):
    out = tmp_path / "graph.dot"
    assert main(["graph", model("classes.py"), "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("digraph") and "block" in text


def test_graph_html_output(tmp_path, capsys):
    out = tmp_path / "graph.html"
    assert main(["graph", model("factory.py"), "-o", str(out)]) == 0, capsys.readouterr().err
    text = out.read_text()
    assert "<html" in text.lower() and "encoder" in text and "head" in text


def test_autograd_graph_attributes_ops_to_layers(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["graph", model("factory.py"), "--kind", "autograd", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "autograd"
    params = {n["key"] for n in data["nodes"] if n["kind"] == "parameter"}
    assert {"param:encoder.weight", "param:head.bias"} <= params


def test_graph_depth_and_input_size(tmp_path, capsys):
    out = tmp_path / "graph.json"
    argv = ["graph", model("two_inputs.py"), "--input-size", "1,8;1,10", "-o", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    inputs = [n for n in data["nodes"] if n["kind"] == "input"]
    assert sorted(tuple(map(tuple, n["shapes"])) for n in inputs) == [((1, 8),), ((1, 10),)]
    # --depth 1 draws the model's children as boxes, without what is inside them
    assert main(["graph", model("classes.py"), "--depth", "1", "-o", str(out)]) == 0
    keys = {n["key"] for n in json.loads(out.read_text())["nodes"]}
    assert {"block", "out"} <= keys and "block.linear" not in keys


def test_missing_graphviz_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere
    assert main(["graph", model("factory.py"), "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()
    # the formats that need no Graphviz still work, svg included (our own layout)
    assert main(["graph", model("factory.py"), "-o", str(tmp_path / "g.dot")]) == 0
    assert main(["graph", model("factory.py"), "-o", str(tmp_path / "g.svg")]) == 0
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


# -- the diff command ------------------------------------------------------------------------


def test_diff_of_files_differing_in_one_layer(capsys):
    assert main(["diff", model("diff_a.py"), model("diff_b.py")]) == 1
    out = capsys.readouterr().out
    assert "act" in out and "ReLU" in out and "GELU" in out
    assert "fc1" not in out and "fc2" not in out


def test_diff_of_identical_models_is_status_0(capsys):
    assert main(["diff", model("diff_a.py"), model("diff_a.py")]) == 0
    assert "no structural difference" in capsys.readouterr().out


def test_diff_errors_are_status_2(capsys):
    assert main(["diff", model("diff_a.py"), model("shape_mismatch.py")]) == 2
    assert "fc2" in capsys.readouterr().err
    assert main(["diff", model("diff_a.py"), model("several.py")]) == 2
    assert "--model" in capsys.readouterr().err


# -- end to end, through the console script --------------------------------------------------


def test_console_script_writes_a_graph(tmp_path):
    result = subprocess.run(
        [str(TORCHSCOPE), "graph", model("instance.py"), "-o", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "out.json"
    assert json.loads((tmp_path / "out.json").read_text())["nodes"]


def test_console_script_reports_a_mistake_without_traceback(tmp_path):
    result = subprocess.run(
        [str(TORCHSCOPE), "graph", model("syntax_error.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "syntax error in" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--help"], ["graph", "--help"], ["diff", "--help"]])
def test_console_script_help_does_not_import_torch(argv):
    code = (
        "import sys; from torchscope.cli.main import main\n"
        f"try: main({argv!r})\n"
        "except SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
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


# -- torchscope time ----------------------------------------------------------------------------


def test_time_prints_the_table(capsys):
    assert main(["time", str(MODELS / "factory.py"), "--repeat", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "per-module forward + backward times on cpu" in out
    assert "head (Linear)" in out and "Coverage" in out


def test_time_json_and_forward_only(capsys):
    args = ["time", str(MODELS / "factory.py"), "--repeat", "2", "--no-backward", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backward"] is False and report["repeat"] == 2
    assert {row["name"] for row in report["layers"]} >= {"head"}


def test_time_mistakes_are_short_messages(capsys):
    assert main(["time", str(MODELS / "factory.py"), "--repeat", "0"]) == 2
    err = capsys.readouterr().err
    assert "repeat must be a whole number >= 1" in err and "Traceback" not in err
    assert main(["time", str(MODELS / "shape_mismatch.py")]) == 1
    err = capsys.readouterr().err
    assert "input shapes" in err and "Traceback" not in err
