"""Several modules in one file, and a model of two inputs: an image and a vector of 10 features.

``--model Fusion`` picks the model; the file has no ``example_input``, so the command line
gives one shape per input: ``--input-size '1,3,64,64;1,10'``.
"""

import torch
from torch import nn


class ImageEncoder(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 7, stride=4, padding=3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(image))).flatten(1)


class Fusion(nn.Module):
    def __init__(self, dim: int = 32, features: int = 10, classes: int = 5) -> None:
        super().__init__()
        self.image = ImageEncoder(dim)
        self.tabular = nn.Linear(features, dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.image(image), self.tabular(features)], dim=1))
