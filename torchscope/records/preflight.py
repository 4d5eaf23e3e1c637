"""The record of a preflight check: the checks a practitioner runs by hand before training a
new model, each with what was measured, what was expected and a verdict."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from torchscope.errors import PreflightError
from torchscope.records import _html as records_html
from torchscope.records._common import SCHEMA_VERSION, _pretty
from torchscope.records.gradients import Finding

__all__ = ["CHECK_NAMES", "VERDICTS", "PreflightCheck", "PreflightReport"]

#: the checks, in the order they run and are shown
CHECK_NAMES = (
    "init_loss",
    "gradients",
    "batch_independence",
    "input_dependence",
    "overfit",
    "loss_contract",
)
#: most severe first: "fail" is a bug, "warn" suspicious, "skip" not applicable here
VERDICTS = ("fail", "warn", "pass", "skip")


@dataclass(frozen=True)
class PreflightCheck:
    """One check: ``measured`` against ``expected`` (a sentence), the ``verdict`` and a
    message that says what it means and what to do."""

    name: str
    verdict: str
    measured: float | None
    expected: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.verdict.upper()}: {self.message}"


@dataclass(frozen=True)
class PreflightReport:
    """What :func:`torchscope.preflight` found; ``str()`` gives a table.

    Attributes:
        checks: one per check, in :data:`CHECK_NAMES` order.
        findings: what the gradient monitor found while the copy overfit one batch.
        steps: the optimizer steps of that run.
    """

    checks: tuple[PreflightCheck, ...]
    findings: tuple[Finding, ...] = ()
    steps: int = 0

    @property
    def failed(self) -> tuple[str, ...]:
        """The names of the checks that failed or warned."""
        return tuple(c.name for c in self.checks if c.verdict in ("fail", "warn"))

    @property
    def ok(self) -> bool:
        """No check failed or warned (skipped checks do not count)."""
        return not self.failed

    def check(self, name: str) -> PreflightCheck:
        """The check called ``name`` (one of :data:`CHECK_NAMES`)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; the checks are {', '.join(CHECK_NAMES)}")

    def raise_if_unhealthy(self) -> None:
        """Raise :class:`~torchscope.errors.PreflightError` (the table) unless ok."""
        __tracebackhide__ = True
        if not self.ok:
            raise PreflightError(str(self), self)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreflightReport:
        return cls(
            checks=tuple(PreflightCheck(**c) for c in data["checks"]),
            findings=tuple(Finding(**f) for f in data.get("findings", ())),
            steps=data.get("steps", 0),
        )

    def _rows(self) -> list[list[str]]:
        return [
            [
                c.name,
                c.verdict.upper() if c.verdict in ("fail", "warn") else c.verdict,
                "" if c.measured is None else f"{c.measured:.4g}",
                c.expected,
                c.message,
            ]
            for c in self.checks
        ]

    def _headline(self) -> str:
        if self.ok:
            return f"Preflight: all {sum(c.verdict == 'pass' for c in self.checks)} checks passed"
        return f"Preflight: {len(self.failed)} check(s) failed: {', '.join(self.failed)}"

    def __str__(self) -> str:
        text = tabulate(
            self._rows(),
            headers=["check", "verdict", "measured", "expected", "what it means"],
            tablefmt="simple",
            maxcolwidths=[None, None, None, 28, 60],
        )
        lines = [self._headline(), text]
        severe = [f for f in self.findings if f.severity in ("error", "warning")]
        if severe:
            lines.append(
                f"The gradient monitor, while the copy overfit one batch ({self.steps} steps):"
            )
            lines.extend(f"  {f.severity} {f.kind} at {f.where}: {f.message}" for f in severe)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<PreflightReport: {'ok' if self.ok else 'failed: ' + ', '.join(self.failed)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.table(
            ["check", "verdict", "measured", "expected", "what it means"],
            self._rows(),
            css_class="torchscope-preflight",
            title=self._headline(),
            notes=[f"{f.severity} {f.kind} at {f.where}: {f.message}" for f in self.findings],
            right=[2],
        )
