"""A model but no example_input."""

from torch import nn

model = nn.Sequential(nn.Linear(12, 4), nn.ReLU())
