"""torchscope: model introspection and debugging for PyTorch.

Public names are loaded on first use, so ``import torchscope`` (and the pytest plugin that
pytest loads at start-up) does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchscope import _moved

__version__ = "0.1.0"

_moved.install()  # modules that moved into the layered tree keep their old names for a release

# The export table: module -> the public names it defines. ``__all__``, the lazy
# ``__getattr__`` and ``dir()`` are derived from it; a new public name is one entry here,
# one line in the TYPE_CHECKING block below, and a mention in README.md or docs/.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "torchscope.errors": (
        "GradientHealthError",
        "GraphError",
        "PreflightError",
        "SummaryError",
        "TorchscopeError",
        "TorchscopeWarning",
    ),
    "torchscope.collect.summary": ("summary",),
    "torchscope.collect.memory": ("estimate_memory",),
    "torchscope.collect.freezing": (
        "freeze",
        "freeze_until",
        "frozen",
        "trainable_report",
        "unfreeze",
    ),
    "torchscope.collect.gradients": ("GradientMonitor", "GradientThresholds", "check_gradients"),
    "torchscope.collect.graph": (
        "ModuleCapture",
        "autograd_graph",
        "autograd_graph_of",
        "capture",
        "graph_diff",
        "module_graph",
    ),
    "torchscope.collect.timing": ("benchmark", "time_layers"),
    "torchscope.collect.independence": ("check_batch_independence",),
    "torchscope.collect.preflight": ("preflight",),
    "torchscope.records": (
        "AutogradGraph",
        "BatchIndependenceReport",
        "Finding",
        "GradInfo",
        "GradientReport",
        "Graph",
        "GraphCluster",
        "GraphDiff",
        "GraphEdge",
        "GraphFold",
        "GraphNode",
        "LayerRecord",
        "LayerTiming",
        "Measurement",
        "MemoryEstimate",
        "ModelSummary",
        "ModuleGraph",
        "ParameterHistory",
        "PreflightCheck",
        "PreflightReport",
        "TensorRecord",
        "TimingReport",
        "TrainableReport",
    ),
}

_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_MODULE_OF, "__version__"])

if TYPE_CHECKING:
    # Static type checkers cannot run the table, so the names are written out once more, in
    # the explicit re-export form (``X as X``) that mypy --strict and pyright accept without
    # a literal ``__all__``. tests/test_package.py checks that this block, the table and
    # ``__all__`` name exactly the same things, and prints the block to paste when not.
    from torchscope.collect.freezing import freeze as freeze
    from torchscope.collect.freezing import freeze_until as freeze_until
    from torchscope.collect.freezing import frozen as frozen
    from torchscope.collect.freezing import trainable_report as trainable_report
    from torchscope.collect.freezing import unfreeze as unfreeze
    from torchscope.collect.gradients import GradientMonitor as GradientMonitor
    from torchscope.collect.gradients import GradientThresholds as GradientThresholds
    from torchscope.collect.gradients import check_gradients as check_gradients
    from torchscope.collect.graph import ModuleCapture as ModuleCapture
    from torchscope.collect.graph import autograd_graph as autograd_graph
    from torchscope.collect.graph import autograd_graph_of as autograd_graph_of
    from torchscope.collect.graph import capture as capture
    from torchscope.collect.graph import graph_diff as graph_diff
    from torchscope.collect.graph import module_graph as module_graph
    from torchscope.collect.independence import (
        check_batch_independence as check_batch_independence,
    )
    from torchscope.collect.memory import estimate_memory as estimate_memory
    from torchscope.collect.preflight import preflight as preflight
    from torchscope.collect.summary import summary as summary
    from torchscope.collect.timing import benchmark as benchmark
    from torchscope.collect.timing import time_layers as time_layers
    from torchscope.errors import GradientHealthError as GradientHealthError
    from torchscope.errors import GraphError as GraphError
    from torchscope.errors import PreflightError as PreflightError
    from torchscope.errors import SummaryError as SummaryError
    from torchscope.errors import TorchscopeError as TorchscopeError
    from torchscope.errors import TorchscopeWarning as TorchscopeWarning
    from torchscope.records import AutogradGraph as AutogradGraph
    from torchscope.records import BatchIndependenceReport as BatchIndependenceReport
    from torchscope.records import Finding as Finding
    from torchscope.records import GradientReport as GradientReport
    from torchscope.records import GradInfo as GradInfo
    from torchscope.records import Graph as Graph
    from torchscope.records import GraphCluster as GraphCluster
    from torchscope.records import GraphDiff as GraphDiff
    from torchscope.records import GraphEdge as GraphEdge
    from torchscope.records import GraphFold as GraphFold
    from torchscope.records import GraphNode as GraphNode
    from torchscope.records import LayerRecord as LayerRecord
    from torchscope.records import LayerTiming as LayerTiming
    from torchscope.records import Measurement as Measurement
    from torchscope.records import MemoryEstimate as MemoryEstimate
    from torchscope.records import ModelSummary as ModelSummary
    from torchscope.records import ModuleGraph as ModuleGraph
    from torchscope.records import ParameterHistory as ParameterHistory
    from torchscope.records import PreflightCheck as PreflightCheck
    from torchscope.records import PreflightReport as PreflightReport
    from torchscope.records import TensorRecord as TensorRecord
    from torchscope.records import TimingReport as TimingReport
    from torchscope.records import TrainableReport as TrainableReport


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'torchscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
