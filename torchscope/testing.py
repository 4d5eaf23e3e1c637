"""Assertions for test suites, with or without pytest.

Inside pytest, the ``gradient_health`` fixture of :mod:`torchscope.integrations.pytest_plugin` does the same
with per-test settings from the ``gradient_health`` marker; this module serves other runners
(unittest, a script, a notebook).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchscope.collect.gradients import check_gradients
from torchscope.records import GradientReport, finding_kinds

__all__ = ["assert_gradients_healthy"]


def assert_gradients_healthy(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 3,
    allow: Iterable[str] = (),
) -> GradientReport:
    """Return the gradient report of a few training steps, or raise if it is unhealthy.

    Runs :func:`torchscope.check_gradients` (on copies of the model and the optimizer), then
    :meth:`GradientReport.assert_healthy`.

    Args:
        model, inputs, target, loss_fn, optimizer, steps: as for
            :func:`torchscope.check_gradients`.
        allow: finding kinds (see :data:`torchscope.records.FINDING_KINDS`) that do not count.

    Raises:
        GradientHealthError: errors or warnings were found; its message is the findings table.
            It is also an ``AssertionError``.
        ValueError: ``allow`` names an unknown kind (checked before the model runs).
    """
    __tracebackhide__ = True  # under pytest, a failure shows the caller's line, not ours
    allowed = finding_kinds(allow)
    report = check_gradients(
        model, inputs, target, loss_fn=loss_fn, optimizer=optimizer, steps=steps
    )
    report.assert_healthy(allowed)
    return report
