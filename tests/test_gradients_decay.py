"""weight_decay_collapse's early test (coupled decay that outweighs the loss gradient while
the loss sits at a constant prediction's level), and the chance level of L1-type losses it
and loss_at_chance read."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer, load_diabetes
from torch import nn

from torchscope import GradientMonitor
from torchscope.collect.gradients.signals import chance_level


def _focal(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    pt = p * y + (1 - p) * (1 - y)
    return (-((1 - pt) ** 2) * torch.log(pt.clamp_min(1e-8))).mean()


@pytest.mark.parametrize("weight_decay", [1e-4, 5e-4])
def test_a_converged_model_fine_tuned_with_decay_is_no_finding(weight_decay):
    # a hand-written loss (no known chance level) fitted to ~1e-5: its gradient is tiny, so
    # any decay outweighs it, and the loss creeps up a little: nothing is wrong
    x, y = load_breast_cancer(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)[:, None]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    fit = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(1500):
        fit.zero_grad()
        _focal(model(x), y).backward()
        fit.step()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-2, momentum=0.9, weight_decay=weight_decay
    )
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(200):
            optimizer.zero_grad()
            _focal(model(x), y).backward()
            optimizer.step()
    report = monitor.report()
    assert "weight_decay_collapse" not in report.kinds
    # nor any other warning: the focal loss's sigmoid is saturated because the model is sure
    # (an output layer), and the steps are small because the gradients are (nothing left)
    assert report.ok, report


@pytest.mark.parametrize("loss_fn", [nn.L1Loss(), nn.SmoothL1Loss(), nn.HuberLoss()])
@pytest.mark.parametrize("standardise", [False, True], ids=["raw_units", "standardised"])
def test_decay_that_outweighs_an_l1_regression_is_named(loss_fn, standardise):
    # Adam given an AdamW-sized decay: the model stays at the median's loss, whatever the
    # targets' units (an L1 loss is not compared with the targets' variance)
    x, t = load_diabetes(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    t = torch.tensor(t - t.mean(), dtype=torch.float32)[:, None]
    if standardise:
        t = t / t.std()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1.0)
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(8):
            for k in range(0, len(x), 32):
                optimizer.zero_grad()
                loss_fn(model(x[k : k + 32]), t[k : k + 32]).backward()
                optimizer.step()
    report = monitor.report()
    assert "weight_decay_collapse" in report.kinds, str(report)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=40),
    name=st.sampled_from(["l1_loss", "smooth_l1_loss", "huber_loss"]),
)
def test_the_chance_level_of_an_l1_loss_is_its_best_constant(values, name):
    target = torch.tensor(values, dtype=torch.float64)
    loss = {"l1_loss": F.l1_loss, "smooth_l1_loss": F.smooth_l1_loss, "huber_loss": F.huber_loss}
    level = float(chance_level("regression", target.clone(), target, name))
    # the best constant on a fine grid over the targets' range, the targets themselves
    # included (an L1 loss's best constant is one of them: the median), and their mean
    span = torch.linspace(target.min().item(), target.max().item(), 401, dtype=torch.float64)
    grid = torch.cat([span, target, target.mean().reshape(1)])
    best = min(float(loss[name](torch.full_like(target, c.item()), target)) for c in grid)
    if name == "l1_loss":
        assert level == pytest.approx(best, rel=1e-5, abs=1e-6)  # (computed in float32)
    else:  # the better of median and mean: near the best constant of a Huber-type loss
        assert 0.95 * best - 1e-6 <= level <= 1.5 * best + 1e-6
