"""Records import no exporter: the record layer loads without torchscope.render, at any level.

Records show themselves as text, Markdown and HTML tables through the record layer's own
modules; their drawing methods find an exporter by name in ``torchscope._exporters`` at call
time. These tests hold that line, and check that the old import paths and the drawing
methods still work through it.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import torchscope
import torchscope._exporters as _exporters
import torchscope._records_html as _records_html
import torchscope._records_table as _records_table
import torchscope._records_text as _records_text
from torchscope.records import Graph, GraphCluster, GraphEdge, GraphNode, ModuleGraph, graph_json

PACKAGE = Path(torchscope.__file__).parent

#: The record layer: plain data and its text faces. None of these may import torchscope.render.
RECORD_LAYER = (
    "torchscope/records.py",
    "torchscope/_graphs.py",
    "torchscope/_records_table.py",
    "torchscope/_records_text.py",
    "torchscope/_records_html.py",
    "torchscope/_exporters.py",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every torchscope module ``path`` imports, at any level (functions included), except
    under ``if TYPE_CHECKING:`` (never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    checking_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            checking_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in checking_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = (package or _module_name(path)).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from torchscope import render`` imports torchscope.render
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "torchscope" or name.startswith("torchscope.")}


def _known_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("relative", RECORD_LAYER)
def test_record_layer_never_imports_the_render_layer(relative: str) -> None:
    imported = _imports(PACKAGE.parent / relative)
    upward = sorted(name for name in imported if name.startswith("torchscope.render"))
    assert not upward, f"{relative} imports {upward}: records must not import exporters"


def test_nothing_the_records_import_leads_back_to_them_or_up_to_the_renderers() -> None:
    # follow imports at every level (deferred ones too) from records.py: no circle, no renderer
    known = _known_modules()
    seen: set[str] = set()
    todo = ["torchscope.records"]
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        todo.extend(_imports(known[name]))
    assert not sorted(m for m in seen if m.startswith("torchscope.render"))
    assert not {"torchscope.graph", "torchscope.gradients", "torchscope.summarize"} & seen


@pytest.mark.parametrize("module", ["torchscope.records", "torchscope._graphs"])
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
    modules = sorted(m for m in _known_modules() if m.startswith("torchscope.render"))
    modules += ["torchscope.records", "torchscope._graphs", "torchscope._pytest_report"]
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
