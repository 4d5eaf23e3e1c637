"""The records of the gradient monitor: the finding kinds, one finding, one parameter's
history, and the gradient report with its health checks."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope.errors import GradientHealthError
from torchscope.records._common import SCHEMA_VERSION, Shape, _plural, _pretty, _short
from torchscope.records._exporters import exporter

__all__ = [
    "FINDING_KINDS",
    "SEVERITIES",
    "Finding",
    "GradientReport",
    "ParameterHistory",
    "finding_kinds",
]


#: The kinds of gradient-health finding, as stable strings (see docs/gradients.md).
FINDING_KINDS = (
    "nan_grad",
    "inf_grad",
    "nonfinite_loss",
    "nonfinite_activation",
    "no_grad",
    "zero_grad",
    "vanishing",
    "exploding",
    "dead_activation",
    "not_updated",
    "frozen_but_updated",
    "grad_accumulation",
    "eval_mode",
    "softmax_into_cross_entropy",
    "batchnorm_batch_of_one",
    # gradient health v2: the bugs of real training loops
    "unregistered_module",
    "unregistered_tensor",
    "probabilities_into_logits_loss",
    "softmax_wrong_dim",
    "clipped_logits",
    "loss_broadcast",
    "tiny_updates",
    "lr_collapsed",
    "clipped_to_nothing",
    "step_without_backward",
    "accumulation_not_scaled",
    "weight_decay_collapse",
    "saturated_activation",
    "symmetric_weights",
    "loss_at_chance",
    "batch_mixing",
)
#: Finding severities, most severe first; ``error`` and ``warning`` make a report unhealthy.
SEVERITIES = ("error", "warning", "info")


def finding_kinds(allow: Iterable[str], *, source: str = "allow") -> tuple[str, ...]:
    """``allow`` as a tuple, or a TypeError/ValueError if it is not a collection of known
    finding kinds; ``source`` names the argument in the messages (the pytest plugin passes
    the marker)."""
    # a bare string would otherwise be read as its characters: "no_grad" -> "n", "o", ...
    if isinstance(allow, str):
        raise TypeError(
            f"{source} must be a list of finding kinds, not a string; write [{allow!r}]"
        )
    kinds = tuple(allow)
    not_strings = [kind for kind in kinds if not isinstance(kind, str)]
    if not_strings:
        raise TypeError(f"{source} must hold finding kinds as strings, got {not_strings!r}")
    unknown = sorted(set(kinds) - set(FINDING_KINDS))
    if unknown:
        raise ValueError(
            f"{source} names unknown finding kinds {unknown}; known kinds: {list(FINDING_KINDS)}"
        )
    return kinds


@dataclass(frozen=True)
class Finding:
    """One thing the gradient monitor found.

    Attributes:
        kind: one of :data:`FINDING_KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        where: the parameter or module path it concerns (``"loss"``, ``"optimizer"`` or
            ``"<model>"`` when it concerns no single one).
        step: the step it was first seen in (0-based), None when it concerns the whole run.
        value: the measured value that crossed the threshold, if there is one.
        threshold: the threshold it crossed, if there is one.
        message: what was seen and its likely cause.
    """

    kind: str
    severity: str
    where: str
    step: int | None
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _headline(self) -> str:
        step = "" if self.step is None else f", step {self.step}"
        return f"{self.severity} {self.kind} at {self.where}{step}"

    def __str__(self) -> str:
        return f"{self._headline()}: {self.message}"

    def __repr__(self) -> str:
        return f"<Finding {self._headline()}: {_short(self.message)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)


@dataclass(frozen=True)
class ParameterHistory:
    """Per-step gradient statistics of one parameter (for plots and TensorBoard).

    ``steps[k]`` is the step of the k-th entry of every series; steps where the parameter had
    no gradient are absent. ``update_ratio`` is ``||change|| / ||weight||`` of the optimizer
    step (None when no optimizer step was observed for it).
    """

    name: str
    shape: Shape
    numel: int
    trainable: bool
    steps: tuple[int, ...]
    grad_norm: tuple[float, ...]
    grad_mean_abs: tuple[float, ...]
    grad_max_abs: tuple[float, ...]
    update_ratio: tuple[float | None, ...]

    def __repr__(self) -> str:
        last = f", last grad norm {self.grad_norm[-1]:.3g}" if self.grad_norm else ""
        return (
            f"<ParameterHistory {self.name} {list(self.shape)}: "
            f"{_plural(len(self.steps), 'step')} with a gradient{last}>"
        )


@dataclass(frozen=True)
class GradientReport:
    """What a :class:`~torchscope.collect.gradients.GradientMonitor` saw; ``str()`` gives a table.

    Attributes:
        findings: most severe first, then by step.
        parameters: the history of every parameter, in the model's order.
        steps: optimizer steps observed (backward passes, when no optimizer stepped).
        backward_passes: backward passes observed.
        losses: the loss of every backward pass, in order. A run longer than 2048 steps
            keeps the losses of evenly spaced steps (every 2nd, 4th, ...; the monitor's
            memory stays bounded): ``loss_steps`` says which.
        step_unit: what a step is: ``"optimizer step"`` or ``"backward pass"``.
        loss_steps: the step of each value in ``losses``.
    """

    findings: tuple[Finding, ...]
    parameters: tuple[ParameterHistory, ...]
    steps: int
    backward_passes: int
    losses: tuple[float, ...] = ()
    step_unit: str = "optimizer step"
    loss_steps: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        """True when there is no error and no warning (``info`` findings do not count)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def kinds(self) -> set[str]:
        """The kinds of the errors and warnings found."""
        return {f.kind for f in self.findings if f.severity in ("error", "warning")}

    @property
    def history(self) -> dict[str, ParameterHistory]:
        """Per-parameter history by qualified name."""
        return {p.name: p for p in self.parameters}

    def filtered(self, allow: Sequence[str] = ()) -> GradientReport:
        """The same report without findings of the kinds in ``allow``."""
        allowed = set(finding_kinds(allow))
        kept = tuple(f for f in self.findings if f.kind not in allowed)
        return dataclasses.replace(self, findings=kept)

    def raise_if_unhealthy(self) -> None:
        """Raise :class:`~torchscope.errors.GradientHealthError` (the findings table) unless ok."""
        # a failing test shows the user's line and the findings table, not this frame (pytest)
        __tracebackhide__ = True
        if not self.ok:
            raise GradientHealthError(records_text.render_gradient_report(self), self)

    def assert_healthy(self, allow: Sequence[str] = ()) -> None:
        """Like :meth:`raise_if_unhealthy`, ignoring the finding kinds in ``allow``."""
        __tracebackhide__ = True
        self.filtered(allow).raise_if_unhealthy()

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradientReport:
        def history(d: dict[str, Any]) -> ParameterHistory:
            values: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            }
            return ParameterHistory(**values)

        return cls(
            findings=tuple(Finding(**f) for f in data["findings"]),
            parameters=tuple(history(p) for p in data["parameters"]),
            steps=data["steps"],
            backward_passes=data["backward_passes"],
            losses=tuple(data.get("losses", ())),
            step_unit=data.get("step_unit", "optimizer step"),
            loss_steps=tuple(data.get("loss_steps", ())),
        )

    def __str__(self) -> str:
        return records_text.render_gradient_report(self)

    def __repr__(self) -> str:
        counts = [
            _plural(n, severity)
            for severity, n in (
                ("error", sum(f.severity == "error" for f in self.findings)),
                ("warning", sum(f.severity == "warning" for f in self.findings)),
                ("note", sum(f.severity == "info" for f in self.findings)),
            )
            if n
        ]
        verdict = "healthy" if self.ok else ", ".join(c for c in counts if "note" not in c)
        notes = [c for c in counts if "note" in c]
        verdict = ", ".join([verdict, *notes])
        span = (
            _plural(self.backward_passes, "backward pass", "backward passes")
            if self.step_unit == "backward pass"
            else _plural(self.steps, "step")
        )
        return f"<GradientReport: {verdict} over {span}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_gradient_report(self)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Draw the gradient-flow chart (per-layer mean and max |grad|) to ``path``; needs
        matplotlib. The format follows the suffix (png, svg, pdf). Returns the path."""
        # matplotlib is optional: the exporter (and matplotlib) load only when asked
        plot: Callable[..., str] = exporter("gradients.plot")
        return plot(self, path)

    def log_to(self, writer: Any) -> None:
        """Write per-parameter scalars, histograms and the findings to a TensorBoard
        ``SummaryWriter`` (or anything with ``add_scalar``/``add_histogram``/``add_text``)."""
        exporter("gradients.tensorboard")(self, writer)  # tensorboard is optional
