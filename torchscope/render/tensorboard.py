"""Writing records to TensorBoard through a ``SummaryWriter`` (or anything with its methods)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from torchscope.render.text import render_gradient_report

if TYPE_CHECKING:
    from torchscope.records import GradientReport

__all__ = ["log_gradient_report"]


def log_gradient_report(report: GradientReport, writer: Any) -> None:
    """Per parameter and step: ``gradients/norm/<name>`` and ``gradients/update_ratio/<name>``
    scalars; per step: a histogram of log10 gradient norms over parameters; the loss; and the
    findings table as text (``gradients/findings``)."""
    per_step: dict[int, list[float]] = {}
    for p in report.parameters:
        for step, norm, ratio in zip(p.steps, p.grad_norm, p.update_ratio, strict=True):
            writer.add_scalar(f"gradients/norm/{p.name}", norm, step)
            if ratio is not None:
                writer.add_scalar(f"gradients/update_ratio/{p.name}", ratio, step)
            if norm > 0 and math.isfinite(norm):
                per_step.setdefault(step, []).append(math.log10(norm))
    for step, values in sorted(per_step.items()):
        writer.add_histogram("gradients/log10_norm", torch.tensor(values), step)
    for k, loss in enumerate(report.losses):
        writer.add_scalar("gradients/loss", loss, k)
    writer.add_text("gradients/findings", render_gradient_report(report, markdown=True))
