"""summary() must leave the model, the RNG and the hook registries exactly as it found them."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import torchscope
from torchscope import SummaryError, TorchscopeWarning

from .state import assert_unchanged, snapshot
from .zoo import ZOO


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.frozen_bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frozen_bn(self.bn(self.conv(x)))
        return self.head(self.drop(x.mean(dim=(2, 3))))


def prepared_model() -> BatchNormNet:
    """A model mid-training: grads present, one BN deliberately frozen, one layer not trainable."""
    model = BatchNormNet()
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    model.frozen_bn.eval()
    model.head.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("mode", ["eval", "train", "same"])
def test_model_is_untouched(mode):
    model = prepared_model()
    random.random()
    before = snapshot(model)
    result = torchscope.summary(model, input_size=(4, 3, 8, 8), mode=mode)
    assert result.mode == mode
    assert_unchanged(before, model)
    assert model.frozen_bn.training is False and model.bn.training is True


def test_train_mode_really_runs_in_train_mode():
    model = prepared_model().eval()
    seen = []
    model.bn.register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    torchscope.summary(model, input_size=(2, 3, 8, 8), mode="train")
    torchscope.summary(model, input_size=(2, 3, 8, 8), mode="eval")
    assert seen == [(True, True), (False, False)]
    assert model.bn.training is False


def test_batchnorm_statistics_are_restored_after_train_mode():
    model = prepared_model()
    stats = (model.bn.running_mean.clone(), model.bn.num_batches_tracked.clone())
    ids = (id(model.bn.running_mean), model.bn.running_mean.data_ptr())
    torchscope.summary(model, torch.randn(4, 3, 8, 8) * 10 + 3, mode="train")
    assert torch.equal(model.bn.running_mean, stats[0])
    assert torch.equal(model.bn.num_batches_tracked, stats[1])
    assert (
        id(model.bn.running_mean),
        model.bn.running_mean.data_ptr(),
    ) == ids  # same tensor, not a copy


@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_zoo_models_are_untouched_in_train_mode(entry):
    model = entry.build()
    before = snapshot(model)
    inputs = entry.make_input()
    torchscope.summary(model, inputs, mode="train")
    assert_unchanged(before, model)


def test_untouched_when_the_forward_raises():
    class FailsLate(BatchNormNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            raise RuntimeError("boom")

    model = FailsLate()
    model.frozen_bn.eval()
    before = snapshot(model)
    with pytest.raises(SummaryError, match="boom"):
        torchscope.summary(model, input_size=(4, 3, 8, 8), mode="train")
    assert_unchanged(before, model)


def test_untouched_on_keyboard_interrupt():
    class Interrupted(BatchNormNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            raise KeyboardInterrupt

    model = Interrupted()
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        torchscope.summary(model, input_size=(4, 3, 8, 8), mode="train")
    assert_unchanged(before, model)


def test_hooks_removed_when_registration_fails_half_way(monkeypatch):
    model = prepared_model()
    before = snapshot(model)

    def refuse(*args, **kwargs):
        raise RuntimeError("registration refused")

    monkeypatch.setattr(model.head, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="registration refused"):
        torchscope.summary(model, input_size=(4, 3, 8, 8), mode="train")
    monkeypatch.undo()
    assert_unchanged(before, model)


def test_dropout_in_train_mode_consumes_no_global_randomness():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torchscope.summary(model, input_size=(4, 8), mode="train")
    torchscope.summary(model, torch.ones(4, 8), mode="train")
    assert torch.equal(torch.rand(3), expected)


def test_user_hooks_still_work_and_stay():
    model = prepared_model()
    calls = []
    handle = model.conv.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    torchscope.summary(model, input_size=(1, 3, 8, 8))
    assert calls == [torch.Size([1, 4, 6, 6])]
    assert len(model.conv._forward_hooks) == 1
    handle.remove()


def test_a_forward_that_edits_parameters_in_place_is_reported():
    class EditsWeights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                self.lin.weight.mul_(2)
            return self.lin(x)

    with pytest.warns(TorchscopeWarning, match=r"lin\.weight"):
        torchscope.summary(EditsWeights(), torch.ones(1, 2))


def test_caller_input_tensors_are_not_modified_or_moved():
    x = torch.ones(2, 3, 8, 8)
    before = x.clone()
    torchscope.summary(prepared_model(), x, device="cpu")
    assert torch.equal(x, before) and x.device.type == "cpu"
