"""The autograd walk: every node behind the outputs, and the facts read off each node.

The walk follows ``next_functions`` iteratively and in linear time (no recursion limit).
"""

from __future__ import annotations

import dataclasses

import torch

from torchscope.collect.graph._common import Node, _dtype_name


def _node_meta(node: Node) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
    """Shapes and dtypes of what the forward op produced (the gradients the node receives)."""
    try:
        metadata = node._input_metadata
    except (AttributeError, RuntimeError):
        return (), ()
    shapes = []
    dtypes = []
    for meta in metadata:
        try:
            shapes.append(tuple(meta.shape))  # a torch.Size: already ints
            dtypes.append(_dtype_name(meta.dtype))
        except (RuntimeError, TypeError, ValueError):  # nested / symbolic shapes
            shapes.append(())
            dtypes.append("")
    return tuple(shapes), tuple(dtypes)


def _saved(node: Node) -> tuple[tuple[str, str], ...]:
    facts = []
    for attr in sorted(a for a in dir(node) if a.startswith("_saved_")):
        try:
            value = getattr(node, attr)
        except RuntimeError:  # freed by backward
            facts.append((attr.removeprefix("_saved_"), "freed by backward"))
            continue
        if isinstance(value, torch.Tensor):
            text = f"{list(value.shape)} {_dtype_name(value.dtype)}"
        elif isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
            text = ", ".join(f"{list(t.shape)}" for t in value)
        else:
            text = repr(value)
            text = text if len(text) <= 60 else text[:57] + "..."
        facts.append((attr.removeprefix("_saved_"), text))
    return tuple(facts)


@dataclasses.dataclass
class _Walked:
    """One autograd node found by the walk, before keys are assigned."""

    node: Node
    name: str
    leaf: torch.Tensor | None  # the tensor of an AccumulateGrad node
    children: list[int]  # indices of next_functions' nodes (inputs of the forward op)
    seq: int
    discovered: int
    meta: tuple[tuple[tuple[int, ...], ...], tuple[str, ...]] | None = None

    def shapes_and_dtypes(self) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
        if self.meta is None:
            self.meta = _node_meta(self.node)
        return self.meta


def _walk(roots: list[Node]) -> list[_Walked]:
    """Every node reachable from ``roots`` through ``next_functions``, iteratively."""
    index: dict[Node, int] = {}
    walked: list[_Walked] = []
    pending: list[Node] = []

    def visit(node: Node) -> int:
        found = index.get(node)
        if found is None:
            found = index[node] = len(walked)
            name = node.name().rpartition("::")[2]
            # only AccumulateGrad nodes hold a tensor; asking the others costs a lookup each
            leaf = getattr(node, "variable", None) if name == "AccumulateGrad" else None
            try:
                seq = int(node._sequence_nr())
            except (AttributeError, RuntimeError):
                seq = -1
            walked.append(
                _Walked(
                    node=node,
                    name=name,
                    leaf=leaf if isinstance(leaf, torch.Tensor) else None,
                    children=[],
                    seq=seq,
                    discovered=found,
                )
            )
            pending.append(node)
        return found

    for root in roots:
        visit(root)
    while pending:
        node = pending.pop()
        entry = walked[index[node]]
        for child, _ in node.next_functions:
            if child is not None:
                entry.children.append(visit(child))
    return walked
