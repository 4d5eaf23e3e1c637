"""diff_b.py is this model with one layer changed (the activation)."""

from collections import OrderedDict

import torch
from torch import nn

model = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), act=nn.ReLU(), fc2=nn.Linear(16, 4)))
example_input = torch.randn(2, 8)
