"""Records import no exporter: the record layer loads without torchscope.render, at any level.

Records show themselves as text, Markdown and HTML tables through the record layer's own
modules; their drawing methods find an exporter by name in ``torchscope.records._exporters`` at call
time. These tests hold that line, and check that the old import paths and the drawing
methods still work through it.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import torchscope
import torchscope.records._exporters as _exporters
import torchscope.records._html as _records_html
import torchscope.records._table as _records_table
import torchscope.records._text as _records_text
from torchscope.records import Graph, GraphCluster, GraphEdge, GraphNode, ModuleGraph, graph_json

PACKAGE = Path(torchscope.__file__).parent
ROOT = PACKAGE.parent


def _known_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    )


def test_import_linter_keeps_the_layer_contracts() -> None:
    # the same check as `make test`'s `lint-imports`, so that a plain pytest run holds it too:
    # imports only go down the layers of pyproject.toml, and no package has an import circle
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module", ["torchscope.records", "torchscope.records.graph_views"])
def test_importing_the_record_layer_loads_no_renderer(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.startswith('torchscope.render')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]", f"importing {module} loaded {out.strip()}"


def test_every_render_module_imports_first_in_a_fresh_interpreter() -> None:
    # an import circle shows as a failure that depends on which module comes first: import
    # each one first, with every torchscope module forgotten in between
    modules = [m for m in _known_modules() if m.startswith("torchscope.render")]
    modules += [
        "torchscope.records",
        "torchscope.records.graph_views",
        "torchscope.integrations._pytest_report",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('torchscope')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def _graph() -> ModuleGraph:
    return ModuleGraph(
        kind="module",
        title="Tiny",
        nodes=(
            GraphNode(key="input:0", label="x", kind="input", shapes=((2, 3),), order=0),
            GraphNode(key="fc", label="fc (Linear)", kind="module", op="Linear", module="fc"),
            GraphNode(key="fc/relu", label="relu", kind="op", op="relu", module="fc"),
        ),
        edges=(GraphEdge("input:0", "fc"), GraphEdge("fc", "fc/relu")),
        clusters=(GraphCluster(key="fc", label="fc (Linear)"),),
    )


@pytest.mark.parametrize("name", sorted(_exporters.EXPORTERS))
def test_every_named_exporter_is_a_function_that_takes_a_record(name: str) -> None:
    function = _exporters.exporter(name)
    module, attribute = _exporters.EXPORTERS[name].split(":")
    assert function.__module__ == module and function.__name__ == attribute
    first = next(iter(inspect.signature(function).parameters))
    assert first in {"graph", "report"}, f"{name}: first parameter is {first!r}"


def test_an_unknown_exporter_names_the_known_ones() -> None:
    with pytest.raises(
        KeyError, match=r"no exporter named .graph\.dott.; the known ones are .*graph\.dot"
    ):
        _exporters.exporter("graph.dott")


def test_drawing_methods_reach_the_render_functions() -> None:
    from torchscope.render import dot, graph_html

    graph = _graph()
    assert graph.to_dot(fold=False) == dot.graph_to_dot(graph, fold=False)
    assert graph.to_html() == graph_html.graph_to_html(graph)
    assert set(graph._repr_mimebundle_()) >= {"text/plain"}


class _NoCallBack(ModuleGraph):
    """A graph whose JSON method must not be called by an exporter."""

    def to_json(self, *, indent: int | None = 1) -> str:
        raise AssertionError("the exporter called back into Graph.to_json()")


def test_writing_json_does_not_call_back_into_the_record(tmp_path: Path) -> None:
    base = _graph()
    graph = _NoCallBack(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    written = Path(graph.render(tmp_path / "g.json"))
    text = written.read_text(encoding="utf-8")
    assert text == graph_json(base)
    assert Graph.from_json(text) == base


def test_old_text_and_html_import_paths_still_work() -> None:
    from torchscope.render import html, table, text

    assert text.render_summary is _records_text.render_summary
    assert html.render_summary is _records_html.render_summary
    assert table.rows is _records_table.rows
    assert set(text.__all__) == set(_records_text.__all__)
    assert set(html.__all__) == set(_records_html.__all__)


def test_graph_json_is_what_to_json_returns() -> None:
    graph = _graph()
    assert graph_json(graph) == graph.to_json()
    assert json.loads(graph_json(graph, indent=None))["schema_version"] == 1
