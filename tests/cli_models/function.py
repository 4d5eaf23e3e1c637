"""One public function returns a model; example_input is a function."""

import torch
from torch import nn


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:  # takes arguments: never called
    return x * factor


def describe():  # returns nothing: never called
    raise AssertionError("torchscope must not call a function without a return value")


def tiny_mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))


def example_input():
    return torch.randn(3, 5)
