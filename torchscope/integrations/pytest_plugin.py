"""torchscope's pytest plugin (registered under ``pytest11``): gradient health in tests.

- fixture ``gradient_health``: :func:`torchscope.check_gradients` with this test's settings;
  the report it returns honours the marker's ``allow`` in ``assert_healthy()``.
- marker ``@pytest.mark.gradient_health(steps=N, allow=[kinds])``: per-test settings (on a
  class or module too: the closest ``steps`` wins, ``allow`` lists are merged).
- fixture ``preflight``: :func:`torchscope.preflight`, the checks to run on a new model;
- options (group ``torchscope``): ``--gradient-health-steps=N``, the default ``steps``;
  ``--gradient-health-report=PATH``, a JSON file of every finding of the session.

Like Hypothesis's plugin, it does not import torch at pytest start-up: projects that never
use the fixture do not pay for it. Only the fixture imports the rest of torchscope.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchscope.records import GradientReport

__all__ = ["GradientHealthCheck"]

MARKER = "gradient_health"
DEFAULT_STEPS = 3
#: Version of the layout of the ``--gradient-health-report`` file.
REPORT_SCHEMA_VERSION = 1
_SESSION_PLUGIN = "torchscope-gradient-health"


# -- session state -----------------------------------------------------------------------


@dataclasses.dataclass
class _TestEntry:
    """What one test that used the fixture produced, as JSON-ready data."""

    nodeid: str
    outcome: str = "passed"  # "passed", "failed" or "skipped", the worst of its phases
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "passed": self.outcome == "passed",
            "outcome": self.outcome,
            "reports": self.reports,
        }


class _GradientHealthSession:
    """The session's state, and the hooks that need it (registered as a plugin, like junitxml)."""

    def __init__(self, *, default_steps: int, report_path: Path | None) -> None:
        self.default_steps = default_steps
        self.report_path = report_path
        self.tests: dict[str, _TestEntry] = {}  # by nodeid, for the tests that used the fixture

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.get(report.nodeid)
        if entry is None:
            return
        if report.failed:
            entry.outcome = "failed"
        elif report.skipped and entry.outcome == "passed":
            entry.outcome = "skipped"

    def pytest_sessionfinish(self) -> None:
        if self.report_path is None:
            return
        data = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "default_steps": self.default_steps,
            "tests": [entry.to_dict() for entry in self.tests.values()],
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.report_path is not None:
            terminalreporter.write_sep(
                "-", f"torchscope gradient-health report: {self.report_path}"
            )


_SESSION = pytest.StashKey[_GradientHealthSession]()


