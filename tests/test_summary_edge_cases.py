"""Awkward models that once broke summary()'s promises (found in review); each stays fixed."""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import torch
from torch import nn

import torchscope
from torchscope import SummaryError
from torchscope.render.table import rows

from .state import assert_unchanged, snapshot


def _params_column(result) -> int:
    return sum(
        int(r.cells["params"].replace(",", ""))
        for r in rows(result)
        if r.cells["params"][0].isdigit()
    )


class ExpandedBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("grid", torch.zeros(1, 4).expand(3, 4))
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) + self.grid[0]


def test_expanded_buffers_are_left_alone_and_the_rest_restored():
    model = ExpandedBuffer()
    x = torch.randn(8, 4)
    before = snapshot(model)
    torchscope.summary(model, x, mode="train")
    assert_unchanged(before, model)


def test_inference_mode_buffers_are_restored():
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    stats = model[1].running_mean.clone()
    with torch.inference_mode():
        torchscope.summary(model, input_size=(8, 4), mode="train")
    assert torch.equal(model[1].running_mean, stats)


class RebindsBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("average", torch.zeros(4))
        self.register_buffer("cache", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps = self.steps + 1
        self.average = 0.9 * self.average + 0.1 * x.mean(0)
        self.cache = x.detach()
        return self.lin(x)


def test_buffers_rebound_or_filled_by_forward_are_put_back():
    model = RebindsBuffers()
    steps, average = model.steps, model.average
    x = torch.randn(2, 4)
    before = snapshot(model)
    torchscope.summary(model, x)
    assert_unchanged(before, model)
    assert model.steps is steps and model.average is average and model.cache is None
    assert set(model.state_dict()) == {"lin.weight", "lin.bias", "steps", "average"}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_transformer_fast_path_with_padding_mask_and_nested_tensors():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    src = torch.randn(2, 5, 16)
    result = torchscope.summary(encoder, {"src": src, "src_key_padding_mask": mask})
    assert result.output_shapes == ((2, 5, 16),)
    layer_inputs = [
        layer.input_shapes[0] for layer in result.layers if layer.name.startswith("layers.")
    ]
    assert layer_inputs and all(len(shape) == 3 for shape in layer_inputs)
    assert result.to_json()  # ragged dimensions are plain ints (-1), so JSON works


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_nested_tensor_input_shapes_mark_ragged_dimensions():
    nested = torch.nested.nested_tensor([torch.ones(2, 4), torch.ones(3, 4)])
    result = torchscope.summary(nn.Identity(), nested)
    assert result.input_shapes == ((2, -1, 4),)


class Block(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self._shared = [shared]  # a module held outside the block's own tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared[0](self.lin(x))


class BorrowsAModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.layers = nn.Sequential(*[nn.Sequential(Block(self.proj)) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_params_column_counts_modules_called_under_a_cut_row(depth):
    result = torchscope.summary(BorrowsAModule(), torch.randn(1, 8), depth=depth)
    assert result.uncalled == ()
    assert _params_column(result) == result.total_params == 216


class TogglesRequiresGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def train(self, mode: bool = True) -> TogglesRequiresGrad:
        super().train(mode)
        for param in self.backbone.parameters():
            param.requires_grad_(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_requires_grad_changed_by_a_train_override_is_restored():
    model = TogglesRequiresGrad()
    before = snapshot(model)
    torchscope.summary(model, input_size=(2, 4))  # eval mode calls the override with False
    assert_unchanged(before, model)
    assert model.backbone.weight.requires_grad


def test_in_place_ops_never_reach_the_callers_input():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 4))
    x = -torch.ones(2, 4)
    torchscope.summary(model, x)
    torchscope.summary(model, x, device="cpu")
    torchscope.summary(nn.Linear(4, 4), input_size=(2, 4), forward_kwargs={})
    assert torch.equal(x, -torch.ones(2, 4))


def _raise(*args, **kwargs):
    raise RuntimeError("hook failed")


def test_a_raising_user_pre_hook_is_blamed_on_its_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)))
    model[1][1].register_forward_pre_hook(_raise)
    with pytest.raises(SummaryError) as info:
        torchscope.summary(model, input_size=(2, 4))
    assert info.value.module_name == "1.1" and info.value.module_type == "Linear"
    failed = [layer.name for layer in info.value.partial.layers if layer.failed]
    assert failed == ["", "1", "1.1"]


def test_a_raising_user_forward_hook_is_blamed_on_its_module():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)))
    model[1][0].register_forward_hook(_raise)
    with pytest.raises(SummaryError) as info:
        torchscope.summary(model, input_size=(2, 4))
    assert info.value.module_name == "1.0" and info.value.module_type == "ReLU"
    assert [layer.name for layer in info.value.partial.layers if layer.failed] == ["", "1", "1.0"]


def test_scripted_submodules_are_counted_in_the_enclosing_row():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    model = nn.Sequential(nn.Linear(4, 4), scripted)
    before = snapshot(model)
    result = torchscope.summary(model, input_size=(3, 4), mode="train")
    assert_unchanged(before, model)
    assert result.scripted == ("1",)
    assert [layer.name for layer in result.layers] == ["", "0"]
    assert result.total_params == _params_column(result) == 20 + 20 + 8
    assert result.uncalled == ()
    assert "TorchScript submodules" in str(result)
    # scripted as a whole, it is read without hooks (tests/test_torchscript.py)
    assert torchscope.summary(scripted, input_size=(3, 4)).total_params == 20 + 8


def test_a_module_called_from_the_roots_pre_hook_is_nested_under_the_root():
    model = nn.Sequential(nn.Linear(4, 4))
    model.norm = nn.LayerNorm(4)
    model.register_forward_pre_hook(lambda module, args: (module.norm(args[0]),))
    result = torchscope.summary(model, input_size=(2, 4))
    assert result.layers[0].name == "" and result.layers[0].parent is None
    assert [layer.name for layer in result.layers] == ["", "norm", "0", "norm"]
    assert [layer.parent for layer in result.layers[1:]] == [0, 0, 0]


def test_concurrent_summaries_leave_no_global_state_behind():
    limit = sys.getrecursionlimit()
    errors = []
    models = [nn.Sequential(nn.Linear(4, 4), nn.Dropout()) for _ in range(4)]
    torch.manual_seed(5)  # building the models drew from the RNG; summaries must not
    rng = torch.random.get_rng_state()

    def work(model: nn.Module) -> None:
        try:
            for _ in range(5):
                torchscope.summary(model, input_size=(2, 4), mode="train")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(model,)) for model in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sys.getrecursionlimit() == limit
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_the_same_list_returned_twice_counts_twice():
    class Twice(nn.Module):
        def forward(self, x: torch.Tensor):
            feats = [x, x * 2]
            return feats, feats

    assert len(torchscope.summary(Twice(), input_size=(1, 2)).output_shapes) == 4


def test_forward_kwargs_tensors_follow_the_device():
    with torch.device("meta"):
        model = nn.Linear(4, 4)

    class WithBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = model

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + bias

    result = torchscope.summary(
        WithBias(), input_size=(2, 4), device="meta", forward_kwargs={"bias": torch.ones(4)}
    )
    assert result.output_shapes == ((2, 4),)


def test_complex_models_get_complex_inputs_and_quantized_dtypes_are_refused():
    model = nn.Linear(4, 4, dtype=torch.complex64)
    assert torchscope.summary(model, input_size=(2, 4)).param_bytes == 20 * 8
    with pytest.raises(TypeError, match="quantize an input yourself"):
        torchscope.summary(nn.Linear(4, 4), input_size=(2, 4), dtypes=torch.quint8)
