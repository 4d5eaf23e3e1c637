"""The gradient-flow chart of a :class:`~torchscope.records.GradientReport` (matplotlib).

Drawn on a ``matplotlib.figure.Figure`` directly (no pyplot): no global figure state, no
display backend, safe from threads. The figure is sized from what it shows (bar count, the
longest tick label) and laid out by matplotlib's constrained layout engine, then measured:
nothing (title, legend, tick labels, axis label) is left outside the canvas.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from torchscope.records import GradientReport, ParameterHistory

__all__ = ["MAX_BARS", "gradient_flow_figure", "plot_gradient_flow"]

MAX_BARS = 300  # beyond this many parameters, bars are modules (parameters aggregated)
_LABEL_CHARS = 48  # longer tick labels are shortened in the middle
_LABEL_FONT = 7.0  # points
_BAR_PITCH = 0.15  # inches per bar: room for one 7 pt rotated label each
_LEGEND_NAMES = 3  # no-gradient names listed in the legend

# the markers drawn at the x axis where there is no bar to draw
# (marker, colour, legend entry)
_MARKERS = {
    "none": ("x", "#c0392b", "no gradient"),
    "zero": ("o", "#7f8c8d", "zero gradient"),
    "nonfinite": ("^", "#8e44ad", "only NaN/Inf gradients"),
}


@dataclass(frozen=True)
class _Bar:
    """One bar of the chart: a parameter, or a module's parameters aggregated."""

    label: str
    names: tuple[str, ...]  # the parameters it stands for
    mean: float | None  # None: nothing finite and non-zero to draw
    max: float | None
    status: str | None  # a key of _MARKERS, or None for a plain bar
    missing: tuple[str, ...]  # parameters among ``names`` that never got a gradient


def plot_gradient_flow(report: GradientReport, path: str | os.PathLike[str]) -> str:
    """Draw :func:`gradient_flow_figure` to ``path`` (png, svg, pdf: by suffix); returns ``str(path)``."""
    figure = gradient_flow_figure(report)
    figure.savefig(os.fspath(path))
    return os.fspath(path)


