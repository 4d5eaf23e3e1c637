"""A regression MLP on 12 tabular features, with the batch it should learn.

``example_input`` and ``example_target`` are what ``torchscope preflight`` checks the model on
(the target is a float tensor, so the loss is mean squared error unless ``--loss`` says otherwise).
"""

import torch
from torch import nn

generator = torch.Generator().manual_seed(0)
example_input = torch.randn(64, 12, generator=generator)
example_target = example_input[:, :4].sum(dim=1, keepdim=True)

model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
