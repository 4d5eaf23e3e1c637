"""Graph pictures after a pip-only install: no Graphviz `dot` on PATH.

svg comes from torchscope's own layout (with one note that Graphviz is tighter for small
graphs); png and pdf need Graphviz and say how to install it, before the model runs.
Every test here runs with a PATH that holds no `dot`, the way most notebooks and CI images
are, whether or not this machine has Graphviz.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from torch import nn

import torchscope
from torchscope.cli.main import main
from torchscope.render import dot as render_dot

CLI_MODELS = Path(__file__).parent / "cli_models"
TORCHSCOPE = Path(sys.executable).parent / "torchscope"  # the console script
NOTE = "Graphviz gives a tighter layout for small graphs"

#: Model files of different shapes, and names their svg must show. Each of them rendered
#: with Graphviz and exited 2 without it before svg fell back to our own layout.
MODEL_FILES = {
    "conv": (
        """
        import torch
        from torch import nn

        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
        )
        example_input = torch.randn(1, 3, 16, 16)
        """,
        ["Conv2d", "BatchNorm2d", "Linear"],
    ),
    "residual": (
        """
        import torch
        from torch import nn

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
                self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

            def forward(self, x):
                return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.Sequential(Block(), Block(), Block(), Block())
                self.head = nn.Linear(4, 2)

            def forward(self, x):
                return self.head(self.blocks(x).mean((2, 3)))

        example_input = torch.randn(1, 4, 8, 8)
        """,
        ["head"],
    ),
    "transformer": (
        """
        import torch
        from torch import nn

        model = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True),
            3,
            enable_nested_tensor=False,
        )
        example_input = torch.randn(2, 5, 16)
        """,
        ["layers"],
    ),
    "recurrent": (
        """
        import torch
        from torch import nn

        class Tagger(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(20, 8)
                self.lstm = nn.LSTM(8, 12, batch_first=True)
                self.out = nn.Linear(12, 4)

            def forward(self, tokens):
                hidden, (h, c) = self.lstm(self.embed(tokens))
                return {"tags": self.out(hidden), "state": h}

        example_input = torch.randint(0, 20, (2, 7))
        """,
        ["embed", "lstm", "out"],
    ),
    "two_branches": (
        """
        import torch
        from torch import nn

        class Fusion(nn.Module):
            def __init__(self):
                super().__init__()
                self.image = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
                self.text = nn.Linear(6, 8)
                self.head = nn.Linear(4 * 6 * 6 + 8, 3)

            def forward(self, image, words):
                joined = torch.cat([self.image(image), self.text(words)], dim=1)
                return self.head(joined)

        example_input = {"image": torch.randn(2, 1, 8, 8), "words": torch.randn(2, 6)}
        """,
        ["image", "text", "head"],
    ),
}


def _path_without_dot() -> str:
    """This machine's PATH less every folder that holds a `dot`."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    kept = [f for f in folders if f and shutil.which("dot", path=f) is None]
    path = os.pathsep.join(kept) or os.devnull
    assert shutil.which("dot", path=path) is None
    return path


@pytest.fixture
def no_dot(monkeypatch):
    """PATH without Graphviz, and the once-per-process note not yet given."""
    path = _path_without_dot()
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(render_dot, "_noted_own_layout", False)
    return path


@pytest.fixture
def model_files(tmp_path):
    files = {}
    for name, (source, _) in MODEL_FILES.items():
        files[name] = tmp_path / f"{name}.py"
        files[name].write_text(textwrap.dedent(source))
    return files


def svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()  # well-formed XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return ET.tostring(root, encoding="unicode")


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_graph_svg_without_graphviz(name, model_files, no_dot, tmp_path, capsys):
    out = tmp_path / f"{name}.svg"
    assert main(["graph", str(model_files[name]), "-o", str(out)]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    text = svg_text(out)
    for label in MODEL_FILES[name][1]:
        assert label in text
    # one note on stderr, a single line, and no error
    assert captured.err.count(NOTE) == 1 and captured.err.count("\n") == 1
    assert captured.err.startswith("torchscope: note: ") and "brew install graphviz" in captured.err


def test_autograd_graph_svg_without_graphviz(model_files, no_dot, tmp_path, capsys):
    out = tmp_path / "autograd.svg"
    argv = ["graph", str(model_files["residual"]), "--kind", "autograd", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "ConvolutionBackward0" in svg_text(out)


def test_default_output_is_svg_without_graphviz(no_dot, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["graph", str(CLI_MODELS / "factory.py")]) == 0
    assert capsys.readouterr().out.strip() == "factory.svg"
    assert "encoder" in svg_text(tmp_path / "factory.svg")


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_png_and_pdf_without_graphviz_say_how_to_install_it(suffix, no_dot, tmp_path, capsys):
    out = tmp_path / f"graph{suffix}"
    # the model's forward fails: exit 2 and the Graphviz message show it was never run
    assert main(["graph", str(CLI_MODELS / "shape_mismatch.py"), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    err = captured.err
    assert err.startswith(f"torchscope: error: {suffix[1:]} output needs Graphviz's `dot`")
    assert "sudo apt-get install graphviz" in err and "brew install graphviz" in err
    assert "write .svg" in err and ".html" in err and "Traceback" not in err
    assert not out.exists()


def test_console_script_with_a_path_without_dot(model_files, tmp_path):
    env = {**os.environ, "PATH": _path_without_dot()}
    result = subprocess.run(
        [str(TORCHSCOPE), "graph", str(model_files["conv"]), "-o", "conv.svg"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "conv.svg"
    assert "Conv2d" in svg_text(tmp_path / "conv.svg")
    assert result.stderr.count(NOTE) == 1 and "Traceback" not in result.stderr


# -- the library -----------------------------------------------------------------------------


def small_graph() -> torchscope.Graph:
    return torchscope.module_graph(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))


def test_render_svg_without_graphviz_notes_it_once_per_process(no_dot, tmp_path, caplog):
    graph = small_graph()
    with caplog.at_level(logging.INFO, logger="torchscope.render.dot"):
        for name in ("a.svg", "b.svg"):
            assert "Linear" in svg_text(Path(graph.render(tmp_path / name)))
    notes = [r for r in caplog.records if NOTE in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO


def test_no_note_when_graphviz_would_not_have_drawn_it_either(
    no_dot, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(render_dot, "DOT_NODE_BUDGET", 1)  # every graph is "too big for dot"
    with caplog.at_level(logging.INFO, logger="torchscope.render.dot"):
        small_graph().render(tmp_path / "a.svg")
    assert not [r for r in caplog.records if NOTE in r.getMessage()]
    assert svg_text(tmp_path / "a.svg")


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_render_png_pdf_without_graphviz_raises_the_install_hint(suffix, no_dot, tmp_path):
    with pytest.raises(torchscope.TorchscopeError, match="apt-get install graphviz"):
        small_graph().render(tmp_path / f"g{suffix}")
    assert not (tmp_path / f"g{suffix}").exists()


def test_notebook_display_without_graphviz_is_the_html_view(no_dot):
    bundle = small_graph()._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert "<svg" in bundle["text/html"] or "<script" in bundle["text/html"]


# -- the demo (`make demo`) ------------------------------------------------------------------


def test_demo_writes_graph_svg_without_graphviz(no_dot, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Conv2d" in svg_text(tmp_path / "graph.svg")
    assert f"graph        {tmp_path / 'graph.svg'}" in captured.out
    assert captured.err.count(NOTE) == 1
