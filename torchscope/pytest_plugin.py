"""torchscope's pytest plugin (registered under ``pytest11``).

Reserved: the gradient-health fixtures and options arrive with the gradient monitor. Like
Hypothesis's plugin, it must not import torch at pytest start-up, so it imports nothing
from torchscope at module level.
"""
