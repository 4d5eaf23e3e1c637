"""The gradient rules: one function per finding kind, registered with :func:`rule`.

A rule takes the :class:`~torchscope.collect.gradients.evidence.Evidence` of one monitored
run and yields the findings of its kind. A new kind is one function here (in the
``rules/`` module of its family), its pair of tests (a bug and its fixed twin) and one row
in ``docs/gradients.md``; nothing else needs to know about it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torchscope.collect.gradients.evidence import Evidence
from torchscope.records import FINDING_KINDS, Finding

__all__ = ["RULES", "Rule", "rule"]

RuleFunction = Callable[[Evidence], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    kind: str
    check: RuleFunction


#: Finding kind -> its rule, in registration order.
RULES: dict[str, Rule] = {}


def rule(kind: str) -> Callable[[RuleFunction], RuleFunction]:
    """Register the decorated function as the rule that finds ``kind``."""
    if kind not in FINDING_KINDS:
        raise ValueError(f"{kind!r} is not a documented finding kind (records.FINDING_KINDS)")

    def register(check: RuleFunction) -> RuleFunction:
        if kind in RULES:
            raise ValueError(
                f"two rules find {kind!r}: {RULES[kind].check.__name__} and {check.__name__}"
            )
        RULES[kind] = Rule(kind, check)
        return check

    return register
