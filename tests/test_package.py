"""The package's public surface and its import-time promises."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torchscope


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_and_pytest_plugin_do_not_import_torch():
    assert (
        _run("import sys, torchscope, torchscope.pytest_plugin; print('torch' in sys.modules)")
        == "False"
    )


def test_public_names_resolve():
    for name in torchscope.__all__:
        assert getattr(torchscope, name) is not None, name
    assert callable(torchscope.summary)
    assert issubclass(torchscope.SummaryError, torchscope.TorchscopeError)
    assert set(torchscope.__all__) <= set(dir(torchscope))


def test_summary_function_is_not_shadowed_by_a_submodule():
    code = "import torchscope.summarize, torchscope; print(callable(torchscope.summary))"
    assert _run(code) == "True"


def test_entry_points_and_typing_marker():
    dist = metadata.distribution("torchscope")
    entry_points = {(ep.group, ep.name): ep.value for ep in dist.entry_points}
    assert entry_points[("console_scripts", "torchscope")] == "torchscope.cli:main"
    assert entry_points[("pytest11", "torchscope")] == "torchscope.pytest_plugin"
    assert (Path(torchscope.__file__).parent / "py.typed").exists()
    assert dist.version == torchscope.__version__


def test_unknown_attribute():
    try:
        torchscope.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
