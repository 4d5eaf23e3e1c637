"""Where a gradient statistic becomes a finding: :class:`GradientThresholds`, user-overridable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["GradientThresholds", "resolve_thresholds"]


@dataclass(frozen=True)
class GradientThresholds:
    """Where a statistic becomes a finding; override any field with ``thresholds={...}``.

    Attributes:
        exploding_norm: a parameter whose gradient L2 norm exceeds this in any step.
        vanishing_ratio: a parameter whose gradient RMS, in the median step, is below this
            fraction of the largest gradient RMS of any parameter in the same step.
        dead_fraction: a ReLU site where at least this fraction of units never fired.
        dead_min_observations: observations per unit (samples x positions) needed before a
            unit that never fired counts as dead.
        not_updated_min_change: a step counts against ``not_updated`` only when the expected
            change (lr x the smaller of ||grad|| and sqrt(numel)) is at least this fraction of
            the weight norm: smaller updates can round away in floating point.
        softmax_tolerance: how close to 1 the rows of a ``cross_entropy`` input must sum to be
            taken for probabilities.
        tiny_update_ratio: an optimizer step whose median ||change|| / ||weight|| over the
            weight matrices is below this barely moves them (healthy training is about 1e-3
            and up); ``tiny_updates`` and its causes need it in most steps and a loss that
            improved by less than ``min_loss_improvement``.
        min_loss_improvement: the fraction by which the training loss must fall (first tenth
            of the steps against the last quarter) for small updates to count as learning.
        saturated_fraction: a tanh/sigmoid site with at least this fraction of its outputs
            within 0.01 of the limits is saturated.
    """

    exploding_norm: float = 1e3
    vanishing_ratio: float = 1e-6
    dead_fraction: float = 0.5
    dead_min_observations: int = 8
    not_updated_min_change: float = 1e-5
    softmax_tolerance: float = 1e-3
    tiny_update_ratio: float = 1e-3
    min_loss_improvement: float = 0.2
    saturated_fraction: float = 0.5


def resolve_thresholds(
    value: GradientThresholds | Mapping[str, float] | None,
) -> GradientThresholds:
    if value is None:
        return GradientThresholds()
    if isinstance(value, GradientThresholds):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"thresholds must be a GradientThresholds or a dict, got {type(value).__name__}"
        )
    known = [f.name for f in fields(GradientThresholds)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; known ones are {known}")
    for key, number in value.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
            raise ValueError(f"threshold {key!r} must be a non-negative number, got {number!r}")
    return GradientThresholds(**value)  # type: ignore[arg-type]
