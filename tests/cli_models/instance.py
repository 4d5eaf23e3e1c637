"""A module-level instance; example_input is a tensor."""

import torch
from torch import nn

model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
example_input = torch.randn(2, 8)
