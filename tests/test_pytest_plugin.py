"""The pytest plugin (fixture, marker, options, JSON report) and torchscope.testing.

The plugin is exercised the way users meet it: inner pytest sessions run by ``pytester``, with
the plugin loaded through its ``pytest11`` entry point and a strict configuration
(``filterwarnings = error``, ``--strict-markers``) like a careful project's.
"""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchscope
from torchscope.errors import GradientHealthError, TorchscopeError
from torchscope.testing import assert_gradients_healthy

pytest_plugins = ["pytester"]

# pytester's in-process runs put sys.modules back as they found it, so a module first imported
# inside an inner run is imported again by the next one. torch._dynamo (torch.manual_seed
# imports it) cannot be: its operator libraries refuse to register twice; hypothesis (its
# plugin imports it in every session) would cost a second per run. Both are loaded here, once.
for _module in ("torch._dynamo", "hypothesis"):
    importlib.import_module(_module)

# prepended to every inner test module: tiny models, fixed data
MODELS = """
import pytest
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
X = torch.randn(16, 8)
Y = torch.randint(0, 4, (16,))


def healthy():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class Detached(nn.Module):
    # the first layer's output is detached, so its parameters never get a gradient: no_grad
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Linear(16, 4)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)).detach())
"""


@pytest.fixture
def strict_pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        """
        [pytest]
        addopts = --strict-markers
        filterwarnings = error
        """
    )
    return pytester


def make_tests(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(test_models=MODELS + textwrap.dedent(body))


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = (
        "import sys, torchscope.integrations.pytest_plugin; "
        "loaded = [m for m in ('torch', 'torchscope.records') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pytest_start_up_with_the_plugin_does_not_import_torch(
    strict_pytester: pytest.Pytester,
) -> None:
    strict_pytester.makepyfile(
        test_start="""
        import sys

        def test_plugin_loaded_without_torch(request):
            assert request.config.pluginmanager.has_plugin("torchscope")
            assert "torch" not in sys.modules
        """
    )
    result = strict_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_healthy_model_passes(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        def test_healthy(gradient_health):
            report = gradient_health(healthy(), X, Y, steps=2)
            report.assert_healthy()
            assert report.ok and report.steps == 2
        """,
    )
    strict_pytester.runpytest().assert_outcomes(passed=1)


def test_broken_model_fails_with_the_findings_table(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        def test_detached(gradient_health):
            gradient_health(Detached(), X, Y, steps=2).assert_healthy()

        def test_softmax_into_cross_entropy(gradient_health):
            model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=-1))
            gradient_health(model, X, Y, loss_fn=F.cross_entropy, steps=2).assert_healthy()
        """,
    )
    result = strict_pytester.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*GradientHealthError: Gradient health: 2 optimizer step(s)*2 error(s)*",
            "*severity*kind*where*",
            "*error*no_grad*first.weight*",
            "*error*softmax_into_cross_entropy*cross_entropy*",
        ]
    )


def test_compiled_models_are_checked_like_eager_ones(strict_pytester: pytest.Pytester) -> None:
    # torch.compile(model) and model.compile() under the strict configuration (warnings are
    # errors): the healthy model passes, the detached layer fails with the eager finding
    make_tests(
        strict_pytester,
        """
        def test_compiled_healthy(gradient_health):
            model = torch.compile(healthy(), backend="aot_eager")
            gradient_health(model, X, Y, steps=3).assert_healthy()

        def test_compiled_detached(gradient_health):
            model = Detached()
            model.compile(backend="aot_eager")
            gradient_health(model, X, Y, steps=3).assert_healthy()
        """,
    )
    # in a process of its own: compiling imports modules that register themselves once, and
    # an in-process run would unload them (see the top of this file)
    result = strict_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_compiled_detached*", "*error*no_grad*first.weight*"])
    result.stdout.no_fnmatch_line("*test_compiled_healthy*FAILED*")


