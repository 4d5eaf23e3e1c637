"""Gradient sizes judged in the loss's own units: a squared-error regression on targets in
their own units (tens to hundreds) has gradients in the thousands from its first step and
trains well; ``exploding`` reads them against 1e3 times the targets' standard deviation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchscope import GradientMonitor


def _prices(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features and prices around 300 (std about 80), in their own units."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, generator=g)
    price = 300 + 60 * torch.tanh(x @ w / 2) + 20 * x[:, 0] ** 2 + 5 * torch.randn(n, generator=g)
    return x, price[:, None]


def _train(lr: float, optimizer_cls, steps_per_epoch: int = 16, epochs: int = 12):
    x, y = _prices()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.SiLU(), nn.Linear(64, 1))
    optimizer = optimizer_cls(model.parameters(), lr=lr)
    criterion = nn.MSELoss()
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(epochs):
            for k in torch.randperm(len(x)).split(len(x) // steps_per_epoch):
                optimizer.zero_grad()
                criterion(model(x[k]), y[k]).backward()
                optimizer.step()
    with torch.no_grad():
        mse = F.mse_loss(model(x), y).item()
    return monitor.report(), mse, y.var().item()


@pytest.mark.parametrize(
    "optimizer_cls, lr",
    [(torch.optim.Adam, 3e-2), (torch.optim.AdamW, 1e-1)],
    ids=["adam", "adamw"],
)
def test_raw_unit_regression_gradients_in_the_thousands_are_not_exploding(optimizer_cls, lr):
    report, mse, variance = _train(lr, optimizer_cls)
    largest = max(n for h in report.parameters for n in h.grad_norm if math.isfinite(n))
    assert largest > 1e3  # above the unscaled threshold: the case this test is about
    assert mse < 0.5 * variance  # it trains
    assert "exploding" not in report.kinds, report


def test_a_raw_unit_regression_that_diverges_is_still_named():
    report, mse, _ = _train(0.05, lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9))
    assert not math.isfinite(mse) or mse > 1e6
    assert report.kinds & {"exploding", "nonfinite_loss", "nonfinite_activation"}, report
    exploding = [f for f in report.findings if f.kind == "exploding"]
    for f in exploding:
        assert "targets' std" in f.message
