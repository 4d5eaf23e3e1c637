from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import nn

import torchscope
from torchscope import ModelSummary, SummaryError, TorchscopeError
from torchscope.models import LeNet

from .zoo import BY_NAME, ZOO, CallsTwice, TiedLanguageModel, WithUnusedHead, call


def unique_param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def observed_calls(model: nn.Module, inputs: Any) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(qualified name, output shapes) per module call, recorded with the test's own hooks."""
    names = {id(m): name for name, m in model.named_modules()}
    seen: list[tuple[str, list[tuple[int, ...]]]] = []
    order: list[int] = []
    handles = []

    def pre(module: nn.Module, args: Any) -> None:
        order.append(len(seen))
        seen.append((names[id(module)], []))

    def post(module: nn.Module, args: Any, output: Any) -> None:
        slot = order.pop()
        flat: list[torch.Tensor] = []
        stack = [output]
        while stack:  # depth-first, left to right, like summary promises
            item = stack.pop()
            if isinstance(item, torch.Tensor):
                flat.append(item)
            elif isinstance(item, (list, tuple)):
                stack.extend(reversed(item))
            elif isinstance(item, dict):
                stack.extend(reversed(list(item.values())))
            elif dataclasses.is_dataclass(item):
                stack.extend(reversed([getattr(item, f.name) for f in dataclasses.fields(item)]))
        seen[slot][1].extend(tuple(t.shape) for t in flat)

    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        model.eval()
        with torch.no_grad():
            call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_totals_equal_unique_parameters(entry):
    model = entry.build()
    result = torchscope.summary(model, entry.make_input())
    assert result.total_params == unique_param_count(model)
    trainable = sum(
        p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values()
    )
    assert result.trainable_params == trainable
    assert result.non_trainable_params == result.total_params - trainable
    assert result.total_buffers == sum(
        b.numel() for b in {id(b): b for b in model.buffers()}.values()
    )
    assert result.param_bytes == sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
    )


@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_layer_shapes_match_a_plain_forward(entry):
    model = entry.build()
    inputs = entry.make_input()
    expected = observed_calls(model, inputs)
    result = torchscope.summary(model, inputs)
    assert [(layer.name, list(layer.output_shapes)) for layer in result.layers] == expected


@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_params_column_adds_up_at_every_depth(entry):
    from torchscope.render.table import rows

    model = entry.build()
    result = torchscope.summary(model, entry.make_input())
    uncalled_params = {
        id(p): p for name in result.uncalled for p in model.get_submodule(name).parameters()
    }
    uncalled = sum(p.numel() for p in uncalled_params.values())
    max_depth = max(layer.depth for layer in result.layers)
    for depth in range(max_depth + 1):
        shown = rows(dataclasses.replace(result, depth=depth))
        column = sum(
            int(r.cells["params"].replace(",", "")) for r in shown if r.cells["params"][0].isdigit()
        )
        if depth == 0:
            assert column == result.total_params
        else:
            assert column == result.total_params - uncalled


def test_tied_weights_are_counted_once():
    model = TiedLanguageModel()
    result = torchscope.summary(model, torch.zeros(1, 3, dtype=torch.long))
    embed = model.embed.weight.numel()
    assert result.total_params == embed + 16 * 16 + 16
    weight = next(p for p in result.parameters if p.name == "embed.weight")
    assert weight.aliases == ("decoder.weight",)
    decoder = next(layer for layer in result.layers if layer.name == "decoder")
    assert decoder.params == embed  # its own tensor, which is also embed's
    assert "(shared)" in str(result)


def test_module_called_several_times():
    model = CallsTwice()
    result = torchscope.summary(model, torch.ones(2, 8))
    block_calls = [layer for layer in result.layers if layer.name == "block"]
    assert [c.is_repeat for c in block_calls] == [False, True, True]
    act_calls = [layer for layer in result.layers if layer.name == "act"]
    assert len(act_calls) == 4  # three in the loop and once under its alias
    assert result.total_params == 8 * 8 + 8
    text = str(result)
    assert text.count("(repeat)") == 3  # the two repeats of block, and the footer line