def test_the_preflight_fixture_fails_a_test_with_the_checks_table(
    strict_pytester: pytest.Pytester,
) -> None:
    make_tests(
        strict_pytester,
        """
        def test_healthy(preflight):
            report = preflight(healthy(), X, Y, loss_fn=F.cross_entropy, steps=60)
            report.raise_if_unhealthy()

        def test_detached(preflight):
            preflight(Detached(), X, Y, loss_fn=F.cross_entropy, steps=20).raise_if_unhealthy()
        """,
    )
    result = strict_pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Preflight: *check(s) failed*gradients*",
            "*gradients*FAIL*",
            "*first.weight (no gradient*",
        ]
    )


@pytest.mark.parametrize("tb", ["long", "short", "auto"])
def test_failures_show_the_test_line_and_the_table_not_torchscope(
    strict_pytester: pytest.Pytester, tb: str
) -> None:
    make_tests(
        strict_pytester,
        """
        from torchscope.testing import assert_gradients_healthy

        def test_fixture(gradient_health):
            gradient_health(Detached(), X, Y, steps=2).assert_healthy()

        @pytest.mark.gradient_health(allow=["vanishing"])
        def test_fixture_with_marker(gradient_health):
            gradient_health(Detached(), X, Y, steps=2).assert_healthy(allow=["zero_grad"])

        def test_raise_if_unhealthy(gradient_health):
            gradient_health(Detached(), X, Y, steps=2).raise_if_unhealthy()

        def test_helper():
            assert_gradients_healthy(Detached(), X, Y, steps=2)
        """,
    )
    result = strict_pytester.runpytest(f"--tb={tb}")
    result.assert_outcomes(failed=4)
    output = result.stdout.str()
    # the user's own lines, each followed by the findings table
    for line in (
        "gradient_health(Detached(), X, Y, steps=2).assert_healthy()",
        "gradient_health(Detached(), X, Y, steps=2).assert_healthy(allow=*zero_grad*)",
        "gradient_health(Detached(), X, Y, steps=2).raise_if_unhealthy()",
        "assert_gradients_healthy(Detached(), X, Y, steps=2)",
    ):
        result.stdout.fnmatch_lines([f"*{line}", "E*GradientHealthError: Gradient health:*"])
    result.stdout.fnmatch_lines(["E*severity*kind*where*", "E*error*no_grad*first.weight*"])
    # and nothing of torchscope's: no frame of its files, no dump of the report's fields
    for inside in ("records.py", "pytest_plugin.py", "testing.py", "torchscope/"):
        assert inside not in output, inside
    assert "self = " not in output and "GradientReport(" not in output


def test_the_returned_report_is_a_gradient_report(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        import pickle

        from torchscope import GradientReport

        @pytest.mark.gradient_health(allow=["no_grad"])
        def test_report(gradient_health):
            report = gradient_health(Detached(), X, Y, steps=2)
            assert isinstance(report, GradientReport)
            assert report.kinds == {"no_grad"} and not report.ok  # the marker only affects
            report.assert_healthy()  # assert_healthy
            assert "allowed_by_marker" not in report.to_dict()
            assert GradientReport.from_dict(report.to_dict()).kinds == {"no_grad"}
            assert gradient_health.reports == [report]
            pickle.loads(pickle.dumps(report)).assert_healthy()  # the marker survives pickling
            with pytest.raises(AssertionError, match="no_grad"):
                report.raise_if_unhealthy()  # "unless ok": the marker does not change ok
        """,
    )
    strict_pytester.runpytest().assert_outcomes(passed=1)


def test_marker_allow_and_steps(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        @pytest.mark.gradient_health(steps=2, allow=["no_grad"])
        def test_allowed(gradient_health):
            report = gradient_health(Detached(), X, Y)
            assert report.steps == 2
            report.assert_healthy()

        @pytest.mark.gradient_health(allow=["no_grad"])
        def test_allow_merges_with_the_call(gradient_health):
            model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=-1))
            report = gradient_health(model, X, Y, loss_fn=F.cross_entropy, steps=1)
            report.assert_healthy(allow=["softmax_into_cross_entropy"])

        @pytest.mark.gradient_health(steps=1)
        def test_explicit_steps_win_over_the_marker(gradient_health):
            assert gradient_health.steps == 1
            assert gradient_health(healthy(), X, Y, steps=2).steps == 2

        @pytest.mark.gradient_health(steps=2, allow=["no_grad"])
        class TestClassMarker:
            @pytest.mark.gradient_health(steps=1, allow=["vanishing"])
            def test_closest_steps_and_every_allow(self, gradient_health):
                assert gradient_health.steps == 1
                assert gradient_health.allow == ("vanishing", "no_grad")
                gradient_health(Detached(), X, Y).assert_healthy()
        """,
    )
    strict_pytester.runpytest().assert_outcomes(passed=4)


