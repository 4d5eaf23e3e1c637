"""Peak-memory estimates on fake tensors against the real peak measured by the profiler."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import torchscope
from torchscope import MemoryEstimate
from torchscope.collect.memory import measure_step_peak

from .state import assert_identical, assert_unchanged, exact_snapshot, snapshot
from .zoo import small_vit


def _onednn_without_jit_convolutions() -> bool:
    """Whether oneDNN is held below AVX2 (``ONEDNN_MAX_CPU_ISA=SSE41``, or a CPU without
    AVX2): its convolutions then run as im2col + gemm, whose backward-weights scratchpad
    (an im2col buffer of columns, 7.2 MB for a 64-channel 3x3 conv at 56x56) the estimate
    does not model. ATen's own capability (``ATEN_CPU_CAPABILITY``) does not change it."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if isa.upper().replace(".", "") in {"SSE41", "SSE4_1"}:
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return platform.machine() in ("x86_64", "AMD64") and " avx2" not in flags


def measured_peak(model: nn.Module, x: torch.Tensor, *, train: bool) -> int:
    """Peak of live tensor bytes of a real CPU run (the profiler's allocation records)."""
    return measure_step_peak(model, x, train=train)


CASES = {
    "resnet18": (torchvision.models.resnet18, (3, 224, 224)),
    "resnet50": (torchvision.models.resnet50, (3, 224, 224)),
    "small_vit": (small_vit, (3, 32, 32)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # the profiler's notes about its own setup
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", list(CASES))
def test_estimate_within_five_percent_of_the_measured_peak(name, batch):
    build, shape = CASES[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(batch, *shape)
    estimate = torchscope.estimate_memory(model, x)
    for train, predicted in ((False, estimate.inference_peak), (True, estimate.training_peak)):
        real = measured_peak(model, x, train=train)
        if train and _onednn_without_jit_convolutions():
            # documented in docs/costs.md: the unmodelled im2col scratchpad only adds to the
            # real peak, so the estimate is a lower bound there (measured: 72-82% of it)
            assert predicted <= real, (name, batch, train, predicted, real)
            continue
        assert abs(predicted - real) / real < 0.05, (name, batch, train, predicted, real)


def test_categories():
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 10))
    model[2].weight.requires_grad_(False)
    estimate = torchscope.estimate_memory(model, input_size=(32, 100), optimizer="adam")
    params = (100 * 200 + 200 + 200 * 10 + 10) * 4
    trainable = params - 200 * 10 * 4
    assert estimate.parameters == params and estimate.gradients == trainable
    assert estimate.optimizer_state == 2 * trainable
    assert estimate.inputs == 32 * 100 * 4
    assert estimate.activations >= 32 * 200 * 4  # the hidden activation is saved for backward
    assert estimate.training_peak > estimate.inference_peak >= params + estimate.inputs
    assert "Optimizer state" in str(estimate)


def test_optimizer_objects_before_and_after_their_first_step():
    model = nn.Linear(64, 64)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    param_bytes = (64 * 64 + 64) * 4
    assert (
        torchscope.estimate_memory(model, input_size=(4, 64), optimizer=sgd).optimizer_state
        == param_bytes
    )
    adam = torch.optim.Adam(model.parameters())
    model(torch.ones(4, 64)).sum().backward()
    adam.step()
    stepped = torchscope.estimate_memory(model, input_size=(4, 64), optimizer=adam).optimizer_state
    assert stepped >= 2 * param_bytes  # the real exp_avg and exp_avg_sq (and step counters)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        torchscope.estimate_memory(model, input_size=(4, 64), optimizer="lion")


def test_nothing_is_allocated_for_a_meta_model_and_nothing_changes():
    with torch.device("meta"):
        model = torchvision.models.resnet50()
    estimate = torchscope.estimate_memory(model, input_size=(8, 3, 224, 224))
    assert estimate.device == "meta" and estimate.training_peak > 800e6
    cpu_model = torchvision.models.resnet18()
    before = snapshot(cpu_model)
    torchscope.estimate_memory(cpu_model, input_size=(2, 3, 64, 64))
    assert_unchanged(before, cpu_model)


def test_summary_memory_option():
    model = torchvision.models.resnet18()
    plain = torchscope.summary(model, input_size=(1, 3, 64, 64))
    assert plain.memory is None and "Estimated peak memory" not in str(plain)
    result = torchscope.summary(
        model, input_size=(1, 3, 64, 64), memory=True, optimizer="sgd_momentum"
    )
    assert isinstance(result.memory, MemoryEstimate)
    assert result.memory.optimizer_state == result.memory.gradients
    assert "Estimated peak memory: inference" in str(result)
    assert torchscope.ModelSummary.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="pass memory=True"):
        torchscope.summary(model, input_size=(1, 3, 64, 64), optimizer="adam")
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="unknown optimizer"):  # refused before any forward
        torchscope.summary(model, input_size=(1, 3, 64, 64), memory=True, optimizer="lion")
    assert calls == []


