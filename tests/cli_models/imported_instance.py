"""An instance imported from a neighbour file does not count; the file's own one does."""

import torch
from torch import nn

from instance import model as reference

model = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
example_input = torch.randn(1, 4)
assert reference is not model