def test_uncalled_modules_and_functional_parameters():
    result = torchscope.summary(WithUnusedHead(), torch.ones(2, 4))
    assert result.uncalled == ("aux",)
    assert result.total_params == 4 + 20 + (8 + 2) + (4 + 2)
    root = result.layers[0]
    assert [result.parameters[i].name for i in root.own_parameters] == ["scale"]
    assert "Never called by forward" in str(result)


def test_dict_input_and_nested_outputs():
    entry = BY_NAME["dict_in_out"]
    result = torchscope.summary(entry.build(), entry.make_input())
    assert result.output_shapes == ((2, 3), (2, 6), (2, 6), (2, 6), (2, 6), (2, 6))
    assert result.input_shapes == ((2, 12), (2, 4))
    assert result.layers[0].input_shapes == ((2, 12), (2, 4))


def test_non_tensor_keyword_arguments_pass_through():
    entry = BY_NAME["keyword_model"]
    result = torchscope.summary(entry.build(), entry.make_input())
    assert result.output_shapes == ((2,),)
    result = torchscope.summary(entry.build(), torch.ones(2, 6), forward_kwargs={"scale": 0.5})
    assert result.output_shapes == ((2, 6),)


def test_positional_tuple_and_namedtuple_inputs():
    transformer = BY_NAME["transformer"]
    src, tgt = transformer.make_input()
    result = torchscope.summary(transformer.build(), (src, tgt))
    assert result.output_shapes == ((2, 3, 16),)
    packed = nn.utils.rnn.pack_padded_sequence(
        torch.ones(2, 4, 3), torch.tensor([4, 2]), batch_first=True
    )
    result = torchscope.summary(nn.LSTM(3, 5, batch_first=True), packed)
    assert result.layers[0].input_shapes[0] == (6, 3)  # a PackedSequence is one argument


def test_meta_model_uses_no_memory_and_keeps_shapes():
    entry = BY_NAME["meta_lenet"]
    model = entry.build()
    result = torchscope.summary(model, input_size=(4, 1, 28, 28))
    assert result.device == "meta"
    assert result.total_params == 61_706
    assert result.output_shapes == ((4, 10),)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_input_size_is_deterministic_and_uses_model_dtype():
    model = LeNet().to(torch.float64)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    torchscope.summary(model, input_size=(1, 1, 28, 28))
    torchscope.summary(model, input_size=(1, 1, 28, 28))
    assert seen[0].dtype == torch.float64
    assert torch.equal(seen[0], seen[1])
    result = torchscope.summary(model, input_size=(1, 1, 28, 28))
    assert result.param_bytes == 61_706 * 8


def test_several_input_sizes_and_dtypes():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)

        def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            return self.embed(tokens) * weights.unsqueeze(-1)

    result = torchscope.summary(
        TwoInputs(), input_size=[(2, 3), (2, 3)], dtypes=[torch.long, torch.float32]
    )
    assert result.output_shapes == ((2, 3, 4),)
    assert result.input_bytes == 2 * 3 * 8 + 2 * 3 * 4


@pytest.mark.parametrize(
    "wrap",
    [nn.DataParallel, lambda m: torch.compile(m)],
    ids=["DataParallel", "torch.compile"],
)
def test_wrapped_models_are_unwrapped(wrap):
    model = LeNet()
    result = torchscope.summary(wrap(model), input_size=(1, 1, 28, 28))
    assert result.model_type == "LeNet"
    assert result.layers[0].name == ""
    assert result.total_params == 61_706


