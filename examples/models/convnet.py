"""A small convnet for 32x32 colour images (CIFAR-10's shape), 10 classes.

The model file that the documentation's command lines use: torchscope takes ``model`` and
``example_input`` from it, so ``torchscope summary examples/models/convnet.py`` needs no option.
"""

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 8 * 8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


model = ConvNet()
example_input = torch.randn(8, 3, 32, 32)
