"""summary() must leave the model, the RNG and the hook registries exactly as it found them."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import torchscope
from torchscope import SummaryError, TorchscopeWarning
from torchscope.hooks import instrumented

from .state import assert_identical, assert_unchanged, exact_snapshot, snapshot
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


# ---------------------------------------------------------------------------------------------
# a forward that rebinds, adds or deletes its own state (issue 25, class 1)

GRAPH_CALLS = ("summary", "module_graph", "autograd_graph_of", "time_layers")


def _call(name: str, model: nn.Module, x: torch.Tensor) -> Any:
    if name == "time_layers":
        return torchscope.time_layers(model, x, warmup=0, repeat=1)
    return getattr(torchscope, name)(model, x)


class StepCounter(nn.Module):
    """A step counter and an EMA written the way people write them: by rebinding."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("count", torch.zeros(3))
        self.register_buffer("ema", torch.zeros(1))
        self.register_buffer("cache", None)
        self.history: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count = self.count + 1  # several elements: `==` on it cannot be read as a bool
        self.ema = self.ema * 1  # equal values, another tensor: `==` would call it unchanged
        self.cache = x.detach()
        self.history.append(len(self.history))
        self.seen = True
        return self.lin(x) * self.count


@pytest.mark.parametrize("call", GRAPH_CALLS)
def test_a_forward_that_rebinds_its_buffers_is_undone(call):
    model = StepCounter()
    before = exact_snapshot(model)
    count, ema = model.count, model.ema
    _call(call, model, torch.ones(2, 3))
    assert model.count is count and model.ema is ema and model.cache is None
    assert model.history == [] and not hasattr(model, "seen")
    assert_identical(before, model)


@pytest.mark.parametrize("call", GRAPH_CALLS)
def test_a_forward_that_rebinds_and_then_raises_is_undone(call):
    class RebindsThenFails(StepCounter):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            raise RuntimeError("boom")

    model = RebindsThenFails()
    before = exact_snapshot(model)
    with pytest.raises(torchscope.TorchscopeError, match="boom"):
        _call(call, model, torch.ones(2, 3))
    assert_identical(before, model)


def test_a_rebound_parameter_data_is_put_back():
    class Reshapes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.lin.weight.data = self.lin.weight.data.double()  # what module.double() does
            self.lin.bias.data = torch.zeros(3, dtype=torch.float64)
            return self.lin(x.double())

    model = Reshapes()
    before = exact_snapshot(model)
    torchscope.summary(model, torch.ones(2, 3))
    assert model.lin.weight.dtype == torch.float32
    assert_identical(before, model)


def test_unchanged_buffers_are_not_written_so_a_pending_backward_still_runs():
    class Scales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("scale", torch.full((3,), 2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * self.scale  # autograd saves the buffer for backward

    model = Scales()
    loss = (model(torch.ones(2, 3)) ** 2).sum()
    version = model.scale._version
    torchscope.summary(model, torch.ones(2, 3), mode="train")
    assert model.scale._version == version
    loss.backward()  # raised "modified by an inplace operation" when the buffer was rewritten
    assert model.lin.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# lazy modules: inspected on an initialised copy, the model stays uninitialised (class 5)


def _lazy_cnn() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )


def _initialised_by_torch(twin: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A twin initialised by torch itself, the oracle of the shapes lazy modules take."""
    with torch.no_grad():
        output = twin(x)
    return twin, output


LAZY_CALLS = (*GRAPH_CALLS, "estimate_memory")


@pytest.mark.parametrize("call", LAZY_CALLS)
def test_lazy_models_stay_uninitialised(call):
    torch.manual_seed(0)
    model = _lazy_cnn()
    rng = torch.random.get_rng_state()
    before = exact_snapshot(model)
    _call(call, model, torch.ones(2, 3, 6, 6))
    assert isinstance(model[0], nn.LazyConv2d) and is_lazy(model[0].weight)
    assert is_lazy(model[1].running_mean) and is_lazy(model[4].weight)
    assert torch.equal(torch.random.get_rng_state(), rng), "initialising the copy used the RNG"
    assert_identical(before, model)


def test_a_lazy_model_is_summarised_with_the_shapes_it_will_take():
    x = torch.ones(2, 3, 6, 6)
    twin, output = _initialised_by_torch(_lazy_cnn(), x)
    result = torchscope.summary(_lazy_cnn(), x)
    assert result.total_params == sum(p.numel() for p in twin.parameters())
    assert [p.shape for p in result.parameters] == [tuple(p.shape) for p in twin.parameters()]
    assert result.output_shapes == (tuple(output.shape),)


def test_lazy_graphs_show_the_initialised_layers():
    x = torch.ones(2, 3, 6, 6)
    twin, output = _initialised_by_torch(_lazy_cnn(), x)
    graph = torchscope.module_graph(_lazy_cnn(), x)
    modules = {node.key: node for node in graph.nodes if node.kind == "module"}
    assert {key: node.op for key, node in modules.items()} == {
        name: type(module).__name__ for name, module in twin.named_children()
    }
    assert modules["4"].shapes == (tuple(output.shape),)
    autograd = torchscope.autograd_graph_of(_lazy_cnn(), x)
    weights = {n.label: n.shapes for n in autograd.nodes if n.kind == "parameter"}
    assert weights == {name: (tuple(p.shape),) for name, p in twin.named_parameters()}


def test_a_lazy_module_the_forward_never_reaches_is_refused_clearly():
    class UnusedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.LazyLinear(4)
            self.head = nn.LazyLinear(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    model = UnusedHead()
    before = exact_snapshot(model)
    for call in ("summary", "module_graph", "autograd_graph_of"):
        with pytest.raises(ValueError, match=rf"{call}: .*did not initialise head\.weight"):
            getattr(torchscope, call)(model, torch.ones(2, 5))
    assert_identical(before, model)


def test_a_lazy_model_whose_first_forward_fails_names_the_call_and_the_error():
    model = nn.Sequential(nn.Linear(3, 3), nn.LazyLinear(2))
    before = exact_snapshot(model)
    with pytest.raises(SummaryError, match=r"summary: .*lazy.*mat1 and mat2"):
        torchscope.summary(model, torch.ones(2, 5))
    # the graphs run the copy as they run any model, and report the failure the same way
    for call in ("module_graph", "autograd_graph_of", "time_layers"):
        with pytest.raises(torchscope.GraphError, match=r"failed in 0 \(Linear\).*mat1 and mat2"):
            _call(call, model, torch.ones(2, 5))
    assert_identical(before, model)


def test_a_lazy_model_that_cannot_be_copied_is_refused_with_the_fix():
    class Locked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.LazyLinear(2)
            self.lock = threading.Lock()  # deepcopy cannot copy a lock

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    model = Locked()
    with pytest.raises(ValueError, match=r"cannot be copied .*run one forward pass"):
        torchscope.module_graph(model, torch.ones(2, 5))
    assert is_lazy(model.lin.weight)


def test_instrumentation_refuses_lazy_models_so_no_collector_can_initialise_one():
    model = nn.LazyLinear(2)
    with pytest.raises(ValueError, match=r"lazy parameters \(weight, bias\)"):
        with instrumented(model, grad=False):
            pass
    assert is_lazy(model.weight)
