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
    assert held <= budget + 4 * sum(min(p.numel(), 32 * MIN_SAMPLE) for p in params)
    if every > 1:
        assert held < total
    # the monitor only watches: training is bit for bit the same whatever it copies
    for a, b in zip(trained.parameters(), trained_sampled.parameters(), strict=True):
        assert torch.equal(a, b)
    every_ = copy_every([p.numel() * 4 for p in params], budget)
    for p, full, estimate in zip(params, whole, sampled, strict=True):
        assert len(full) == len(estimate) == 6
        for f, e in zip(full, estimate, strict=True):
            assert f is not None and e is not None and f > 0
            if sample_stride(tuple(p.shape), every_) == 1:  # copied whole: exact
                assert e == f
            else:  # an estimate: the kinds' thresholds are orders of magnitude apart
                assert f / 1.5 < e < f * 1.5


_dims = st.lists(st.integers(1, 96), min_size=1, max_size=4).map(tuple)


@given(shapes=st.lists(_dims, min_size=1, max_size=12), budget=st.integers(1, 400_000))
def test_the_sample_fits_the_budget_and_keeps_enough_of_each_parameter(shapes, budget):
    sizes = [math.prod(shape) for shape in shapes]
    every = copy_every([4 * n for n in sizes], budget)
    if budget >= 4 * sum(sizes):
        assert every == 1
    held = 0
    for shape, numel in zip(shapes, sizes, strict=True):
        stride = sample_stride(shape, every)
        kept = math.ceil(numel / stride)
        held += 4 * kept
        assert kept >= min(numel, MIN_SAMPLE)
        if stride > 1:  # a prime that divides none of the dims
            assert _prime(stride) and all(d % stride for d in shape)
        # past the budget by a small parameter kept whole, or one element a parameter
        assert kept <= numel / every + 1 or kept <= 32 * MIN_SAMPLE
    assert held <= budget + 4 * sum(min(n, 32 * MIN_SAMPLE) for n in sizes)


@given(rows=st.integers(1, 200), columns=st.integers(1, 200), every=st.integers(2, 60))
def test_the_sample_takes_every_column_of_a_matrix(rows, columns, every):
    stride = sample_stride((rows, columns), every)
    taken = torch.arange(rows * columns)[::stride]
    if rows >= stride:  # enough rows for the stride to come round to each column
        assert set((taken % columns).tolist()) == set(range(columns))
    assert set((taken // columns).tolist()) >= set(range(0, rows, stride))


def _prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def test_no_budget_copies_whole_and_zero_copies_nothing():
    assert copy_every([400, 40], None) == 1
    assert copy_every([400, 40], 0) == 0
    assert copy_every([400, 40], 440) == 1
    assert copy_every([400, 40], 110) == 4
    assert sample_stride((32, 10), 1) == 1
    assert sample_stride((32, 10), 4) == 3  # 2 divides 32, 4 is no prime: 3
    assert sample_stride((64, 64), 2) == 3  # an even stride would take even columns only
    assert sample_stride((64, 3, 3, 3), 2) == 5  # 3x3 kernels, 64 filters: neither 2 nor 3
    assert sample_stride((8, 3, 3, 3), 2) == 1  # too small for a stride that fits: whole
    assert sample_stride((10,), 16) == 1  # a small bias: whole


class _DeadInputs(nn.Module):
    """Input features that are always zero (padding, a one-hot's unused slots, a ReLU'd
    feature that died): their weight columns never get a gradient, yet the weight trains."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 32)
        self.head = nn.Linear(32, 10)
        self.dead = torch.zeros(width, dtype=torch.bool)
        self.dead[:: width // 5] = True
        self.dead[::2] |= width % 2 == 0  # and every even one, where the width is even

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x.masked_fill(self.dead, 0.0))))


class _FewTokens(nn.Module):
    """An embedding whose batches use three tokens: SGD moves three rows of 2,000."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(2000, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens).mean(dim=1))


@pytest.mark.parametrize("divisor", [2, 3, 16, 128])
@pytest.mark.parametrize("case", ["dead_inputs_10", "dead_inputs_64", "few_tokens"])
def test_a_sample_that_misses_what_moved_is_no_finding(case, divisor):
    torch.manual_seed(0)
    if case == "few_tokens":
        model: nn.Module = _FewTokens()
        x = torch.randint(1, 4, (16, 5))
        width = 0
    else:
        width = int(case.rsplit("_", 1)[1])
        model = _DeadInputs(width)
        x = torch.randn(16, width)
    y = torch.randint(0, 4, (16,))
    budget = _bytes(model) // divisor
    reports = []
    for options in ({}, {"max_copy_bytes": budget}):
        trained = copy.deepcopy(model)
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
        with GradientMonitor(trained, optimizer, **options) as monitor:
            for _ in range(8):
                optimizer.zero_grad()
                F.cross_entropy(trained(x), y).backward()
                optimizer.step()
        reports.append(monitor.report())
    whole, sampled = reports
    assert whole.ok and sampled.ok, str(sampled)
    if width:  # the weight's sample takes live columns too: it reads as moving
        first = next(p for p in sampled.parameters if p.name == "fc.weight")
        assert all(r is not None and r > 0 for r in first.update_ratio)


@pytest.mark.parametrize(
    ("bad", "error", "says"),
    [
        (-1, ValueError, ">= 0"),
        (1.5, TypeError, "float 1.5"),
        (1e9, TypeError, "whole number of bytes"),
        (True, TypeError, "not a bool"),
        ("1MB", TypeError, "str '1MB'"),
    ],
)
def test_a_bad_budget_is_refused_by_name(bad, error, says):
    with pytest.raises(error, match="max_copy_bytes") as raised:
        GradientMonitor(nn.Linear(2, 2), max_copy_bytes=bad)
    assert says in str(raised.value)


def test_integral_numpy_and_torch_scalars_are_budgets():
    import numpy as np

    for budget in (np.int64(2**20), torch.tensor(2**20)):
        GradientMonitor(nn.Linear(2, 2), max_copy_bytes=budget)  # type: ignore[arg-type]