def test_distributed_data_parallel_is_unwrapped(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = nn.parallel.DistributedDataParallel(LeNet())
        result = torchscope.summary(model, input_size=(1, 1, 28, 28))
    finally:
        dist.destroy_process_group()
    assert result.model_type == "LeNet"
    assert result.total_params == 61_706


def test_depth_changes_only_the_table():
    model = BY_NAME["resnet18"].build()
    shallow = torchscope.summary(model, input_size=(1, 3, 32, 32), depth=1)
    deep = torchscope.summary(model, input_size=(1, 3, 32, 32), depth=4)
    assert shallow.layers == deep.layers
    assert shallow.total_params == deep.total_params
    assert len(str(shallow).splitlines()) < len(str(deep).splitlines())
    assert "conv1 (Conv2d)" in str(deep) and "0 (BasicBlock)" not in str(shallow)


def test_columns_are_selectable():
    result = torchscope.summary(
        LeNet(), input_size=(1, 1, 28, 28), columns=["params_percent", "trainable"]
    )
    header = str(result).splitlines()[2]
    assert "Params %" in header and "Trainable" in header and "Output shape" not in header
    assert result.columns == ("params_percent", "trainable")


def test_json_round_trip_and_schema_version():
    result = torchscope.summary(BY_NAME["tied_lm"].build(), torch.zeros(1, 4, dtype=torch.long))
    data = json.loads(result.to_json())
    assert data["schema_version"] == 1
    assert data["totals"]["total_params"] == result.total_params
    assert ModelSummary.from_dict(data) == result
    with pytest.raises(ValueError, match="schema_version"):
        ModelSummary.from_dict({**data, "schema_version": 99})


def test_markdown_and_html():
    result = torchscope.summary(LeNet(), input_size=(1, 1, 28, 28))
    markdown = result.to_markdown()
    assert "| Layer (type)" in markdown and "- Total params: 61,706" in markdown
    html = result._repr_html_()
    assert html.startswith('<div class="torchscope-summary">') and "<table>" in html
    assert html.count("<tr>") == len(result.layers) + 1
    assert "Total params: 61,706" in html


def test_summary_prints_nothing(capsys):
    torchscope.summary(LeNet(), input_size=(1, 1, 28, 28))
    assert capsys.readouterr() == ("", "")


# -- errors ------------------------------------------------------------------------------------


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, 8, 3), nn.Linear(5, 5)
        )  # Linear gets the wrong width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def test_forward_failure_names_the_module_and_shows_the_partial_table():
    with pytest.raises(SummaryError) as info:
        torchscope.summary(Broken(), input_size=(1, 3, 16, 16))
    error = info.value
    assert isinstance(error, TorchscopeError)
    assert error.module_name == "body.1"
    assert error.module_type == "Linear"
    assert error.input_shapes == ((1, 8, 12, 12),)
    assert isinstance(error.__cause__, RuntimeError)
    message = str(error)
    assert "'body.1' (Linear)" in message and "[1, 8, 12, 12]" in message
    assert "Layers that ran before the failure" in message
    assert "0 (Conv2d)" in message and "(failed)" in message
    assert error.partial is not None
    assert [layer.name for layer in error.partial.layers] == [
        "",
        "stem",
        "stem.0",
        "stem.1",
        "body",
        "body.0",
        "body.1",
    ]
    assert [layer.failed for layer in error.partial.layers] == [
        True,
        False,
        False,
        False,
        True,
        False,
        True,
    ]


def test_failure_inside_a_forward_body_names_the_enclosing_module():
    class Raises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("missing feature")

    with pytest.raises(SummaryError, match=r"module '\(root\)' \(Raises\)") as info:
        torchscope.summary(Raises(), torch.ones(1, 2))
    assert isinstance(info.value.__cause__, KeyError)


