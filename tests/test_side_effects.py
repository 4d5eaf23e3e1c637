"""summary() must leave the model, the RNG and the hook registries exactly as it found them."""

from __future__ import annotations

import random
import threading
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils._python_dispatch import TorchDispatchMode

import torchscope
from torchscope import SummaryError, TorchscopeWarning
from torchscope.collect.hooks import instrumented

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
# a forward that edits its parameters in place: copied before the first write, put back


class EditsParameters(nn.Module):
    """Every way people write to their parameters inside forward (one at a time, by ``how``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin = nn.Linear(3, 3)
        self.loc = nn.Parameter(torch.zeros(1, 3))
        self.untouched = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, how = self.lin.weight, self.how
        with torch.no_grad():
            if how == "copy_":  # Glow's ActNorm: data-dependent initialisation
                self.loc.copy_(-x.mean(0, keepdim=True))
            elif how == "data.mul_":
                weight.data.mul_(2)
            elif how == "fill_":
                self.lin.bias.fill_(1)
            elif how == "add_":
                weight.add_(torch.ones_like(weight))
            elif how == "data_slice":
                weight.data[1:, :2] = 5.0
            elif how == "view":
                weight.view(-1)[0] = -1.0
            elif how == "out=":
                torch.add(weight, 1, out=weight.data)
            elif how == "nn.init":  # draws from the global RNG too: rewound
                nn.init.normal_(weight)
            elif how == "optimizer":  # an optimizer step inside forward (foreach kernels)
                for p in (weight, self.loc):
                    p.grad = torch.ones_like(p)
                torch.optim.SGD([weight, self.loc], lr=0.1, momentum=0.9).step()
            elif how == "set_":
                weight.set_(torch.zeros(3, 3))  # another storage
        return self.lin(x + self.loc) * self.untouched


PARAMETER_WRITES = (
    "copy_", "data.mul_", "fill_", "add_", "data_slice", "view", "out=", "nn.init", "optimizer",
    "set_",
)  # fmt: skip


@pytest.mark.parametrize("how", PARAMETER_WRITES)
@pytest.mark.parametrize("call", ["summary", "module_graph", "autograd_graph_of", "time_layers"])
def test_a_forward_that_edits_parameters_in_place_is_undone_bit_for_bit(call, how):
    model = EditsParameters(how)
    model.lin.weight.grad = torch.full((3, 3), 0.5)  # an existing .grad stays, values included
    before = exact_snapshot(model)
    weight = model.lin.weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call(call, model, torch.ones(2, 3))
    assert model.lin.weight is weight
    assert_identical(before, model)  # values, identity, .grad, requires_grad, RNG, grad mode
    assert not [w for w in caught if issubclass(w.category, TorchscopeWarning)]


@pytest.mark.parametrize("call", GRAPH_CALLS)
def test_parameter_edits_are_undone_when_the_forward_raises_after_them(call):
    class EditsThenFails(EditsParameters):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            raise RuntimeError("boom")

    model = EditsThenFails("data_slice")
    before = exact_snapshot(model)
    with pytest.raises(torchscope.TorchscopeError, match="boom"):
        _call(call, model, torch.ones(2, 3))
    assert_identical(before, model)


class _ParameterCopies(TorchDispatchMode):
    """Counts clones of the model's parameter storages (torchscope's copies run below it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.clone.default:
            self.copies += args[0].untyped_storage().data_ptr() in self.storages
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("how", "copies"), [("none", 0), ("data_slice", 1), ("optimizer", 2)])
def test_only_the_parameters_written_are_copied_once_each(how, copies):
    class WritesTwice(EditsParameters):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            return super().forward(x)  # a second write to the same parameter: no second copy

    model = WritesTwice(how)
    counter = _ParameterCopies(model)
    with counter:
        torchscope.module_graph(model, torch.ones(2, 3))
    assert counter.copies == copies


