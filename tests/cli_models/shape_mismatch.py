"""fc2 expects 32 features but fc1 gives 16: the forward fails in fc2 on a [2, 16] input."""

import torch
from torch import nn


class Mismatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


example_input = torch.randn(2, 8)