def test_missing_input_gets_a_hint():
    # without any input summary() reads only the module tree (tests/test_summary_no_input.py);
    # keyword arguments alone would run the forward without its positional input: refused
    # before the model runs, naming what forward takes and how to give it
    with pytest.raises(
        ValueError, match=r"summary\(\) needs an input: LeNet.forward takes x\b.*input_size="
    ):
        torchscope.summary(LeNet(), forward_kwargs={})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input": torch.ones(1, 1, 28, 28), "input_size": (1, 1, 28, 28)}, ValueError, "not both"),
        ({"input_size": "1x28"}, TypeError, "input_size must be a shape"),
        ({"input_size": (1, -1, 28, 28)}, ValueError, ">= 0"),
        ({"input_size": (1, 1, 28, 28), "dtypes": ["float"]}, TypeError, "torch.dtype"),
        (
            {"input_size": [(1, 1, 28, 28)], "dtypes": [torch.float32, torch.float64]},
            ValueError,
            "one dtype per shape",
        ),
        ({"input": torch.ones(1, 1, 28, 28), "dtypes": torch.float32}, ValueError, "input_size"),
        ({"input_size": (1, 1, 28, 28), "depth": -1}, ValueError, "depth must be >= 0"),
        ({"input_size": (1, 1, 28, 28), "depth": 2.5}, TypeError, "depth must be an int"),
        (
            {"input_size": (1, 1, 28, 28), "columns": ["params", "flops!"]},
            ValueError,
            "choose from",
        ),
        ({"input_size": (1, 1, 28, 28), "mode": "training"}, ValueError, "mode must be one of"),
        ({"input_size": (1, 1, 28, 28), "device": "meta"}, ValueError, "never moves"),
        ({"input_size": (1, 1, 28, 28), "device": "not-a-device"}, ValueError, "not a device"),
        ({"input": "an image"}, TypeError, "input must be a tensor"),
        (
            {"input": {"x": 1}, "forward_kwargs": {"x": 2}},
            ValueError,
            "both in input and in forward_kwargs",
        ),
    ],
)
def test_bad_arguments_are_rejected_with_the_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        torchscope.summary(LeNet(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        torchscope.summary(lambda x: x, torch.ones(1))  # type: ignore[arg-type]


def test_lazy_modules_are_not_initialised():
    model = nn.Sequential(nn.LazyLinear(4))
    result = torchscope.summary(model, torch.ones(2, 3))  # of an initialised copy
    assert result.total_params == 3 * 4 + 4
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)


def test_memory_option_runs_one_real_pass_and_two_fake_ones(monkeypatch):
    """What ``summary(memory=True)`` runs, counted by a hook of the test's own: the summary's
    real forward, then the memory estimate's inference and training passes on fake tensors,
    each instrumented once. The estimate cannot ride on the summary's forward: its per-module
    hooks turn off PyTorch's fused fast paths (TransformerEncoderLayer's), so the kernels,
    and the peak, would be those of the hooked model (docs/costs.md)."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensor

    import torchscope.collect._memory_passes
    import torchscope.collect.hooks
    import torchscope.collect.summary

    entries: list[bool] = []
    real_instrumented = torchscope.collect.hooks.instrumented

    @contextlib.contextmanager
    def counted(model: nn.Module, *, grad: bool) -> Any:
        entries.append(grad)
        with real_instrumented(model, grad=grad) as hooks:
            yield hooks

    for module in (torchscope.collect.summary, torchscope.collect._memory_passes):
        monkeypatch.setattr(module, "instrumented", counted)
    model = LeNet()
    passes: list[tuple[str, bool]] = []
    model.register_forward_pre_hook(
        lambda _, args: passes.append(
            ("fake" if isinstance(args[0], FakeTensor) else "real", torch.is_grad_enabled())
        )
    )
    result = torchscope.summary(model, input_size=(2, 1, 28, 28), memory=True)
    assert result.memory is not None
    assert passes == [("real", False), ("fake", False), ("fake", True)]
    assert entries == [False, False, True]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_memory_option_calls_the_models_forward_three_times(mode: str):
    """The user's ``forward`` runs once for the summary and once per fake pass of the
    estimate (inference, training), counted by the model itself with no hook of the test's.
    Fewer cannot give today's figures: the summary's pass is hooked and on real tensors
    (hooks turn off fused fast paths, and the summary must succeed where fake tensors
    cannot run), and the two fake passes differ in train flag, autograd and backward. The
    summary's own backward (``mode="train"``) runs no forward."""

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(torch.is_grad_enabled())
            return self.linear(x).relu()

    calls: list[bool] = []
    model = Counting()
    result = torchscope.summary(model, torch.randn(2, 8), mode=mode, memory=True)
    assert result.memory is not None
    assert calls == [mode == "train", False, True]  # the summary's, inference, training
    calls.clear()
    torchscope.summary(model, torch.randn(2, 8), mode=mode)
    assert len(calls) == 1
