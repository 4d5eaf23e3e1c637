"""``torchscope demo``: the main job, run on an embedded default (no files, no downloads)."""

from __future__ import annotations

import importlib.util
from typing import TextIO

from torchscope.models import LeNet
from torchscope.summarize import summary

__all__ = ["run_demo"]


def run_demo(out: TextIO) -> None:
    """Write the summaries of the bundled LeNet and of torchvision's resnet18 to ``out``."""
    lenet = LeNet()
    print(summary(lenet, input_size=(1, 1, 28, 28)), file=out)
    print(file=out)
    if importlib.util.find_spec("torchvision") is None:
        print(
            "torchvision is not installed; `pip install 'torchscope[vision]'` adds resnet18 to this demo.",
            file=out,
        )
        return
    from torchvision.models import resnet18  # optional extra: imported only when present

    print(summary(resnet18(), input_size=(1, 3, 224, 224), depth=2), file=out)
