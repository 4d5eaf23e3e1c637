"""summary(model) without an input: a parameter-only table read from the module tree.

PyTorch is the oracle: ``model.parameters()`` (each tensor once) for the totals and the
trainable split, ``named_parameters()`` for the names, ``model.buffers()`` for the buffers.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy

import torchscope
from torchscope.cli.main import main
from torchscope.models import LeNet
from torchscope.records import ModelSummary

from .state import assert_unchanged, snapshot
from .test_cli import model as cli_model
from .zoo import ZOO, TiedLanguageModel

NOTE = "Parameters only: no input was given, so the model was not run."


def oracle(model: nn.Module) -> tuple[int, int, int]:
    """Total and trainable parameters and buffer elements, each tensor once, per PyTorch."""
    params = list(model.parameters())
    return (
        sum(p.numel() for p in params),
        sum(p.numel() for p in params if p.requires_grad),
        sum(b.numel() for b in model.buffers()),
    )


def params_column_sum(summary: ModelSummary) -> int:
    """The Params column of the drawn table, added up (markers count nothing)."""
    from torchscope.render.table import rows

    return sum(
        int(row.cells["params"].replace(",", ""))
        for row in rows(summary)
        if row.cells["params"][0].isdigit()
    )


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch deprecates TorchScript (FutureWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*jit")
        return torch.jit.script(module)


class Frozen(nn.Module):
    """A frozen backbone under a trainable head, BatchNorm buffers included."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.backbone.requires_grad_(False)
        self.head.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean((2, 3)))