def test_steps_option_sets_the_default(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        def test_default(gradient_health):
            assert gradient_health.steps == 2
            assert gradient_health(healthy(), X, Y).steps == 2

        @pytest.mark.gradient_health(steps=1)
        def test_marker_wins(gradient_health):
            assert gradient_health(healthy(), X, Y).steps == 1
        """,
    )
    strict_pytester.runpytest("--gradient-health-steps=2").assert_outcomes(passed=2)


def test_without_option_or_marker_steps_is_three(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        def test_default(gradient_health):
            assert gradient_health.steps == 3
        """,
    )
    strict_pytester.runpytest().assert_outcomes(passed=1)


def test_steps_option_must_be_positive(strict_pytester: pytest.Pytester) -> None:
    result = strict_pytester.runpytest("--gradient-health-steps=0")
    result.stderr.fnmatch_lines(["*--gradient-health-steps must be at least 1, got 0*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_options_are_in_the_torchscope_group(strict_pytester: pytest.Pytester) -> None:
    result = strict_pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "torchscope gradient health:",
            "*--gradient-health-steps=N*",
            "*--gradient-health-report=PATH*",
        ]
    )


def test_marker_is_registered(strict_pytester: pytest.Pytester) -> None:
    result = strict_pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gradient_health(steps=None, allow=()):*"])


def test_report_option_writes_json(strict_pytester: pytest.Pytester) -> None:
    make_tests(
        strict_pytester,
        """
        def test_healthy(gradient_health):
            gradient_health(healthy(), X, Y).assert_healthy()

        def test_broken(gradient_health):
            gradient_health(healthy(), X, Y).assert_healthy()
            gradient_health(Detached(), X, Y).assert_healthy()

        def test_without_fixture():
            pass
        """,
    )
    result = strict_pytester.runpytest(
        "--gradient-health-report=out/nested/health.json", "--gradient-health-steps=2"
    )
    result.assert_outcomes(passed=2, failed=1)
    path = strict_pytester.path / "out" / "nested" / "health.json"
    result.stdout.fnmatch_lines([f"*torchscope gradient-health report: {path}*"])
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema_version"] == 1 and data["default_steps"] == 2
    tests = {entry["nodeid"]: entry for entry in data["tests"]}
    assert set(tests) == {"test_models.py::test_healthy", "test_models.py::test_broken"}
    healthy, broken = tests["test_models.py::test_healthy"], tests["test_models.py::test_broken"]
    assert healthy["passed"] and healthy["outcome"] == "passed"
    assert [r["ok"] for r in healthy["reports"]] == [True]
    assert not broken["passed"] and broken["outcome"] == "failed"
    assert [r["ok"] for r in broken["reports"]] == [True, False]
    assert [r["steps"] for r in broken["reports"]] == [2, 2]
    assert broken["reports"][1]["kinds"] == ["no_grad"]
    finding = broken["reports"][1]["findings"][0]
    assert set(finding) == {"kind", "severity", "where", "step", "value", "threshold", "message"}
    assert {f["where"] for f in broken["reports"][1]["findings"]} == {
        "first.weight",
        "first.bias",
    }


