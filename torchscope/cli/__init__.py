"""The ``torchscope`` command line: ``graph``, ``summary``, ``time``, ``demo`` (see :mod:`.main`)."""

from torchscope.cli.main import main

__all__ = ["main"]
