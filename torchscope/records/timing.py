"""The records of timing: :func:`~torchscope.collect.timing.benchmark` gives a
:class:`Measurement`, :func:`~torchscope.collect.timing.time_layers` a :class:`TimingReport`
of per-module times."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope._util.format import format_duration
from torchscope.records._common import SCHEMA_VERSION, _plural, _pretty
from torchscope.records._exporters import exporter

__all__ = ["LayerTiming", "Measurement", "TimingReport"]


@dataclass(frozen=True)
class Measurement:
    """Repeated timings of one piece of work, in seconds.

    Attributes:
        median: the median time of one run.
        iqr: inter-quartile range (75th minus 25th percentile): the spread.
        mean: the mean.
        min: the fastest run.
        n: how many runs were timed (after the warm-up).
        device: where the work ran (``cpu``, ``cuda:0``); CUDA times come from CUDA events.
        times: every timed run, in order.
        label: what was timed.
        flushed_cache: whether a buffer larger than the L2 cache was overwritten between runs.
    """

    median: float
    iqr: float
    mean: float
    min: float
    n: int
    device: str
    times: tuple[float, ...] = ()
    label: str = ""
    flushed_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**{**data, "times": tuple(data.get("times", ()))})

    def __str__(self) -> str:
        return records_text.render_measurement(self)

    def __repr__(self) -> str:
        label = f" {self.label}" if self.label else ""
        return (
            f"<Measurement{label}: median {format_duration(self.median)} "
            f"(IQR {format_duration(self.iqr)}), {_plural(self.n, 'run')} on {self.device}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_measurement(self)


@dataclass(frozen=True)
class LayerTiming:
    """Time spent in one module per training step (all its calls together), in seconds.

    Attributes:
        name: qualified module name (``""``: the root).
        type: class name.
        depth: nesting depth (0: the root).
        calls: calls per step.
        forward: median inclusive forward time (the module and everything it calls).
        forward_iqr: its inter-quartile range over the repetitions.
        forward_self: median forward time outside its child modules.
        backward: median inclusive backward time (from the first to the last autograd node
            its forward created, children's nodes included); 0 without backward.
        backward_iqr: its inter-quartile range.
        backward_self: median time of the backward nodes its own code created.
        share: ``(forward_self + backward_self)`` over the un-instrumented step time.
    """

    name: str
    type: str
    depth: int
    calls: int
    forward: float
    forward_iqr: float
    forward_self: float
    backward: float = 0.0
    backward_iqr: float = 0.0
    backward_self: float = 0.0
    share: float = 0.0

    @property
    def self_time(self) -> float:
        """Forward plus backward self time: what this module's own code costs."""
        return self.forward_self + self.backward_self

    def __repr__(self) -> str:
        where = f"{self.name} ({self.type})" if self.name else self.type
        backward = f", backward {format_duration(self.backward)}" if self.backward else ""
        return (
            f"<LayerTiming {where}: forward {format_duration(self.forward)}{backward}, "
            f"self {format_duration(self.self_time)} ({100 * self.share:.1f}% of the step)>"
        )


@dataclass(frozen=True)
class TimingReport:
    """Per-module forward and backward times of a model, with the report's own accuracy.

    Attributes:
        model_type: class name of the model.
        device: where it ran.
        backward: whether backward passes were timed.
        warmup: untimed steps before the measurement.
        repeat: timed steps.
        layers: one row per module, in the model's order.
        step: the whole step (forward, and backward when timed) without any hooks.
        instrumented_step: the same step with torchscope's timing hooks.
        coverage: the summed inclusive time of the model's direct children over ``step``'s
            median: how much of the step the per-module rows account for.
        overhead_per_call: the instrumentation's measured cost per module call, in seconds.
    """

    model_type: str
    device: str
    backward: bool
    warmup: int
    repeat: int
    layers: tuple[LayerTiming, ...]
    step: Measurement
    instrumented_step: Measurement
    coverage: float
    overhead_per_call: float

    def layer(self, name: str) -> LayerTiming:
        """The row of the module with this qualified name."""
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(
            f"no module {name!r} was timed; modules: {[r.name for r in self.layers][:8]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingReport:
        return cls(
            model_type=data["model_type"],
            device=data["device"],
            backward=data["backward"],
            warmup=data["warmup"],
            repeat=data["repeat"],
            layers=tuple(LayerTiming(**row) for row in data["layers"]),
            step=Measurement.from_dict(data["step"]),
            instrumented_step=Measurement.from_dict(data["instrumented_step"]),
            coverage=data["coverage"],
            overhead_per_call=data["overhead_per_call"],
        )

    def __str__(self) -> str:
        return records_text.render_timing(self)

    def __repr__(self) -> str:
        what = "forward + backward" if self.backward else "forward"
        return (
            f"<TimingReport of {self.model_type} on {self.device}: {what} step median "
            f"{format_duration(self.step.median)}, {_plural(len(self.layers), 'module')}, "
            f"coverage {100 * self.coverage:.1f}%>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_timing(self)

    def log_to(self, writer: Any, step: int = 0) -> None:
        """Write per-module times (``timing/forward/<name>``, ``timing/backward/<name>``, in
        ms) and the table as text to a TensorBoard ``SummaryWriter``."""
        exporter("timing.tensorboard")(self, writer, step)
