"""A binary classifier on 20 features that outputs one logit per sample.

Its ``example_target`` holds the labels as floats of shape (N, 1), which is what
``binary_cross_entropy_with_logits`` takes: ``torchscope preflight`` with
``--loss bce_logits`` checks it against that loss.
"""

import torch
from torch import nn

generator = torch.Generator().manual_seed(0)
example_input = torch.randn(128, 20, generator=generator)
example_target = (example_input[:, :2].sum(dim=1, keepdim=True) > 0).float()

model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 1))