def test_report_is_written_when_no_test_uses_the_fixture(
    strict_pytester: pytest.Pytester,
) -> None:
    strict_pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    strict_pytester.runpytest("--gradient-health-report=health.json").assert_outcomes(passed=1)
    data = json.loads((strict_pytester.path / "health.json").read_text(encoding="utf-8"))
    assert data["tests"] == []


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            'allow=["no_grad", "no_such_kind"]',
            "*allow names unknown finding kinds [[]'no_such_kind'[]]; known kinds: [[]'nan_grad'*",
        ),
        ('allow="no_grad"', "*allow must be a list of finding kinds, not a string*"),
        ("steps=0", "*steps must be a positive integer, got 0*"),
        ("stepz=2", "*unknown argument(s) [[]'stepz'[]]; it takes steps= and allow=*"),
        ("2", "*takes keyword arguments only*"),
    ],
)
def test_bad_marker_arguments_give_a_clear_error(
    strict_pytester: pytest.Pytester, marker: str, message: str
) -> None:
    make_tests(
        strict_pytester,
        f"""
        @pytest.mark.gradient_health({marker})
        def test_marked(gradient_health):
            pass
        """,
    )
    result = strict_pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_marked*", f"*@pytest.mark.gradient_health on*{message}"]
    )
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


def test_unknown_kind_in_assert_healthy_gives_a_clear_error(
    strict_pytester: pytest.Pytester,
) -> None:
    make_tests(
        strict_pytester,
        """
        def test_unknown(gradient_health):
            gradient_health(healthy(), X, Y, steps=1).assert_healthy(allow=["no_such_kind"])
        """,
    )
    result = strict_pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*ValueError: allow names unknown finding kinds [[]'no_such_kind'[]]*"]
    )


# -- torchscope.testing, outside pytest's fixture ----------------------------------------------


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)


class _Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)).detach())


def test_assert_gradients_healthy_returns_the_report_of_a_healthy_model() -> None:
    x, y = _data()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    report = assert_gradients_healthy(model, x, y, steps=2)
    assert isinstance(report, torchscope.GradientReport)
    assert report.ok and report.steps == 2


def test_assert_gradients_healthy_raises_on_a_broken_model() -> None:
    x, y = _data()
    with pytest.raises(GradientHealthError) as info:
        assert_gradients_healthy(_Detached(), x, y, steps=2)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, TorchscopeError)
    assert "no_grad" in str(info.value) and "first.weight" in str(info.value)
    assert info.value.report is not None and info.value.report.kinds == {"no_grad"}
    # the error travels (multiprocessing, xdist) with its report
    assert pickle.loads(pickle.dumps(info.value)).report.kinds == {"no_grad"}


def test_assert_gradients_healthy_allow() -> None:
    x, y = _data()
    model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=-1))
    report = assert_gradients_healthy(
        model, x, y, loss_fn=F.cross_entropy, steps=2, allow=["softmax_into_cross_entropy"]
    )
    assert report.kinds == {"softmax_into_cross_entropy"}


@pytest.mark.parametrize(
    ("allow", "error", "match"),
    [
        (["no_such_kind"], ValueError, r"unknown finding kinds \['no_such_kind'\]; known kinds"),
        ("no_grad", TypeError, r"not a string; write \['no_grad'\]"),
        ([3], TypeError, r"finding kinds as strings, got \[3\]"),
    ],
)
def test_assert_gradients_healthy_checks_allow_before_running(
    allow: object, error: type[Exception], match: str
) -> None:
    class MustNotRun(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the model ran although allow= was invalid")

    x, y = _data()
    with pytest.raises(error, match=match):
        assert_gradients_healthy(MustNotRun(8, 4), x, y, allow=allow)  # type: ignore[arg-type]
