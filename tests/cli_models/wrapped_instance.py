"""Two instances, one inside the other: the outer one is the model."""

import torch
from torch import nn

backbone = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
network = nn.Sequential(backbone, nn.Linear(8, 3))
example_input = torch.randn(1, 8)
