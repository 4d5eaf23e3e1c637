"""A class that needs arguments and a build_model() factory; example_input is a tuple."""

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.encoder(x)))


def build_model() -> Net:
    return Net(hidden=16)


example_input = (torch.randn(2, 8),)
