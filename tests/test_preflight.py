"""torchscope.preflight: the report's faces and contract, the user's objects untouched, bad
input. The checks themselves are exercised on a zoo of models in test_preflight_zoo.py."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchscope
from torchscope.errors import PreflightError, TorchscopeError
from torchscope.records.preflight import CHECK_NAMES, VERDICTS


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 10, generator=generator)
    return x, x[:, :3].argmax(dim=1)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))


class Scaled(nn.Module):
    """Logits multiplied by 50: the loss at initialisation is far above ln 3."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 50


@pytest.fixture(scope="module")
def healthy() -> torchscope.PreflightReport:
    x, y = _data()
    return torchscope.preflight(_mlp(), x, y, loss_fn=F.cross_entropy)


@pytest.fixture(scope="module")
def scaled() -> torchscope.PreflightReport:
    x, y = _data()
    return torchscope.preflight(Scaled(), x, y, loss_fn=F.cross_entropy)


def test_a_healthy_model_passes_every_check(healthy):
    assert [c.name for c in healthy.checks] == list(CHECK_NAMES)
    assert healthy.ok and healthy.failed == ()
    assert {c.verdict for c in healthy.checks} == {"pass"}, str(healthy)
    assert healthy.check("init_loss").measured == pytest.approx(1.0986, abs=0.25)
    assert 3 <= healthy.steps < 100  # stops once the batch is fitted
    healthy.raise_if_unhealthy()


def test_scaled_logits_fail_the_loss_at_initialisation(scaled):
    assert scaled.failed == ("init_loss",), str(scaled)
    check = scaled.check("init_loss")
    assert check.verdict == "fail" and check.measured > 2 * 1.0986
    assert "uniform" in check.message
    with pytest.raises(PreflightError) as raised:
        scaled.raise_if_unhealthy()
    assert isinstance(raised.value, AssertionError)
    assert "init_loss" in str(raised.value) and raised.value.report is scaled


def test_the_report_round_trips_and_shows_itself(scaled):
    data = json.loads(scaled.to_json())
    assert data["schema_version"] == 1
    assert torchscope.PreflightReport.from_dict(data) == scaled
    text = str(scaled)
    assert text.splitlines()[0] == "Preflight: 1 check(s) failed: init_loss"
    assert all(name in text for name in CHECK_NAMES)
    assert repr(scaled) == "<PreflightReport: failed: init_loss>"
    html = scaled._repr_html_()
    assert "<table" in html and "init_loss" in html and "FAIL" in html
    assert all(c.verdict in VERDICTS for c in scaled.checks)
    assert pickle.loads(pickle.dumps(PreflightError("x", scaled))).report == scaled
    with pytest.raises(KeyError, match="the checks are"):
        scaled.check("nope")


def test_the_users_model_optimizer_and_rng_are_untouched():
    x, y = _data()
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    model.eval()
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    momentum = copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    report = torchscope.preflight(model, x, y, loss_fn=F.cross_entropy, optimizer=optimizer)
    assert report.ok, str(report)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    assert str(optimizer.state_dict()) == str(momentum)
    assert torch.equal(rng, torch.get_rng_state())
    assert not model.training


def test_no_chance_level_is_a_skip_not_a_failure():
    x, _ = _data()
    target = torch.randn(24, 3)
    report = torchscope.preflight(_mlp(), x, target, loss_fn=lambda out, t: (out - t).pow(4).mean())
    check = report.check("init_loss")
    assert check.verdict == "skip" and "no chance level" in check.message


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss_fn": "cross_entropy"}, TypeError, "loss_fn must be callable"),
        ({"loss_fn": F.cross_entropy, "steps": 0}, ValueError, "steps must be a positive"),
        ({"loss_fn": F.cross_entropy, "optimizer": "adam"}, TypeError, "optimizer must be"),
        ({"loss_fn": lambda o, t: o}, TorchscopeError, "single-number tensor"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, error, match):
    x, y = _data()
    with pytest.raises(error, match=match):
        torchscope.preflight(_mlp(), x, y, **kwargs)
    with pytest.raises(TypeError, match="needs the model"):
        torchscope.preflight(x, x, y, loss_fn=F.cross_entropy)
