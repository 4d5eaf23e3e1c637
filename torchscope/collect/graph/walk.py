"""The autograd walk: every node behind the outputs, and the facts read off each node.

The walk follows ``next_functions`` iteratively and in linear time (no recursion limit). It
keeps what it reads in flat lists, one entry per node (a graph of 400k nodes makes no
object per node beyond torch's own), and reads only what no one can read once the graph is
gone: each node's name, sequence number, inputs and output shapes. The records are built
from those columns by :mod:`torchscope.records.graph_assembly`, on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from torchscope.collect.graph._common import Node, _dtype_name
from torchscope.records.graph_assembly import UNSEQUENCED

__all__ = ["UNSEQUENCED", "Walk", "sequence_nr"]


def _read_metadata(nodes: list[Node]) -> tuple[list[Any], list[Any]]:
    """Each node's output shapes and dtypes as :class:`AutogradColumns` keeps them: a list
    of ints and a ``torch.dtype`` for an op of one output (most), tuples of them for others."""
    sizes: list[Any] = []
    dtypes: list[Any] = []
    add_size = sizes.append
    add_dtype = dtypes.append
    try:
        for node in nodes:
            metadata = node._input_metadata
            if len(metadata) == 1:
                only = metadata[0]
                add_size(only.shape)
                add_dtype(only.dtype)
            else:
                add_size(tuple([meta.shape for meta in metadata]))
                add_dtype(tuple([meta.dtype for meta in metadata]))
    except (AttributeError, RuntimeError, TypeError, ValueError):
        # a node without metadata, or a nested / symbolic shape: read each node with care
        sizes.clear()
        dtypes.clear()
        for node in nodes:
            size, dtype = _careful_metadata(node)
            add_size(size)
            add_dtype(dtype)
    return sizes, dtypes


def _careful_metadata(node: Node) -> tuple[Any, Any]:
    """One node's metadata, where reading some of it raises: None for what cannot be read."""
    try:
        metadata = node._input_metadata
    except (AttributeError, RuntimeError):
        return None, None
    if len(metadata) == 1:
        only = metadata[0]
        try:
            return only.shape, only.dtype
        except (RuntimeError, TypeError, ValueError):  # a nested tensor's: it has a dtype
            try:
                return [], only.dtype
            except (RuntimeError, TypeError, ValueError):
                return [], None
    sizes: list[Any] = []
    dtypes: list[Any] = []
    for meta in metadata:
        try:
            size, dtype = meta.shape, meta.dtype
        except (RuntimeError, TypeError, ValueError):  # nested / symbolic shapes
            size = dtype = None
        sizes.append(size)
        dtypes.append(dtype)
    return tuple(sizes), tuple(dtypes)


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
class Walk:
    """Every node found by the walk, by index (the order in which the walk found them).

    Attributes:
        nodes: the autograd nodes.
        index: node -> its index.
        names: their class names (``MulBackward0``, ``AccumulateGrad``).
        seqs: their sequence numbers (forward order of ops; ``UNSEQUENCED`` or more for a
            node that is not an op, -1 where torch gives none).
        children: the indices of each node's ``next_functions`` (the inputs of its forward
            op), in order, repeats kept.
        leaves: index -> tensor of each AccumulateGrad node (a leaf that requires grad).
        sizes, dtypes: each node's output shapes and dtypes (see ``AutogradColumns``); a
            leaf's are its tensor's.
        reached: the length of the longest path the walk took from an output (a lower bound
            of :meth:`depth`, at no cost).
    """

    nodes: list[Node]
    index: dict[Node, int]
    names: list[str]
    seqs: list[int]
    children: list[list[int]]
    leaves: dict[int, torch.Tensor]
    sizes: list[Any]
    dtypes: list[Any]
    reached: int

    def __len__(self) -> int:
        return len(self.nodes)

    def depth(self) -> int:
        """The number of nodes on the longest path from an output to a leaf (Kahn's order:
        a node is settled once all the nodes that use it are)."""
        children = self.children
        users = [0] * len(children)
        for kids in children:
            for child in kids:
                users[child] += 1
        depth = [1] * len(children)
        ready = [i for i, count in enumerate(users) if not count]
        for at in ready:  # grows while it is read
            below = depth[at] + 1
            for child in children[at]:
                if depth[child] < below:
                    depth[child] = below
                users[child] -= 1
                if not users[child]:
                    ready.append(child)
        return max(depth, default=0)


def _walk(roots: list[Node]) -> Walk:
    """Every node reachable from ``roots`` through ``next_functions``, iteratively."""
    index: dict[Node, int] = {}
    nodes: list[Node] = []
    for root in roots:
        if root not in index:
            index[root] = len(nodes)
            nodes.append(root)
    children: list[list[int]] = [[] for _ in nodes]
    reach = [1] * len(nodes)  # nodes on the path the walk found each one by
    pending = list(range(len(nodes)))  # expanded last first, as a stack
    while pending:
        at = pending.pop()
        kids = children[at]
        for child, _ in nodes[at].next_functions:
            if child is not None:
                found = index.get(child)
                if found is None:
                    found = index[child] = len(nodes)
                    nodes.append(child)
                    children.append([])
                    reach.append(reach[at] + 1)
                    pending.append(found)
                kids.append(found)
    names = [node.name() for node in nodes]
    sizes, dtypes = _read_metadata(nodes)
    leaves: dict[int, torch.Tensor] = {}
    for i, name in enumerate(names):
        if "::" in name:  # torch::autograd::AccumulateGrad and other C++ nodes
            name = names[i] = name.rpartition("::")[2]
            if name == "AccumulateGrad":  # only these hold a tensor
                leaf = getattr(nodes[i], "variable", None)
                if isinstance(leaf, torch.Tensor):
                    leaves[i] = leaf
                    sizes[i], dtypes[i] = _shape(leaf), leaf.dtype
    try:
        seqs = [int(node._sequence_nr()) for node in nodes]
    except (AttributeError, RuntimeError):
        seqs = [sequence_nr(node) for node in nodes]
    return Walk(nodes, index, names, seqs, children, leaves, sizes, dtypes, max(reach, default=0))


def _shape(tensor: torch.Tensor) -> Any:
    """A tensor's shape; empty for a nested tensor, which has none."""
    try:
        return tensor.shape
    except RuntimeError:  # "NestedTensorImpl doesn't support sizes"
        return []


def sequence_nr(node: Node) -> int:
    """The node's sequence number (autograd's forward order of ops), -1 where it has none."""
    try:
        return int(node._sequence_nr())
    except (AttributeError, RuntimeError):
        return -1
