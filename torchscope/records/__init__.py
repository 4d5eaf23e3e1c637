"""Plain-data records produced by torchscope's collectors, one file per capability.

Frozen dataclasses that know nothing about terminals or Jupyter: they compare in tests,
round-trip through JSON, and show themselves as text, Markdown and HTML tables through the
record layer's own :mod:`torchscope.records._text` and :mod:`torchscope.records._html`. They
import no exporter: the drawing methods (``Graph.render``, ``GradientReport.plot``, ...) find
theirs by name at call time in :mod:`torchscope.records._exporters`.

This module re-exports every record from where it lives:

- :mod:`~torchscope.records.summary`: ``ModelSummary`` and its tensors, layers and memory;
- :mod:`~torchscope.records.freezing`: ``TrainableReport``;
- :mod:`~torchscope.records.gradients`: ``Finding``, ``GradientReport`` and the finding kinds;
- :mod:`~torchscope.records.graph`: ``Graph`` and its nodes, edges, clusters, folds, diff;
- :mod:`~torchscope.records.timing`: ``Measurement``, ``TimingReport``;
- :mod:`~torchscope.records.training`: ``EpochRecord``, ``History``;
- :mod:`~torchscope.records.preflight`: ``PreflightCheck``, ``PreflightReport``.
"""

from __future__ import annotations

from torchscope.records._common import SCHEMA_VERSION
from torchscope.records.freezing import TrainableReport, TrainableRow
from torchscope.records.gradients import (
    FINDING_KINDS,
    SEVERITIES,
    Finding,
    GradientReport,
    ParameterHistory,
    finding_kinds,
)
from torchscope.records.graph import (
    GRAD_STATUSES,
    NODE_KINDS,
    AutogradGraph,
    GradInfo,
    Graph,
    GraphCluster,
    GraphDiff,
    GraphEdge,
    GraphFold,
    GraphNode,
    ModuleGraph,
    graph_json,
)
from torchscope.records.independence import BatchIndependenceReport, Leak
from torchscope.records.preflight import PreflightCheck, PreflightReport
from torchscope.records.summary import (
    SUMMARY_COLUMNS,
    LayerRecord,
    MemoryEstimate,
    ModelSummary,
    TensorRecord,
)
from torchscope.records.timing import LayerTiming, Measurement, TimingReport
from torchscope.records.training import EpochRecord, History

__all__ = [
    "FINDING_KINDS",
    "GRAD_STATUSES",
    "NODE_KINDS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "SUMMARY_COLUMNS",
    "AutogradGraph",
    "BatchIndependenceReport",
    "EpochRecord",
    "Finding",
    "GradInfo",
    "GradientReport",
    "Graph",
    "GraphCluster",
    "GraphDiff",
    "GraphEdge",
    "GraphFold",
    "GraphNode",
    "History",
    "LayerRecord",
    "LayerTiming",
    "Leak",
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
    "TrainableRow",
    "finding_kinds",
    "graph_json",
]