class Picky(nn.Module):
    """A detection-style head: keeps the rows whose score is positive (a data-dependent
    shape), then a tally read on the host (a data-dependent value)."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(16, 1)
        self.embed = nn.Linear(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = x[self.score(x).squeeze(1) > 0]
        repeats = int((kept.sum() > 0).item()) + 1
        return self.embed(kept).repeat(repeats, 1)


class Selector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Picky()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(x))


@pytest.mark.filterwarnings("ignore::UserWarning")  # the profiler's notes about its own setup
def test_data_dependent_shapes_are_measured_on_the_real_tensors_and_nothing_changes():
    torch.manual_seed(0)
    model = Selector()
    x = torch.randn(256, 16)
    before = exact_snapshot(model)
    x_before = x.clone()
    result = torchscope.summary(model, x, memory=True)
    estimate = result.memory
    assert estimate is not None and result.memory_error is None
    assert "aten.nonzero" in estimate.measured and "module 'head'" in estimate.measured
    assert "measured on the real tensors" in str(result)
    assert_identical(before, model)  # no .grad, same weights, same RNG
    assert torch.equal(x, x_before)
    for train, predicted in ((False, estimate.inference_peak), (True, estimate.training_peak)):
        real = measured_peak(model, x, train=train)
        assert abs(predicted - real) <= 0.05 * real, (train, predicted, real)


def test_a_custom_op_without_a_fake_kernel_is_measured():
    @torch.library.custom_op("torchscope_tests::doubled", mutates_args=())
    def doubled(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    doubled.register_autograd(lambda ctx, grad: grad * 2)

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return doubled(self.fc(x))

    estimate = torchscope.estimate_memory(Custom(), torch.randn(4, 8))
    assert "measured on the real tensors" in estimate.measured
    assert "no fake impl registered" in estimate.measured and "doubled" in estimate.measured
    assert estimate.inference_peak > 0 and estimate.training_peak, estimate.training_error


def test_a_training_step_that_cannot_run_leaves_the_inference_peak():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))  # BatchNorm at batch 1
    result = torchscope.summary(model, torch.randn(1, 4), memory=True)
    estimate = result.memory
    assert estimate is not None and estimate.inference_peak > 0
    assert estimate.training_peak is None
    assert (
        "module '1'" in estimate.training_error and "more than 1 value" in estimate.training_error
    )
    text = str(result)
    assert "training step unknown" in text and "No training step estimate" in text
    assert MemoryEstimate(**estimate.to_dict()) == estimate


def test_an_estimate_that_is_really_impossible_names_the_module_and_the_op():
    with torch.device("meta"):  # no real values to fall back on
        model = Selector()
    with pytest.raises(torchscope.TorchscopeError, match="inference forward failed") as info:
        torchscope.estimate_memory(model, torch.randn(8, 16, device="meta"))
    assert "in module 'head'" in str(info.value) and "nonzero" in str(info.value)


class Experts(nn.Module):
    """A Mixture-of-Experts layer as Hugging Face's runs it: rows grouped by expert, one
    ``torch._grouped_mm`` over every expert's weight (float32, which the CPU kernel takes)."""

    def __init__(self, experts: int = 4, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.randn(experts, dim, hidden) / dim**0.5)
        self.down = nn.Parameter(torch.randn(experts, hidden, dim) / hidden**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] // self.up.shape[0]
        offs = torch.arange(1, self.up.shape[0] + 1, dtype=torch.int32) * rows
        hidden = torch.relu(torch._grouped_mm(x, self.up, offs=offs))
        return torch._grouped_mm(hidden, self.down, offs=offs)


def test_grouped_matmuls_are_estimated_quietly_in_float32(caplog):
    model = Experts()
    x = torch.randn(64, 16)
    with caplog.at_level(logging.DEBUG):
        estimate = torchscope.estimate_memory(model, x)
    assert not [r for r in caplog.records if r.name.startswith("torch")], caplog.text
    assert not estimate.measured  # on fake tensors
    assert estimate.training_peak > estimate.inference_peak >= 64 * 32 * 4


