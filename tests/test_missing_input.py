"""Calls that must run the model say how to give an input when none is given, and a forward
that takes no arguments still runs without one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchscope

from .state import assert_unchanged, snapshot

CALLS = {
    "module_graph": torchscope.module_graph,
    "autograd_graph_of": torchscope.autograd_graph_of,
    "time_layers": lambda model, **kw: torchscope.time_layers(model, warmup=1, repeat=2, **kw),
    "estimate_memory": torchscope.estimate_memory,
}


class Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, *, features: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(features) * scale


class Constant(nn.Module):
    """A forward of no arguments: a learned query, a generator from its own noise buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(3, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self) -> torch.Tensor:
        return self.fc(self.query)


MODELS = {
    "sequential": lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
    "conv": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()),
    "keyword_only": Keyword,
    "lstm": lambda: nn.LSTM(4, 8),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("name", list(MODELS))
def test_no_input_is_refused_with_the_way_to_give_one(call, name):
    model = MODELS[name]()
    before = snapshot(model)
    with pytest.raises(ValueError) as caught:
        CALLS[call](model)
    message = str(caught.value)
    # names the call, what forward takes, and both ways to give an input
    assert message.startswith(f"{call}() needs an input"), message
    assert f"{call}(model, x)" in message and "input_size=" in message, message
    assert_unchanged(before, model)


def test_keyword_arguments_given_in_forward_kwargs_are_enough():
    model = Keyword()
    graph = torchscope.module_graph(model, forward_kwargs={"features": torch.randn(2, 4)})
    assert any(node.label.startswith("fc") for node in graph.nodes)


@pytest.mark.parametrize("call", list(CALLS))
def test_a_forward_without_arguments_runs_without_an_input(call):
    model = Constant()
    result = CALLS[call](model)
    assert result is not None
    assert torchscope.summary(model, ()).total_params == 3 * 4 + 4 * 2 + 2
