"""torchscope: model introspection and debugging for PyTorch.

Public names are loaded on first use, so ``import torchscope`` (and the pytest plugin that
pytest loads at start-up) does not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "summary": "torchscope.summarize",
    "ModelSummary": "torchscope.records",
    "LayerRecord": "torchscope.records",
    "TensorRecord": "torchscope.records",
    "TorchscopeError": "torchscope.errors",
    "SummaryError": "torchscope.errors",
    "TorchscopeWarning": "torchscope.errors",
    "TrainableReport": "torchscope.records",
    "MemoryEstimate": "torchscope.records",
    "estimate_memory": "torchscope.memory",
    "freeze": "torchscope.freezing",
    "unfreeze": "torchscope.freezing",
    "frozen": "torchscope.freezing",
    "freeze_until": "torchscope.freezing",
    "trainable_report": "torchscope.freezing",
    "GradientMonitor": "torchscope.gradients",
    "GradientThresholds": "torchscope.gradients",
    "check_gradients": "torchscope.gradients",
    "GradientReport": "torchscope.records",
    "Finding": "torchscope.records",
    "ParameterHistory": "torchscope.records",
    "GradientHealthError": "torchscope.errors",
    "GraphError": "torchscope.errors",
    "autograd_graph": "torchscope.graph",
    "autograd_graph_of": "torchscope.graph",
    "capture": "torchscope.graph",
    "module_graph": "torchscope.graph",
    "graph_diff": "torchscope.graph",
    "ModuleCapture": "torchscope.graph",
    "Graph": "torchscope.records",
    "AutogradGraph": "torchscope.records",
    "ModuleGraph": "torchscope.records",
    "GraphNode": "torchscope.records",
    "GraphEdge": "torchscope.records",
    "GraphCluster": "torchscope.records",
    "GraphFold": "torchscope.records",
    "GraphDiff": "torchscope.records",
    "GradInfo": "torchscope.records",
    "benchmark": "torchscope.timing",
    "time_layers": "torchscope.timing",
    "Measurement": "torchscope.records",
    "TimingReport": "torchscope.records",
    "LayerTiming": "torchscope.records",
}

__all__ = [
    "AutogradGraph",
    "Finding",
    "GradInfo",
    "GradientHealthError",
    "GradientMonitor",
    "GradientReport",
    "GradientThresholds",
    "Graph",
    "GraphCluster",
    "GraphDiff",
    "GraphEdge",
    "GraphError",
    "GraphFold",
    "GraphNode",
    "LayerRecord",
    "LayerTiming",
    "Measurement",
    "MemoryEstimate",
    "ModelSummary",
    "ModuleCapture",
    "ModuleGraph",
    "ParameterHistory",
    "SummaryError",
    "TensorRecord",
    "TimingReport",
    "TorchscopeError",
    "TorchscopeWarning",
    "TrainableReport",
    "__version__",
    "autograd_graph",
    "autograd_graph_of",
    "benchmark",
    "capture",
    "check_gradients",
    "estimate_memory",
    "freeze",
    "freeze_until",
    "frozen",
    "graph_diff",
    "module_graph",
    "summary",
    "time_layers",
    "trainable_report",
    "unfreeze",
]

if TYPE_CHECKING:
    from torchscope.errors import (
        GradientHealthError,
        GraphError,
        SummaryError,
        TorchscopeError,
        TorchscopeWarning,
    )
    from torchscope.freezing import freeze, freeze_until, frozen, trainable_report, unfreeze
    from torchscope.gradients import GradientMonitor, GradientThresholds, check_gradients
    from torchscope.graph import (
        ModuleCapture,
        autograd_graph,
        autograd_graph_of,
        capture,
        graph_diff,
        module_graph,
    )
    from torchscope.memory import estimate_memory
    from torchscope.records import (
        AutogradGraph,
        Finding,
        GradientReport,
        GradInfo,
        Graph,
        GraphCluster,
        GraphDiff,
        GraphEdge,
        GraphFold,
        GraphNode,
        LayerRecord,
        LayerTiming,
        Measurement,
        MemoryEstimate,
        ModelSummary,
        ModuleGraph,
        ParameterHistory,
        TensorRecord,
        TimingReport,
        TrainableReport,
    )
    from torchscope.summarize import summary
    from torchscope.timing import benchmark, time_layers


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'torchscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
