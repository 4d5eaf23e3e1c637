"""Every gradient rule, one module per family; :func:`judge` runs them all on one run.

Importing this package registers the rules (see :mod:`..registry`).
"""

from __future__ import annotations

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.observations import Observations
from torchscope.collect.gradients.registry import RULES
from torchscope.collect.gradients.rules import (
    flow,
    forward,
    loop,
    losses,
    nonfinite,
    steps,
    structure,
    updates,
)
from torchscope.records import SEVERITIES, Finding

__all__ = ["judge"]

_FAMILIES = (
    nonfinite,
    flow,
    updates,
    steps,
    forward,
    losses,
    loop,
    structure,
)  # imported for their registrations


def judge(evidence: Evidence | Observations) -> tuple[Finding, ...]:
    """Every rule's findings on one run, most severe and earliest first."""
    if isinstance(evidence, Observations):
        evidence = Evidence(evidence)
    findings = [finding for r in RULES.values() for finding in r.check(evidence)]
    return tuple(
        sorted(
            findings,
            key=lambda f: (
                SEVERITIES.index(f.severity),
                f.step if f.step is not None else -1,
                f.kind,
            ),
        )
    )
