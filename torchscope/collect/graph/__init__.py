"""Graph collectors: the autograd graph behind tensors and the data flow between modules.

- :func:`autograd_graph` walks ``grad_fn.next_functions`` iteratively (linear time, no
  recursion limit) from any nesting of output tensors.
- :func:`capture` records, while a forward runs, which module created each autograd node
  (``torch.autograd.graph.node_creation_hook``) and, with ``grads=True``, the gradient each
  node receives in the next backward pass.
- :func:`autograd_graph_of` runs a model's forward under :func:`capture` and returns the
  autograd graph with module clusters.
- :func:`module_graph` runs a forward with module hooks and a ``TorchFunctionMode`` and links
  modules (and the functional ops between them) by tensor identity.

Node keys are stable: the same model and input give the same keys, DOT and JSON in every run
and process (they come from module names, op names and execution order, never from ``id()``).
Repeated computation is found with :func:`torchscope.records.graph_views.find_repeats` and recorded as
:class:`~torchscope.records.GraphFold`.

The package: ``capturing`` (:func:`capture`), ``walk`` and ``autograd``
(:func:`autograd_graph`, :func:`autograd_graph_of`), ``modules`` (:func:`module_graph`),
``_common`` (what they share).
"""

from __future__ import annotations

from typing import Any

from torchscope.collect.graph.autograd import autograd_graph, autograd_graph_of
from torchscope.collect.graph.capturing import ModuleCapture, capture, run_forward
from torchscope.collect.graph.modules import module_graph
from torchscope.records import GraphDiff
from torchscope.records.graph_views import diff

__all__ = [
    "ModuleCapture",
    "autograd_graph",
    "autograd_graph_of",
    "capture",
    "graph_diff",
    "module_graph",
    "run_forward",
]


def graph_diff(a: Any, b: Any) -> GraphDiff:
    """Nodes added, removed and changed from graph ``a`` to graph ``b`` (matched by key)."""
    return diff(a, b)
