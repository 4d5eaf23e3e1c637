"""Gradients that autograd's backward() does not write: per-sample gradients from torch.func
(grad, vmap through functional_call) and estimates assigned to .grad by hand. The monitor
must run through them, and judge the steps they feed as steps with new gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from torchscope import GradientMonitor


def _data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_dp_sgd_with_per_sample_gradients_from_torch_func(activation):
    # DP-SGD as written without Opacus: per-sample gradients by vmap(grad(...)), each
    # clipped, summed with noise, assigned to .grad; functorch's tensors have no storage
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), activation(), nn.Linear(32, 2), nn.Softmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def sample_loss(params, xi, yi):
        probs = functional_call(model, params, (xi[None],))
        return F.nll_loss(torch.log(probs + 1e-9), yi[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    g = torch.Generator().manual_seed(1)
    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for _ in range(4):
            for k in torch.randperm(len(x), generator=g).split(32):
                params = {n: p.detach() for n, p in model.named_parameters()}
                grads = per_sample(params, x[k], y[k])
                norms = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in grads.values()))
                scale = (1.0 / norms).clamp(max=1.0)
                for n, p in model.named_parameters():
                    clipped = (grads[n] * scale.view(-1, *[1] * (grads[n].dim() - 1))).sum(0)
                    noise = 0.01 * torch.randn(p.shape, generator=g)
                    p.grad = (clipped + noise) / len(k)
                optimizer.step()
    report = monitor.report()
    assert report.steps == 32
    assert report.ok, report
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.8  # it trained


def test_evolution_strategies_gradients_written_by_hand_are_new_each_step():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(2)

    @torch.no_grad()
    def fitness() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for _ in range(40):
            estimate = [torch.zeros_like(p) for p in params]
            for _ in range(8):  # antithetic samples
                eps = [torch.randn(p.shape, generator=g) for p in params]
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.add_(0.05 * e)
                    up = fitness()
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(0.1 * e)
                    down = fitness()
                    for p, e in zip(params, eps, strict=True):
                        p.add_(0.05 * e)
                for acc, e in zip(estimate, eps, strict=True):
                    acc.add_(e * (up - down) / (2 * 0.05 * 8))
            for p, est in zip(params, estimate, strict=True):
                if p.grad is None:
                    p.grad = est
                else:
                    p.grad.copy_(est)  # in place after the first step: a new version
            optimizer.step()
    report = monitor.report()
    assert "step_without_backward" not in report.kinds, report
    assert fitness() < 0.5


def test_the_same_gradients_stepped_twice_are_still_named():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for k in torch.randperm(len(x)).split(16):
            optimizer.zero_grad()
            F.cross_entropy(model(x[k]), y[k]).backward()
            optimizer.step()
            for p in model.parameters():
                p.grad = p.grad  # the same tensor handed back: nothing new
            optimizer.step()
    assert "step_without_backward" in monitor.report().kinds


@pytest.mark.parametrize("rescale", ["clip_grad_norm_", "mul_"])
def test_the_same_gradients_rescaled_in_place_and_stepped_again_are_named(rescale):
    # clipping (or any in-place scaling) between two steps writes into .grad, yet every
    # gradient is scaled by one factor: the same gradients applied twice
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def scale():
        if rescale == "clip_grad_norm_":
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
        else:
            for p in model.parameters():
                p.grad.mul_(0.5)

    with GradientMonitor(model, optimizer=optimizer) as monitor:
        for k in torch.randperm(len(x)).split(16):
            optimizer.zero_grad()
            F.cross_entropy(model(x[k]), y[k]).backward()
            scale()
            optimizer.step()
            scale()  # "clip, then step" in a helper, called twice
            optimizer.step()
    assert "step_without_backward" in monitor.report().kinds
