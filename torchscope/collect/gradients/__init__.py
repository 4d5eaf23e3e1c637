"""Gradient health: watch the user's own training loop and name what goes wrong in it.

- :mod:`.monitor`: :class:`GradientMonitor`, the hooks that observe the loop;
- :mod:`.observations`: what it observed, read back to the host once (the rules' input);
- :mod:`.evidence`: facts several rules share; :mod:`.registry` and :mod:`.rules`: one
  function per finding kind;
- :mod:`.ranks`: one report for every rank of a distributed run;
- :mod:`.check`: :func:`check_gradients`, a few steps of a standard loop on copies.
"""

from torchscope.collect.gradients.check import check_gradients
from torchscope.collect.gradients.monitor import GradientMonitor
from torchscope.collect.gradients.thresholds import GradientThresholds

__all__ = ["GradientMonitor", "GradientThresholds", "check_gradients"]