def gradient_flow_figure(report: GradientReport) -> Figure:
    """The gradient-flow chart as a matplotlib ``Figure``: per parameter, in the model's order
    (input side left, output side right), the max and mean |grad| over the observed steps as
    bars on a log scale.

    A parameter that never got a gradient has no bar: a red ``x`` at the x axis marks it and the
    legend names it; all-zero gradients get a grey ``o``, gradients that were never finite a
    ``^``. Names a finding points at are printed in red. Above :data:`MAX_BARS` parameters, each
    bar is a module (the parameters under one module path, at the deepest path level that gives
    at most ``MAX_BARS`` bars): max of the maxes, mean |grad| over all their elements.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.font_manager import FontProperties
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.transforms import blended_transform_factory
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("GradientReport.plot needs matplotlib: pip install matplotlib") from e

    params = [p for p in report.parameters if p.trainable]
    aggregated = len(params) > MAX_BARS
    bars = _module_bars(params) if aggregated else [_parameter_bar(p) for p in params]
    flagged = {f.where for f in report.findings if f.severity in ("error", "warning")}

    labels = [_shorten(bar.label) for bar in bars]
    figure = Figure(figsize=(6.0, 5.0), layout="constrained")
    renderer = FigureCanvasAgg(figure).get_renderer()  # measures text, as the saved file will
    axes = figure.add_subplot()

    # (position, max, mean) of the bars with something to draw
    drawn = [(k, bar.max, bar.mean) for k, bar in enumerate(bars) if bar.max is not None]
    values = [v for _, peak, mean in drawn for v in (peak, mean) if v is not None and v > 0]
    floor = min(values, default=1e-3) / 10  # the axis starts a decade under the smallest value
    axes.set_yscale("log")
    if drawn:
        positions = [k for k, _, _ in drawn]
        axes.bar(positions, [peak for _, peak, _ in drawn], color="#7fb3d5")
        axes.bar(positions, [mean or floor for _, _, mean in drawn], color="#1f4e79")
        axes.set_ylim(bottom=floor, top=max(values) * 3)
    else:
        axes.set_ylim(1e-3, 1.0)
    handles: list[Patch | Line2D] = [
        Patch(color="#7fb3d5", label="max |grad|"),
        Patch(color="#1f4e79", label="mean |grad|"),
    ]

    # no bar where there is nothing to draw: a marker sits on the x axis instead
    at_axis = blended_transform_factory(axes.transData, axes.transAxes)
    for status, (marker, color, label) in _MARKERS.items():
        where = [
            k
            for k, bar in enumerate(bars)
            if bar.status == status or (status == "none" and bar.missing)
        ]
        if not where:
            continue
        if status == "none":
            missing = [name for bar in bars for name in bar.missing]
            shown = ", ".join(_shorten(n) for n in missing[:_LEGEND_NAMES])
            more = len(missing) - _LEGEND_NAMES
            label = f"{label} ({len(missing)}): {shown}" + (f" and {more} more" if more > 0 else "")
        (line,) = axes.plot(
            where,
            [0.03] * len(where),
            transform=at_axis,
            linestyle="none",
            marker=marker,
            color=color,
            fillstyle="none",
            markersize=7,
            markeredgewidth=1.6,
            clip_on=False,
            label=label,
        )
        handles.append(line)

    if bars:
        axes.set_xticks(range(len(bars)), labels, rotation=90, fontsize=_LABEL_FONT)
        for tick, bar in zip(axes.get_xticklabels(), bars, strict=True):
            if flagged.intersection(bar.names):  # named by a finding
                tick.set_color("#c0392b")
        axes.set_xlim(-0.5, len(bars) - 0.5)
    else:
        axes.set_xticks([])
        axes.text(
            0.5, 0.5, "no trainable parameters", transform=axes.transAxes, ha="center", va="center"
        )
    axes.set_ylabel("|gradient| over the steps")
    axes.set_title(
        f"Gradient flow: {report.steps} {report.step_unit}(s)"
        + (f", {len(params)} parameters by module" if aggregated else "")
        + ("" if report.ok else f"; {len(report.kinds)} kind(s) of problem found"),
        fontsize=11,
    )
    legend = figure.legend(
        handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False
    )
    axes.grid(axis="y", alpha=0.3)
    # Constrained layout shrinks the axes to make room for the labels around them, but cannot
    # make the figure bigger: size it from the measured labels, so all of them fit
    dpi = figure.dpi
    font = FontProperties(size=_LABEL_FONT)
    label_widths = [renderer.get_text_width_height_descent(s, font, False)[0] for s in labels]
    label_width = max(label_widths, default=0.0) / dpi  # the height of the rotated tick labels
    legend_box = legend.get_window_extent(renderer)
    title_box = axes.title.get_window_extent(renderer)
    width = max(
        min(max(6.0, _BAR_PITCH * len(bars) + 2.5), _BAR_PITCH * MAX_BARS + 2.5),
        legend_box.width / dpi + 0.5,
        title_box.width / dpi + 1.5,  # the y axis's labels on its left
    )
    height = 3.0 + label_width + (legend_box.height + 2 * title_box.height) / dpi + 0.8
    figure.set_size_inches(width, height)
    return figure


def _shorten(name: str) -> str:
    if len(name) <= _LABEL_CHARS:
        return name
    keep = _LABEL_CHARS - 1
    return name[: keep // 2] + "\u2026" + name[len(name) - (keep - keep // 2) :]


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _parameter_bar(p: ParameterHistory) -> _Bar:
    if not p.steps:
        return _Bar(p.name, (p.name,), None, None, "none", (p.name,))
    means, maxes = _finite(p.grad_mean_abs), _finite(p.grad_max_abs)
    if not maxes:
        return _Bar(p.name, (p.name,), None, None, "nonfinite", ())
    if max(maxes) == 0:
        return _Bar(p.name, (p.name,), None, None, "zero", ())
    mean = sum(means) / len(means) if means else None
    return _Bar(p.name, (p.name,), mean, max(maxes), None, ())


def _module_bars(params: Sequence[ParameterHistory]) -> list[_Bar]:
    """One bar per module, at the deepest module-path level with at most MAX_BARS of them."""
    depth = max(len(p.name.split(".")) for p in params) - 1  # the parameters' own modules
    while True:
        groups: dict[str, list[ParameterHistory]] = {}
        for p in params:
            module = ".".join(p.name.split(".")[:-1][:depth]) or "(root)"
            groups.setdefault(module, []).append(p)
        if len(groups) <= MAX_BARS or depth == 0:
            break
        depth -= 1
    return [_aggregate(module, members) for module, members in groups.items()]


def _aggregate(module: str, members: list[ParameterHistory]) -> _Bar:
    parts = [(p, _parameter_bar(p)) for p in members]
    names = tuple(p.name for p in members)
    missing = tuple(name for _, bar in parts for name in bar.missing)
    label = f"{module} ({len(members)})"
    with_max = [(p, bar) for p, bar in parts if bar.max is not None]
    if not with_max:
        statuses = {bar.status for _, bar in parts}
        status = "none" if statuses == {"none"} else "zero" if "zero" in statuses else "nonfinite"
        return _Bar(label, names, None, None, status, missing)
    # mean |grad| over all the elements of the module's parameters that got one
    weighted = [(p.numel, bar.mean) for p, bar in with_max if bar.mean is not None]
    elements = sum(n for n, _ in weighted)
    mean = sum(n * m for n, m in weighted) / elements if elements else None
    return _Bar(label, names, mean, max(bar.max for _, bar in with_max if bar.max), None, missing)