class SharedInLists(nn.Module):
    """One Linear held under four names, two of them inside nested containers."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.blocks = nn.ModuleList([nn.Sequential(self.proj, nn.ReLU()), self.proj])
        self.table = nn.ModuleDict({"again": self.proj, "own": nn.Linear(6, 1)})
        self.extra = nn.ParameterList([nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table["own"](self.blocks[1](self.blocks[0](x)))


class ScriptedChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.head = scripted(nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def weight_normed() -> nn.Module:
    return nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(5, 4)), nn.ReLU(), nn.Linear(4, 2)
    )


def nested(levels: int) -> nn.Module:
    model: nn.Module = nn.Linear(2, 2)
    for _ in range(levels):
        model = nn.Sequential(model)
    return model


MODELS = {
    **{entry.name: entry.build for entry in ZOO},
    "frozen": Frozen,
    "shared_in_lists": SharedInLists,
    "scripted_child": ScriptedChild,
    "scripted_root": lambda: scripted(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))),
    "weight_norm": weight_normed,
    "half": lambda: LeNet().half(),
}


@pytest.mark.parametrize("name", MODELS)
def test_totals_names_and_split_match_pytorch_and_the_model_is_untouched(name):
    model = MODELS[name]()
    before = snapshot(model)
    result = torchscope.summary(model)
    assert_unchanged(before, model)

    total, trainable, buffers = oracle(model)
    assert (result.total_params, result.trainable_params, result.total_buffers) == (
        total,
        trainable,
        buffers,
    )
    assert result.non_trainable_params == total - trainable
    assert [p.name for p in result.parameters] == [n for n, _ in model.named_parameters()]
    assert result.param_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert result.parameters_only
    assert all(not layer.input_shapes and not layer.output_shapes for layer in result.layers)
    assert (result.total_macs, result.input_bytes, result.output_bytes) == (0, 0, 0)
    # the drawn table adds up to the total at full depth
    assert params_column_sum(dataclasses.replace(result, depth=10**6)) == total
    # every module of the tree has a row (a shared one under each of its names)
    names = {layer.name for layer in result.layers}
    assert names >= {n for n, _ in model.named_modules()}
    assert str(result).rstrip().endswith("for a forward without arguments.")


def test_the_default_table_shows_own_and_subtree_counts_and_the_trainable_split(golden):
    result = torchscope.summary(Frozen())
    text = str(result)
    assert text.splitlines()[0] == "Frozen (parameters only, device=cpu, depth=3)"
    assert result.columns == ("params", "subtree_params", "trainable")
    backbone = next(layer for layer in result.layers if layer.name == "backbone")
    assert (backbone.params, backbone.trainable_params) == (
        sum(p.numel() for p in Frozen().backbone.parameters()),
        0,
    )
    assert NOTE in text
    # no line about inputs, outputs or operations: nothing ran
    for absent in ("Input size", "Output size", "Forward MACs", "operations"):
        assert absent not in text
    golden("frozen_parameters_only.txt", text + "\n")


def test_shared_modules_are_counted_once_and_drawn_under_each_name():
    model = SharedInLists()
    result = torchscope.summary(model)
    rows_by_name = {layer.name: layer for layer in result.layers}
    for alias in ("blocks.0.0", "blocks.1", "table.again"):
        assert alias in rows_by_name
    proj = next(p for p in result.parameters if p.name == "proj.weight")
    assert set(proj.aliases) == {"blocks.0.0.weight", "blocks.1.weight", "table.again.weight"}
    text = str(result)
    assert "(shared)" in text and "tied or shared weights" in text
    assert result.total_params == sum(p.numel() for p in model.parameters())


def test_modules_shared_at_every_level_are_drawn_once_per_edge_not_per_path():
    # each level holds the level below twice: 2**10 paths from the root to the Linear, but
    # its submodules are drawn once, so the rows are the tree's 21 edges plus the root
    model: nn.Module = nn.Linear(3, 3)
    for _ in range(10):
        model = nn.Sequential(model, model)
    result = torchscope.summary(model, depth=100)
    assert len(result.layers) == 1 + 2 * 10
    assert result.total_params == 12
    assert len(result.parameters[0].aliases) == 2**10 - 1  # every name is kept


def test_a_deep_tree_needs_no_recursion():
    levels = 3 * sys.getrecursionlimit()
    result = torchscope.summary(nested(levels), depth=levels + 1)
    assert len(result.layers) == levels + 1
    assert result.total_params == 6
    assert params_column_sum(result) == 6


def test_lazy_modules_show_uninitialised_counts_and_stay_lazy():
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(5), nn.LazyBatchNorm1d())
    lazy_before = [id(t) for t in (*model.parameters(), *model.buffers()) if is_lazy(t)]
    result = torchscope.summary(model)
    lazy_after = [id(t) for t in (*model.parameters(), *model.buffers()) if is_lazy(t)]
    assert lazy_after == lazy_before and len(lazy_after) == 6  # nothing was initialised
    assert type(model[1]) is nn.LazyLinear

    assert result.total_params == 16  # the initialised Linear only
    assert result.uninitialized == (
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "2.running_mean",
        "2.running_var",
    )
    assert "2.num_batches_tracked" not in result.uninitialized  # a plain scalar buffer
    rows = str(result).splitlines()
    assert any(line.startswith("├─ 1 (LazyLinear)") and "(uninitialised)" in line for line in rows)
    root = rows[4]  # under the title, a rule, the header and its underline
    assert root.startswith("Sequential ")
    assert "16 + (uninitialised)" in root
    assert any(
        "lazy parameters or buffers whose shapes the first forward pass sets" in line
        and "1.weight" in line
        for line in rows
    )
    assert "uninitialised" in repr(result.parameters[2])


def test_meta_models_are_read_without_memory():
    with torch.device("meta"):
        model = LeNet()
    result = torchscope.summary(model)
    assert result.device == "meta"
    assert result.total_params == sum(p.numel() for p in LeNet().parameters())


def test_scripted_models_are_read_through_the_script():
    model = ScriptedChild()
    result = torchscope.summary(model)
    head = next(layer for layer in result.layers if layer.name == "head")
    assert head.type == "scripted Sequential"
    assert head.params == sum(p.numel() for p in model.head.parameters())
    assert {layer.name for layer in result.layers} >= {"head.0", "head.2"}
    assert result.scripted == ("head",)
    assert "TorchScript modules (parameters read from the script): head" in str(result)

    root = scripted(nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 1))))
    whole = torchscope.summary(root)
    assert whole.scripted == ("",)
    assert [layer.name for layer in whole.layers] == ["", "0", "1", "1.0", "1.1"]
    assert whole.total_params == 21


def test_wrappers_are_unwrapped():
    inner = Frozen()
    assert torchscope.summary(nn.DataParallel(inner)).model_type == "Frozen"


def test_records_round_trip_and_render_in_every_format():
    result = torchscope.summary(nn.Sequential(nn.Linear(3, 4), nn.LazyLinear(2)), depth=1)
    data = json.loads(result.to_json())
    assert data["parameters_only"] is True
    assert [p["initialized"] for p in data["parameters"]] == [True, True, False, False]
    assert ModelSummary.from_dict(data) == result
    assert "(parameters only, device=cpu, depth=1)" in result.to_markdown()
    assert f"- {NOTE}" in result.to_markdown()
    html = result._repr_html_()
    assert "(parameters only, device=cpu, depth=1)" in html and "With submodules" in html
    assert repr(result) == (
        "<ModelSummary of Sequential: 16 params (16 trainable), parameters only (no input)>"
    )


def test_a_summary_with_input_keeps_its_table_and_can_show_subtree_counts():
    result = torchscope.summary(
        LeNet(), input_size=(1, 1, 28, 28), columns=["params", "subtree_params"]
    )
    assert not result.parameters_only
    assert "mode=eval" in str(result).splitlines()[0]
    assert NOTE not in str(result)
    assert result.layers[0].params == sum(p.numel() for p in LeNet().parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"columns": ["params", "macs"]}, r"column\(s\) 'macs' need a forward pass"),
        ({"columns": "output_shape"}, r"choose from 'params', 'params_percent', 'subtree"),
        ({"memory": True}, r"memory=True applies to the forward pass.*summary\(model, x\)"),
        ({"all_ops": True}, r"all_ops=True applies to the forward pass"),
        ({"dtypes": torch.float16}, r"dtypes= applies to the forward pass"),
        ({"optimizer": "adam"}, r"optimizer= applies to the forward pass"),
        ({"columns": ["nope"]}, r"unknown column\(s\) 'nope'"),
        ({"depth": -1}, r"depth must be >= 0"),
        ({"mode": "test"}, r"mode must be one of"),
        ({"device": "meta"}, r"the model is on cpu but device='meta'"),
    ],
)
def test_options_that_need_a_forward_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        torchscope.summary(LeNet(), **kwargs)


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match=r"needs an nn\.Module"):
        torchscope.summary(LeNet().state_dict())  # type: ignore[arg-type]


class NoArguments(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(2, 3))
        self.decode = nn.Linear(3, 5)

    def forward(self) -> torch.Tensor:
        return self.decode(self.latent)


def test_an_empty_input_runs_a_forward_without_arguments():
    model = NoArguments()
    assert torchscope.summary(model).parameters_only
    ran = torchscope.summary(model, ())
    assert not ran.parameters_only
    assert ran.output_shapes == ((2, 5),)
    assert ran.total_macs == 2 * 3 * 5


def test_the_tied_language_model_counts_its_tied_weight_once():
    model = TiedLanguageModel()
    result = torchscope.summary(model)
    assert result.total_params == sum(p.numel() for p in model.parameters())
    assert any(p.aliases for p in result.parameters)


# -- the command line ---------------------------------------------------------------------------


def test_cli_without_a_known_input_prints_the_parameter_table_and_says_how_to_get_shapes(capsys):
    assert main(["summary", cli_model("no_input.py")]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Sequential (parameters only, device=cpu, depth=3)")
    assert "Total params: 52" in captured.out
    assert captured.err.startswith("torchscope: note: no input known for the model")
    for text in ("only its parameters are shown", "--input-size", "try --input-size 1,12"):
        assert text in captured.err


def test_cli_json_without_input(capsys):
    assert main(["summary", cli_model("no_input.py"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters_only"] is True and data["totals"]["total_params"] == 52


@pytest.mark.parametrize(
    "options",
    [["--memory"], ["--all-ops"], ["--dtype", "float16"], ["--columns", "params,macs"]],
)
def test_cli_options_that_need_an_input_still_ask_for_one(options, capsys):
    assert main(["summary", cli_model("no_input.py"), *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no input known" in captured.err and "try --input-size 1,12" in captured.err
