"""What the graph collectors share: call records, the forward error, dtype names, fold size."""

from __future__ import annotations

import dataclasses
from typing import Any

from torchscope._util.format import format_shapes
from torchscope.errors import GraphError
from torchscope.records.graph_assembly import MIN_FOLD_COUNT
from torchscope.records.graph_assembly import dtype_name as _dtype_name

__all__ = ["MIN_FOLD_COUNT", "Node", "_dtype_name"]

Node = Any  # torch.autograd.graph.Node; its Python type differs per op


@dataclasses.dataclass
class _Call:
    """A module call on the capture's stack."""

    name: str
    type: str
    input_shapes: tuple[tuple[int, ...], ...]


def _raising() -> bool:
    """Whether an exception is propagating through the caller (an ``always_call`` hook)."""
    import sys

    return sys.exc_info()[0] is not None


def _forward_error(error: Exception, failed: _Call | None) -> GraphError:
    """The GraphError for a forward that raised ``error`` in the module call ``failed``."""
    if failed is None:
        return GraphError(f"the forward pass failed: {type(error).__name__}: {error}")
    return GraphError(
        f"the forward pass failed in {failed.name or 'the root module'} ({failed.type}) with "
        f"input shapes {format_shapes(failed.input_shapes)}: {type(error).__name__}: {error}",
        module_name=failed.name,
        module_type=failed.type,
        input_shapes=failed.input_shapes,
    )
