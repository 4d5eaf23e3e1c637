"""loss_at_chance with soft targets: a distillation teacher's class probabilities, pixel
intensities an autoencoder reconstructs. Their own entropy is the least any prediction gets,
so a loss is judged by how far it sits above that floor against how far a constant
prediction's does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from torchscope import GradientMonitor
from torchscope.collect.gradients.signals import chance_level, loss_floor


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data / 16.0, dtype=torch.float32), torch.tensor(data.target)


def _teacher(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        opt.step()
    return teacher.eval()


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "targets_shuffled"])
def test_distillation_at_a_high_temperature(paired):
    x, y = _digits()
    teacher = _teacher(x, y)
    temperature = 8.0
    with torch.no_grad():
        soft = F.softmax(teacher(x) / temperature, dim=1)
    if not paired:  # the teacher's outputs shuffled apart from the inputs
        soft = soft[torch.randperm(len(soft), generator=torch.Generator().manual_seed(3))]
    floor = float(loss_floor("classification", soft, soft))
    assert 1.5 < floor < float(chance_level("classification", soft, soft)) < 2.31
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    with GradientMonitor(student, optimizer) as monitor:
        for _ in range(6):
            for k in torch.randperm(len(x), generator=g).split(64):
                optimizer.zero_grad()
                F.cross_entropy(student(x[k]) / temperature, soft[k]).backward()
                optimizer.step()
    # the loss of a good student sits near 0.9 of ln C, and just above the floor
    assert ("loss_at_chance" in monitor.report().kinds) == (not paired)
    if paired:
        with torch.no_grad():
            assert (student(x).argmax(1) == y).float().mean() > 0.8


def test_an_autoencoder_on_intensities_is_judged_above_their_entropy():
    x, _ = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(6):
            for k in torch.randperm(len(x), generator=g).split(64):
                optimizer.zero_grad()
                F.binary_cross_entropy_with_logits(model(x[k]), x[k]).backward()
                optimizer.step()
    report = monitor.report()
    assert report.ok, report
    floor = float(loss_floor("binary", x, x))
    assert 0.15 < floor < 0.3  # the intensities' own entropy: far from 0
    assert report.losses[-1] < floor + 0.5 * (0.42 - floor)  # it learned most of what it can


def test_hard_labels_have_no_floor():
    scores = torch.randn(8, 5)
    assert loss_floor("classification", scores, torch.randint(0, 5, (8,))) is None
    labels = torch.randint(0, 2, (8, 5)).float()
    assert float(loss_floor("binary", scores, labels)) < 1e-4