def test_plain_attributes_set_during_the_fake_runs_are_removed():
    class Rotary(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.cache = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.cache is None:
                self.cache = torch.cos(torch.arange(x.shape[1], dtype=x.dtype))[:, None]
            return self.proj(x) * self.cache

    model = Rotary()
    torchscope.estimate_memory(model, input_size=(2, 16, 8))
    assert model.cache is None
    torchscope.summary(model, input_size=(2, 16, 8), memory=True)
    assert model.cache is None
    assert type(model(torch.randn(2, 16, 8))) is torch.Tensor


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fused_attention_and_lstm_training_within_reach():
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 256, batch_first=True), 2, enable_nested_tensor=False
    )
    x = torch.randn(8, 32, 64)
    estimate = torchscope.estimate_memory(encoder, x)
    for train, predicted in ((False, estimate.inference_peak), (True, estimate.training_peak)):
        real = measured_peak(encoder, x, train=train)
        assert abs(predicted - real) / real < 0.05, (train, predicted, real)

    class LastStates(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(64, 128, num_layers=2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0]

    model = LastStates()
    x = torch.randn(8, 50, 64)
    real = measured_peak(model, x, train=True)
    predicted = torchscope.estimate_memory(model, x).training_peak
    assert abs(predicted - real) / real < 0.15  # oneDNN's workspace is an empirical fit


def test_the_model_is_made_fake_once_for_both_passes(monkeypatch):
    """Converting every parameter to a fake tensor takes about twice as long as a
    fake forward (resnet50): the inference and training passes share one set of fake twins."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import torchscope.collect._memory_passes

    converted: list[int] = []

    class CountingMode(FakeTensorMode):
        def from_tensor(self, tensor: torch.Tensor, **kwargs: object) -> torch.Tensor:
            converted.append(id(tensor))
            return super().from_tensor(tensor, **kwargs)

    monkeypatch.setattr(torchscope.collect._memory_passes, "FakeTensorMode", CountingMode)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    estimate = torchscope.estimate_memory(model, x)
    real = [*model.parameters(), *model.buffers(), x]
    assert len(converted) == len(real)  # each parameter, buffer and input once
    assert estimate.training_peak > estimate.inference_peak > 0
    converted.clear()
    assert torchscope.summary(model, x, memory=True).memory == estimate
    assert len(converted) == len(real)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_summary_estimates_the_model_unhooked():
    """summary's hooks turn off TransformerEncoderLayer's fused fast path; the estimate runs
    the model as a user would (unhooked), so it matches estimate_memory and the real peak."""
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 256, batch_first=True), 2, enable_nested_tensor=False
    )
    x = torch.randn(8, 32, 64)
    estimate = torchscope.estimate_memory(encoder, x)
    assert torchscope.summary(encoder, x, memory=True).memory == estimate
    real = measured_peak(encoder, x, train=False)
    assert abs(estimate.inference_peak - real) / real < 0.05, (estimate.inference_peak, real)


def test_tensors_held_in_a_reference_cycle_are_estimated_the_same_every_time():
    """An output that refers back to its container (Hugging Face's layered caches) keeps its
    tensors alive until Python's cycle collector runs: the estimate must not depend on
    when that happens (it did: the training peak moved with the collector's thresholds)."""
    import gc

    from .edge_zoo import LayeredCacheDecoder

    model = LayeredCacheDecoder()
    tokens = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    thresholds = gc.get_threshold()
    peaks = []
    try:
        for threshold in (100, 700, 1_000_000):  # collect often, as by default, or never
            gc.set_threshold(threshold)
            gc.collect()
            peaks.append(torchscope.estimate_memory(model, tokens).training_peak)
    finally:
        gc.set_threshold(*thresholds)
    assert len(set(peaks)) == 1, peaks
    assert gc.isenabled()


@pytest.mark.filterwarnings("ignore::UserWarning")  # the profiler's notes about its own setup
@pytest.mark.parametrize(
    "shape, features",
    [((2, 197, 192), (192, 768)), ((394, 768), (768, 192)), ((8, 64), (64, 64)), ((3, 5), (5, 1))],
)
def test_a_linear_layers_training_step_is_exact(shape, features):
    """The backward of a sum() loss hands the layer an expanded gradient, which the CPU
    matrix product copies into a dense one inside its kernel (no op shows it): modelled."""
    torch.manual_seed(0)
    model, x = nn.Linear(*features), torch.randn(*shape)
    estimate = torchscope.estimate_memory(model, x)
    assert estimate.inference_peak == measured_peak(model, x, train=False)
    assert estimate.training_peak == measured_peak(model, x, train=True)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the profiler's notes about its own setup
def test_a_batched_product_of_an_expanded_batch_adds_no_copy():
    """bmm takes a batch stride of 0 (matmul's broadcast) without a dense copy."""
    torch.manual_seed(0)

    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k = nn.Parameter(torch.randn(16, 64, 64))

        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return torch.matmul(q, self.k)

    model, q = Broadcast(), torch.randn(1, 128, 64)
    estimate = torchscope.estimate_memory(model, q)
    assert estimate.inference_peak == measured_peak(model, q, train=False)
