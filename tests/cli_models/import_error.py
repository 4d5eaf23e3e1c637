"""Imports a dependency that is not installed (line 5)."""

import torchscope_missing_dependency_xyz  # noqa: F401
from torch import nn

model = nn.Linear(2, 2)
