"""The gradient report that the pytest plugin's fixture returns: it honours the test's marker.

A module of its own so that pytest start-up (which loads :mod:`torchscope.integrations.pytest_plugin`)
imports no record, and so that pickle finds the class by its plain module path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torchscope.records import GradientReport

__all__ = ["MarkedGradientReport"]


# repr=False: keep GradientReport's one-line repr (a generated one lists every field)
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class MarkedGradientReport(GradientReport):
    """A :class:`GradientReport` whose ``assert_healthy`` also ignores the kinds that the
    test's ``gradient_health`` marker allows."""

    allowed_by_marker: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def assert_healthy(self, allow: Sequence[str] = ()) -> None:
        __tracebackhide__ = True  # the failure shows the test's line, not the plugin's
        super().assert_healthy((*allow, *self.allowed_by_marker))

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        del data["allowed_by_marker"]  # the layout stays that of GradientReport
        return data
