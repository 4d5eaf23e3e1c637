"""GradientMonitor(max_copy_bytes=...): how far a step moves the weights, measured on a sample
of each parameter where a copy of them all cannot be afforded, or not at all."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from torchscope import GradientMonitor
from torchscope.collect.gradients.optimizer_hooks import MIN_SAMPLE, copy_every, sample_stride

from .bugs import BUGS
from .test_gradients import CLEAN, monitored

# the kinds that read how far the weights moved: not judged without a copy
MOVE_KINDS = {
    "frozen_but_updated",
    "tiny_updates",
    "clipped_to_nothing",
    "lr_collapsed",
    "weight_decay_collapse",
    "symmetric_weights",
}


def _bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_every_planted_bug_is_named_from_a_sample_of_the_weights(bug):
    setup = bug.setup()
    budget = _bytes(setup.model) // 16  # every 16th element of each parameter
    report = monitored(setup, bug.loop, max_copy_bytes=budget, **bug.monitor)
    assert report.kinds == {bug.kind}, str(report)


@pytest.mark.parametrize("name", list(CLEAN))
def test_healthy_loops_stay_quiet_on_a_sample_of_the_weights(name):
    setup = CLEAN[name]()
    report = monitored(setup, max_copy_bytes=_bytes(setup.model) // 16)
    assert report.ok, str(report)


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_without_a_copy_the_other_kinds_are_still_named(bug):
    report = monitored(bug.setup(), bug.loop, max_copy_bytes=0, **bug.monitor)
    if bug.kind in MOVE_KINDS:
        assert not report.kinds & MOVE_KINDS, str(report)
        assert all(r is None for p in report.parameters for r in p.update_ratio)
    else:
        assert report.kinds == {bug.kind}, str(report)


class _Strided(nn.Module):
    """A channels-last convolution, a transposed (dense, not contiguous) weight and a weight
    that is a strided view (not dense in any order of its dims)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3).to(memory_format=torch.channels_last)
        self.proj = nn.Parameter((torch.randn(64, 288) * 0.05).t())
        self.sparse = nn.Parameter((torch.randn(96, 2 * 64) * 0.05)[:, ::2])
        self.head = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).mean(dim=(2, 3))  # [n, 32]
        h = F.relu(torch.cat([h] * 9, dim=1) @ self.proj)  # [n, 64]
        return self.head(F.relu(h @ self.sparse.t()))


def _train(
    model: nn.Module, **options: Any
) -> tuple[list[tuple[float | None, ...]], int, nn.Module]:
    torch.manual_seed(1)
    x = torch.randn(32, 3, 10, 10)
    y = torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    with GradientMonitor(model, optimizer, **options) as monitor:
        for _ in range(6):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        held = sum(s.numel() * s.element_size() for s in monitor._snapshots.values())
    return [p.update_ratio for p in monitor.report().parameters], held, model


@pytest.mark.parametrize("every", [1, 4, 16])
def test_a_sample_stands_for_the_whole_parameter_and_fits_the_budget(every):
    torch.manual_seed(0)
    model = _Strided()
    assert not model.proj.is_contiguous() and not model.sparse.is_contiguous()
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    total = _bytes(model)
    whole, whole_held, trained = _train(copy.deepcopy(model))
    budget = math.ceil(total / every)
    sampled, held, trained_sampled = _train(copy.deepcopy(model), max_copy_bytes=budget)
    assert whole_held == total
    params = list(model.parameters())
    assert held <= budget + len(params) * 4 * 2 * MIN_SAMPLE  # small parameters, whole
    if every > 1:
        assert held < total
    # the monitor only watches: training is bit for bit the same whatever it copies
    for a, b in zip(trained.parameters(), trained_sampled.parameters(), strict=True):
        assert torch.equal(a, b)
    stride = copy_every([p.numel() * 4 for p in params], budget)
    for p, full, estimate in zip(params, whole, sampled, strict=True):
        assert len(full) == len(estimate) == 6
        for f, e in zip(full, estimate, strict=True):
            assert f is not None and e is not None and f > 0
            if sample_stride(p.numel(), stride) == 1:  # copied whole: exact
                assert e == f
            else:  # an estimate: the kinds' thresholds are orders of magnitude apart
                assert f / 1.5 < e < f * 1.5


@given(
    sizes=st.lists(st.integers(0, 10_000), min_size=1, max_size=20),
    budget=st.integers(1, 200_000),
)
def test_the_sample_fits_the_budget_and_keeps_enough_of_each_parameter(sizes, budget):
    every = copy_every([4 * n for n in sizes], budget)
    assert every == 1 or _prime(every)
    strides = [sample_stride(n, every) for n in sizes]
    samples = [math.ceil(n / s) for n, s in zip(sizes, strides, strict=True)]
    assert 4 * sum(samples) <= budget + 4 * 2 * MIN_SAMPLE * len(sizes)
    for n, stride, kept in zip(sizes, strides, samples, strict=True):
        assert 1 <= stride <= every and (stride == 1 or _prime(stride))
        assert kept >= min(n, MIN_SAMPLE)
    if budget >= 4 * sum(sizes):
        assert every == 1 and set(strides) == {1}


def _prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def test_no_budget_copies_whole_and_zero_copies_nothing():
    assert copy_every([400, 40], None) == 1
    assert copy_every([400, 40], 0) == 0
    assert copy_every([400, 40], 440) == 1
    assert copy_every([400, 40], 220) == 2
    assert copy_every([400, 40], 110) == 5  # 4 is rounded up to a prime


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1MB"])
def test_a_bad_budget_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="max_copy_bytes"):
        GradientMonitor(nn.Linear(2, 2), max_copy_bytes=bad)