# -- hooks -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchscope", "torchscope gradient health")
    group.addoption(
        "--gradient-health-steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"training steps the gradient_health fixture runs by default (default {DEFAULT_STEPS})",
    )
    group.addoption(
        "--gradient-health-report",
        default=None,
        metavar="PATH",
        help="write the findings of every test that used the gradient_health fixture to this "
        "JSON file",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(steps=None, allow=()): settings of the gradient_health fixture for this "
        "test: training steps, and finding kinds that assert_healthy() does not count",
    )
    steps = config.getoption("--gradient-health-steps")
    if steps < 1:
        raise pytest.UsageError(f"--gradient-health-steps must be at least 1, got {steps}")
    path = config.getoption("--gradient-health-report")
    # resolved now: a test that changes the working directory must not move the report
    report_path = None if path is None else config.invocation_params.dir / Path(path).expanduser()
    session = _GradientHealthSession(default_steps=steps, report_path=report_path)
    config.stash[_SESSION] = session
    config.pluginmanager.register(session, _SESSION_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        del config.stash[_SESSION]
        config.pluginmanager.unregister(session)


# -- the fixture -------------------------------------------------------------------------


class GradientHealthCheck:
    """What the ``gradient_health`` fixture returns: ``check_gradients`` with the test's settings.

    Attributes:
        steps: training steps of a call that passes no ``steps`` (marker, else option).
        allow: finding kinds from the marker that the reports' ``assert_healthy()`` ignores.
        reports: the reports made so far in this test.
    """

    def __init__(
        self, *, steps: int, allow: tuple[str, ...], entry: _TestEntry | None = None
    ) -> None:
        self.steps = steps
        self.allow = allow
        self.reports: list[GradientReport] = []
        self._entry = entry

    def __call__(
        self,
        model: nn.Module,
        inputs: Any,
        target: Any = None,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        steps: int | None = None,
    ) -> GradientReport:
        """Return :func:`torchscope.check_gradients`'s report; ``assert_healthy()`` on it also
        ignores the kinds the marker allows."""
        __tracebackhide__ = True
        # imported on use, not at module level: pytest loads this plugin at start-up
        from torchscope.collect.gradients import check_gradients

        report = check_gradients(
            model,
            inputs,
            target,
            loss_fn=loss_fn,
            optimizer=optimizer,
            steps=self.steps if steps is None else steps,
        )
        marked = _with_marker_allow(report, self.allow)
        self.reports.append(marked)
        if self._entry is not None:
            self._entry.reports.append(
                {
                    "steps": report.steps,
                    "ok": report.ok,
                    "kinds": sorted(report.kinds),
                    "findings": [finding.to_dict() for finding in report.findings],
                }
            )
        return marked

    def __repr__(self) -> str:
        return f"GradientHealthCheck(steps={self.steps}, allow={list(self.allow)})"


@pytest.fixture
def gradient_health(request: pytest.FixtureRequest) -> GradientHealthCheck:
    """A callable like ``check_gradients(model, inputs, target=None, *, loss_fn=None,
    optimizer=None, steps=None)`` that returns the report; ``.assert_healthy()`` fails the test.

    ``steps`` defaults to the ``gradient_health`` marker's, then to ``--gradient-health-steps``;
    ``assert_healthy(allow=...)`` also ignores the kinds in the marker's ``allow``.
    """
    session = request.config.stash[_SESSION]
    # registered before the marker is checked, so that a setup error is in the JSON report too
    entry = session.tests.setdefault(request.node.nodeid, _TestEntry(request.node.nodeid))
    steps, allow = _marker_settings(request.node)
    return GradientHealthCheck(
        steps=session.default_steps if steps is None else steps, allow=allow, entry=entry
    )


@pytest.fixture
def preflight() -> Callable[..., Any]:
    """:func:`torchscope.preflight` (imported when a test asks for it):
    ``preflight(model, inputs, target, loss_fn=...).raise_if_unhealthy()`` fails the test
    with the table of checks."""
    from torchscope.collect.preflight import preflight as run

    return run


def _marker_settings(node: pytest.Item) -> tuple[int | None, tuple[str, ...]]:
    """The closest marker's ``steps`` and the union of every marker's ``allow``."""
    # imported on use, like everything of torchscope's here: pytest start-up stays lean
    from torchscope.records import finding_kinds

    steps: int | None = None
    allow: list[str] = []
    for marker in node.iter_markers(MARKER):  # closest first
        where = f"@pytest.mark.{MARKER} on {node.nodeid}"
        if marker.args:
            pytest.fail(
                f"{where} takes keyword arguments only (steps=..., allow=[...]), got "
                f"positional {list(marker.args)!r}",
                pytrace=False,
            )
        unexpected = sorted(set(marker.kwargs) - {"steps", "allow"})
        if unexpected:
            pytest.fail(
                f"{where}: unknown argument(s) {unexpected}; it takes steps= and allow=",
                pytrace=False,
            )
        marker_steps = marker.kwargs.get("steps")
        if marker_steps is not None:
            if (
                not isinstance(marker_steps, int)
                or isinstance(marker_steps, bool)
                or marker_steps < 1
            ):
                pytest.fail(
                    f"{where}: steps must be a positive integer, got {marker_steps!r}",
                    pytrace=False,
                )
            if steps is None:
                steps = marker_steps
        try:
            kinds = finding_kinds(marker.kwargs.get("allow", ()), source=f"{where}: allow")
        except (TypeError, ValueError) as e:
            problem = str(e)
        else:
            allow.extend(kind for kind in kinds if kind not in allow)
            continue
        pytest.fail(problem, pytrace=False)  # outside `except`: no chained traceback
    return steps, tuple(allow)


# -- the report whose assert_healthy() also honours the marker ------------------------------


def _with_marker_allow(report: GradientReport, allow: tuple[str, ...]) -> GradientReport:
    # imported here: pytest start-up loads no record (see the module docstring)
    from torchscope.integrations._pytest_report import MarkedGradientReport

    fields = {field.name: getattr(report, field.name) for field in dataclasses.fields(report)}
    return MarkedGradientReport(**fields, allowed_by_marker=allow)
