"""Where a record's convenience methods find their exporter: by name, at call time.

Records sit below the render layer and never import it: ``Graph.render(path)``,
``Graph.to_dot()``, ``GradientReport.plot(path)`` and the other drawing methods look their
exporter up here, and only then is its module loaded (as pandas finds its plotting backend).
So ``import torchscope.records`` loads no renderer, no import circle can form through a
record, and an exporter stays a plain function that takes records. A new exporter reachable
from a record is one row in :data:`EXPORTERS` and a method that calls :func:`exporter`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["EXPORTERS", "exporter"]

#: Exporter name -> ``"module:function"`` that implements it (a function taking the record first).
EXPORTERS: dict[str, str] = {
    "graph.dot": "torchscope.render.dot:graph_to_dot",
    "graph.html": "torchscope.render.graph_html:graph_to_html",
    "graph.file": "torchscope.render.dot:render_graph",
    "graph.display": "torchscope.render.dot:mimebundle",
    "graph.tensorboard": "torchscope.render.tensorboard:log_graph",
    "gradients.plot": "torchscope.render.plots:plot_gradient_flow",
    "gradients.tensorboard": "torchscope.render.tensorboard:log_gradient_report",
    "timing.tensorboard": "torchscope.render.tensorboard:log_timing",
}


def exporter(name: str) -> Callable[..., Any]:
    """The exporter function registered as ``name``, its module imported on first use."""
    try:
        target = EXPORTERS[name]
    except KeyError:
        raise KeyError(
            f"no exporter named {name!r}; the known ones are {', '.join(sorted(EXPORTERS))}"
        ) from None
    module, function = target.split(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found
