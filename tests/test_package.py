"""The package's public surface and its import-time promises."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import torchscope
from torchscope import _moved

PACKAGE = Path(torchscope.__file__).parent
ROOT = PACKAGE.parent


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_and_pytest_plugin_do_not_import_torch():
    assert (
        _run(
            "import sys, torchscope, torchscope.integrations.pytest_plugin; print('torch' in sys.modules)"
        )
        == "False"
    )


def test_public_names_resolve():
    for name in torchscope.__all__:
        assert getattr(torchscope, name) is not None, name
    assert callable(torchscope.summary)
    assert issubclass(torchscope.SummaryError, torchscope.TorchscopeError)
    assert set(torchscope.__all__) <= set(dir(torchscope))


def test_summary_function_is_not_shadowed_by_a_submodule():
    code = "import torchscope.collect.summary, torchscope; print(callable(torchscope.summary))"
    assert _run(code) == "True"


def test_entry_points_and_typing_marker():
    dist = metadata.distribution("torchscope")
    entry_points = {(ep.group, ep.name): ep.value for ep in dist.entry_points}
    assert entry_points[("console_scripts", "torchscope")] == "torchscope.cli.main:main"
    assert entry_points[("pytest11", "torchscope")] == "torchscope.integrations.pytest_plugin"
    assert (Path(torchscope.__file__).parent / "py.typed").exists()
    assert dist.version == torchscope.__version__


def test_unknown_attribute():
    try:
        torchscope.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


# -- the export table ----------------------------------------------------------------------


def _type_checking_imports() -> dict[str, set[str]]:
    """module -> names of the ``if TYPE_CHECKING:`` block of torchscope/__init__.py, with each
    name checked to be in the explicit re-export form ``from m import X as X``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1, "torchscope/__init__.py should have one `if TYPE_CHECKING:` block"
    found: dict[str, set[str]] = {}
    for stmt in blocks[0].body:
        assert isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level, (
            f"line {stmt.lineno}: the TYPE_CHECKING block holds only `from torchscope.m import X as X`"
        )
        for alias in stmt.names:
            assert alias.asname == alias.name, (
                f"line {stmt.lineno}: write `{alias.name} as {alias.name}`: without a literal "
                "__all__, mypy --strict and pyright see only explicit re-exports"
            )
            found.setdefault(stmt.module, set()).add(alias.name)
    return found


def _block_for(table: dict[str, tuple[str, ...]]) -> str:
    return "\n".join(
        f"    from {module} import {name} as {name}"
        for module in sorted(table)
        for name in sorted(table[module], key=str.lower)
    )


def test_type_checking_block_table_and_all_agree():
    table = torchscope._EXPORTS
    names = [name for module_names in table.values() for name in module_names]
    assert len(names) == len(set(names)), (
        f"a name is exported from two modules: {sorted(n for n in names if names.count(n) > 1)}"
    )
    declared = {module: set(module_names) for module, module_names in table.items()}
    assert _type_checking_imports() == declared, (
        "the TYPE_CHECKING block of torchscope/__init__.py differs from _EXPORTS; "
        "replace the block's imports with:\n" + _block_for(table)
    )
    assert torchscope.__all__ == sorted([*names, "__version__"])


def test_every_public_name_imports_and_is_listed_in_a_fresh_interpreter():
    # a fresh interpreter: in this one other tests have already imported the modules
    code = """if True:
        import json, sys, torchscope
        listed = set(dir(torchscope))  # before any lookup
        result = {"unlisted": [n for n in torchscope.__all__ if n not in listed], "failed": []}
        for name in torchscope.__all__:
            try:
                getattr(torchscope, name)
            except Exception as e:
                result["failed"].append(f"{name}: {type(e).__name__}: {e}")
        print(json.dumps(result))
    """
    result = json.loads(_run(code))
    assert result == {"unlisted": [], "failed": []}


def _markdown_code(text: str) -> str:
    """The code in a Markdown text: fenced blocks and inline code spans."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return "\n".join(fenced + re.findall(r"`([^`\n]+)`", prose))


def test_every_public_name_is_documented():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    code = "\n".join(_markdown_code(page.read_text(encoding="utf-8")) for page in pages)
    undocumented = [
        name
        for name in torchscope.__all__
        if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", code)
    ]
    assert not undocumented, f"not named in code in README.md or docs/*.md: {undocumented}"

    no_docstring = []
    for name in torchscope.__all__:
        if name == "__version__":
            continue
        doc = getattr(torchscope, name).__doc__
        # a dataclass without a docstring gets its signature, "Name(field: type, ...)"
        if not doc or not doc.strip() or doc.startswith(f"{name}("):
            no_docstring.append(name)
    assert not no_docstring, f"public names without a docstring: {no_docstring}"


def test_no_module_imports_a_sibling_through_the_package():
    # `from torchscope import _nested` goes through torchscope/__init__.py, the surface
    # layer, and its lazy __getattr__: an upward import. Import the module itself.
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        depth = len(path.relative_to(PACKAGE).parts)  # 1: torchscope/x.py
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            from_root = (node.level == 0 and node.module == "torchscope") or (
                node.level == depth and not node.module
            )
            names = [alias.name for alias in node.names if alias.name != "__version__"]
            if from_root and names:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                offending.append(f"{where} imports {', '.join(names)} from torchscope")
    assert not offending, (
        "import the defining module directly (`import torchscope._util.nested as _nested`, "
        "`from torchscope.collect.graph import capture`):\n" + "\n".join(offending)
    )


@pytest.fixture(scope="module")
def old_names() -> dict[str, dict[str, object]]:
    """Each old module name imported once, in one fresh interpreter (where none of them was
    imported yet): its deprecation messages, and whether it gives the new module's objects."""
    code = (
        "import importlib, json, warnings\n"
        "warnings.simplefilter('always')\n"
        "found = {}\n"
        f"for old, new_name in {sorted(_moved.MOVED.items())!r}:\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        module = importlib.import_module(old)\n"
        "    new = importlib.import_module(new_name)\n"
        "    public = [n for n in dir(new) if not n.startswith('__')]\n"
        "    found[old] = {\n"
        "        'messages': [str(w.message) for w in caught if w.category is DeprecationWarning],\n"
        "        'same': all(getattr(module, n) is getattr(new, n) for n in public),\n"
        "        'count': len(public),\n"
        "    }\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_a_moved_module_still_imports_by_its_old_name_with_a_deprecation(
    old: str, old_names: dict[str, dict[str, object]]
) -> None:
    new = importlib.import_module(_moved.MOVED[old])
    found = old_names[old]
    assert any(f"{old} moved to {new.__name__}" in m for m in found["messages"]), found  # type: ignore[attr-defined]
    assert found["same"] is True and int(found["count"]) > 3  # type: ignore[call-overload]


def test_from_an_old_name_import_works_and_gives_the_same_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "torchscope.gradients", raising=False)
    with pytest.warns(DeprecationWarning, match=r"torchscope\.gradients moved to"):
        from torchscope.gradients import GradientMonitor  # type: ignore[import-not-found]
    assert GradientMonitor is torchscope.GradientMonitor


def test_an_unknown_submodule_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("torchscope.no_such_module")
