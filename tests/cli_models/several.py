"""Two unrelated module-level instances: the user must pick one."""

import torch
from torch import nn

encoder = nn.Linear(8, 4)
decoder = nn.Linear(4, 8)
example_input = torch.randn(1, 8)
