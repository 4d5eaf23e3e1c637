"""The gradient-flow chart of a :class:`~torchscope.records.GradientReport` (matplotlib).

Drawn on a ``matplotlib.figure.Figure`` directly (no pyplot): no global figure state, no
display backend, safe from threads.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchscope.records import GradientReport

__all__ = ["plot_gradient_flow"]

_MAX_LABELS = 60  # beyond this many parameters, label every k-th bar


def plot_gradient_flow(report: GradientReport, path: str | os.PathLike[str]) -> str:
    """Per-parameter max and mean |grad| over the observed steps, on a log scale, as bars in
    the model's order (input side left, output side right). Parameters that never got a
    gradient are shaded red; names a finding points at are printed in red. Returns ``str(path)``."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "GradientReport.plot needs matplotlib: pip install 'torchscope[plot]'"
        ) from e

    params = [p for p in report.parameters if p.trainable]
    names = [p.name for p in params]
    means, maxes, missing = [], [], []
    for p in params:
        finite_mean = [v for v in p.grad_mean_abs if math.isfinite(v)]
        finite_max = [v for v in p.grad_max_abs if math.isfinite(v)]
        means.append(sum(finite_mean) / len(finite_mean) if finite_mean else 0.0)
        maxes.append(max(finite_max) if finite_max else 0.0)
        missing.append(not p.steps)
    # log scale: zero gradients are drawn at a floor a decade under the smallest non-zero one
    floor = min((v for v in means + maxes if v > 0), default=1.0) / 10
    means = [max(v, floor) for v in means]
    maxes = [max(v, floor) for v in maxes]
    flagged = {f.where for f in report.findings if f.severity in ("error", "warning")}

    width = min(max(6.0, 0.22 * len(params) + 2), 40.0)
    figure = Figure(figsize=(width, 5.0), layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(params))
    axes.bar(positions, maxes, color="#7fb3d5", label="max |grad|")
    axes.bar(positions, means, color="#1f4e79", label="mean |grad|")
    for k, absent in enumerate(missing):
        if absent:
            axes.axvspan(k - 0.5, k + 0.5, color="#e74c3c", alpha=0.3, lw=0)
    axes.set_yscale("log")
    step = max(1, math.ceil(len(names) / _MAX_LABELS))
    axes.set_xticks(list(positions)[::step], names[::step], rotation=90, fontsize=7)
    for label in axes.get_xticklabels():
        if label.get_text() in flagged:  # named by a finding
            label.set_color("#c0392b")
    axes.set_xlim(-0.5, len(params) - 0.5)
    axes.set_ylabel("|gradient| (over all observed steps)")
    axes.set_title(
        f"Gradient flow: {report.steps} {report.step_unit}(s)"
        + ("" if report.ok else f"; {len(report.kinds)} kind(s) of problem found")
    )
    if any(missing):
        axes.plot([], [], color="#e74c3c", alpha=0.3, lw=8, label="no gradient")
    axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.06), ncols=3, fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(os.fspath(path))
    return os.fspath(path)
