"""check_batch_independence: samples that leak into each other are found, independent ones
pass, and the user's model, inputs and RNG are untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchscope
from tests.state import assert_identical, exact_snapshot


class ViewNotPermute(nn.Module):
    """(batch, time, feat) -> (time, batch, feat) wanted; view scrambles samples together."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        wrong = x.view(t, b, f)  # should be x.permute(1, 0, 2)
        return self.fc(wrong.permute(1, 0, 2).mean(dim=1))


class BatchMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=0)  # centres over the batch: every sample depends on all


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (nn.LSTM(6, 8), (5, 7, 6)),
        (nn.GRU(6, 8), (5, 7, 6)),
        (nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0), (5, 7, 6)),
        (ViewNotPermute(), (5, 7, 6)),
        (BatchMean(), (5, 6)),
    ],
    ids=["lstm", "gru", "transformer", "view", "batch_mean"],
)
def test_samples_that_mix_are_found(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    report = torchscope.check_batch_independence(model, torch.randn(shape))
    assert not report.ok and report.leaks
    assert all(leak.output != leak.input and leak.value > 0 for leak in report.leaks)
    assert "FAILED" in str(report)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (nn.LSTM(6, 8, batch_first=True), (5, 7, 6)),
        (nn.TransformerEncoderLayer(6, 2, 12, dropout=0.0, batch_first=True), (5, 7, 6)),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), (5, 3, 8, 8)),
        (nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2)), (5, 6)),
    ],
    ids=["lstm_batch_first", "transformer_batch_first", "cnn_bn_eval", "mlp_dropout"],
)
def test_independent_samples_pass(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    report = torchscope.check_batch_independence(model, torch.randn(shape))
    assert report.ok, str(report)
    assert report.outputs_checked == (0, 1, 3, 4)


def test_batchnorm_in_training_mode_mixes_by_design_and_says_so() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    report = torchscope.check_batch_independence(model, torch.randn(5, 6), train=True)
    assert not report.ok and "BatchNorm" in report.note
    assert torchscope.check_batch_independence(model, torch.randn(5, 6)).ok


def test_the_model_its_input_and_the_rng_are_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.BatchNorm1d(8))
    model.train()
    x = torch.randn(5, 6)
    x_before = x.clone()
    before = exact_snapshot(model)
    rng = torch.get_rng_state()
    torchscope.check_batch_independence(model, x, train=True)
    assert_identical(before, model)
    assert torch.equal(x, x_before) and not x.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(torchscope.TorchscopeError, match="floating-point input tensor, or"):
        torchscope.check_batch_independence(FloatCast(), torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(torchscope.TorchscopeError, match="at least 2 samples"):
        torchscope.check_batch_independence(nn.Linear(3, 2), torch.randn(1, 3))
    with pytest.raises(ValueError, match="samples must be"):
        torchscope.check_batch_independence(nn.Linear(3, 2), torch.randn(4, 3), samples=0)


class FloatCast(nn.Module):
    """Integer input, no embedding: nothing to take a gradient with respect to."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.float())


class TokenRNN(nn.Module):
    """Token ids (batch, time) -> embedding -> LSTM -> per-token logits."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.LSTM(8, 16, batch_first=batch_first)
        self.head = nn.Linear(16, 20)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(ids))[0])


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "time-first"])
def test_token_ids_are_probed_at_the_embedding(batch_first: bool) -> None:
    # an RNN built without batch_first, fed (batch, time) ids, runs along the batch
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (6, 5))
    report = torchscope.check_batch_independence(TokenRNN(batch_first), ids)
    assert report.ok is batch_first, str(report)
    if not batch_first:
        assert any(leak.output != leak.input for leak in report.leaks)