def test_a_write_from_another_thread_cannot_be_undone_and_is_named():
    class WritesInAThread(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def write() -> None:
                with torch.no_grad():
                    self.lin.weight.mul_(2)

            thread = threading.Thread(target=write)  # dispatch modes are per thread
            thread.start()
            thread.join()
            return self.lin(x)

    model = WritesInAThread()
    weight = model.lin.weight.detach().clone()
    with pytest.warns(TorchscopeWarning, match=r"lin\.weight.*could not undo"):
        torchscope.summary(model, torch.ones(1, 2))
    assert torch.equal(model.lin.weight, 2 * weight)  # the documented exception


class WritesAnEmptyParameter(nn.Module):
    """A forward that writes in place to a parameter of no elements and to a normal one.

    An empty tensor's storage address is 0, shared by every empty tensor: the parameter-write
    guard cannot watch it, and its version counter moved anyway (hypothesis's shrunk example).
    """

    def __init__(self) -> None:
        super().__init__()
        self.empty = nn.Parameter(torch.zeros(0), requires_grad=False)
        self.scale = nn.Parameter(torch.tensor([1.5, -0.0, float("nan")]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.empty.view(-1).mul_(2)  # through a view: the parameter's counter moves
            self.empty.add_(1)
            self.scale.mul_(2)
        return x * self.scale.nan_to_num().sum() + self.empty.sum()


@pytest.mark.parametrize("call", GRAPH_CALLS)
def test_a_write_to_an_empty_parameter_changes_nothing_and_is_not_reported(call):
    model = WritesAnEmptyParameter()
    before = exact_snapshot(model)
    empty, scale = model.empty, model.scale
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call(call, model, torch.ones(2, 3))
    assert model.empty is empty and model.scale is scale
    assert_identical(before, model)  # the written normal parameter is put back bit for bit
    assert not [w for w in caught if issubclass(w.category, TorchscopeWarning)]


def test_an_unseen_write_is_still_named_beside_an_empty_parameter():
    class WritesBothInAThread(WritesAnEmptyParameter):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            thread = threading.Thread(target=super().forward, args=(x,))
            thread.start()  # dispatch modes are per thread: neither write is seen
            thread.join()
            return x

    model = WritesBothInAThread()
    with pytest.warns(TorchscopeWarning, match=r"parameter\(s\) in place .*: scale;") as caught:
        torchscope.summary(model, torch.ones(2, 3))
    assert "empty" not in str(caught[0].message)
    assert model.empty.numel() == 0


class RebindsThenWrites(nn.Module):
    """A forward that rebinds a parameter's ``.data``, then writes to the parameter in place.

    The write lands in the new storage, dropped when the old ``.data`` is put back: nothing to
    undo. Yet the parameter keeps its own version counter, which the write moves, and the
    parameter-write guard watches the old storage only (hypothesis's shrunk example).
    """

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.scale = nn.Parameter(torch.tensor([1.5, -0.0, float("nan"), 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, how = self.scale, self.how
        scale.data = torch.zeros(5)
        with torch.no_grad():
            if how == "view":
                scale.view(-1).mul_(2)
            elif how == "slice":
                scale[1:3] = 5.0
            elif how == "add_":
                scale.add_(1)
            elif how == "out=":
                torch.add(scale, 1, out=scale)
            elif how == "optimizer":  # foreach kernels, with a kernel of their own per tensor
                scale.grad = torch.ones_like(scale)
                torch.optim.SGD([scale], lr=0.1, momentum=0.9, foreach=True).step()
        return x * scale.sum()


@pytest.mark.parametrize("how", ["view", "slice", "add_", "out=", "optimizer"])
@pytest.mark.parametrize("call", GRAPH_CALLS)
def test_a_write_to_a_rebound_parameter_data_is_undone_and_not_reported(call, how):
    model = RebindsThenWrites(how)
    before = exact_snapshot(model)
    scale, data = model.scale, model.scale.data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call(call, model, torch.ones(2, 3))
    assert model.scale is scale and model.scale.data_ptr() == data.data_ptr()
    assert_identical(before, model)
    assert not [w for w in caught if issubclass(w.category, TorchscopeWarning)]


def test_an_unseen_write_to_the_old_storage_is_still_named_beside_a_rebound_data():
    class AlsoWritesTheOldStorageInAThread(RebindsThenWrites):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            old = self.scale.view(-1)  # shares the parameter's storage and version counter
            x = super().forward(x)  # a declared write to the new storage, counted

            def write() -> None:
                with torch.no_grad():
                    old.mul_(2)

            thread = threading.Thread(target=write)  # dispatch modes are per thread: unseen
            thread.start()
            thread.join()
            return x

    model = AlsoWritesTheOldStorageInAThread("add_")
    values = model.scale.detach().clone()
    with pytest.warns(TorchscopeWarning, match=r"parameter\(s\) in place .*: scale;"):
        torchscope.summary(model, torch.ones(2, 3))
    assert torch.equal(model.scale.nan_to_num(), 2 * values.nan_to_num())  # not undone


def test_scripted_code_that_edits_its_parameters_is_undone():
    class Bump(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.scale.add_(1)  # TorchScript calls the same aten ops
            return x * self.scale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Bump())
    inside = nn.Sequential(nn.Linear(3, 3), scripted)
    for model, calls in ((inside, GRAPH_CALLS[:3]), (scripted, ("summary",))):
        before = exact_snapshot(model)
        for call in calls:
            _call(call, model, torch.ones(2, 3))
            assert_identical(before, model)


def test_a_compiled_submodule_still_runs_and_its_edits_are_undone():
    class Writes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3), requires_grad=False)
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.scale.add_(1)
            return self.lin(x * self.scale)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # aot_eager: AOTAutograd's functionalisation and fake tensors, without compiling C++
            self.inner = torch.compile(Writes(), backend="aot_eager")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    model = Outer()
    model(torch.ones(2, 3))
    with torch.no_grad():
        model.inner.scale.fill_(1)
    expected = Writes()
    expected.load_state_dict(model.inner._orig_mod.state_dict())
    before = exact_snapshot(model)
    for call in GRAPH_CALLS[:3]:
        _call(call, model, torch.ones(2, 3))
        assert_identical(before, model)
    # the compiled module still computes what its eager twin does, from the restored scale
    assert torch.equal(model(torch.ones(2, 3)), expected(torch.ones(2, 3)))


def test_the_memory_estimate_leaves_parameter_version_counters_alone():
    model = EditsParameters("add_")
    pending = (model.lin.weight**2).sum()  # autograd saved the weight for this backward
    version = model.lin.weight._version
    torchscope.estimate_memory(model, torch.ones(2, 3))
    # the fake twins shared the real parameters' version counters: the fake pass's add_
    # bumped the real weight's, and this backward refused to run
    assert model.lin.weight._version == version
    pending.backward()
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
