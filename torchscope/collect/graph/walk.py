"""The autograd walk: every node behind the outputs, and the facts read off each node.

The walk follows ``next_functions`` iteratively and in linear time (no recursion limit). It
keeps what it reads in flat lists, one entry per node (a graph of 400k nodes makes no
object per node beyond torch's own), and reads only what every graph needs: the node's
name, its sequence number and its inputs. Shapes are read in bulk by :meth:`Walk.metadata`.
"""

from __future__ import annotations

import dataclasses

import torch

from torchscope.collect.graph._common import Node, _dtype_name

#: autograd's sequence number of nodes that are not ops (AccumulateGrad: UINT64_MAX)
UNSEQUENCED = 2**63

Meta = tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]


def _node_meta(node: Node) -> Meta:
    """Shapes and dtypes of what the forward op produced (the gradients the node receives);
    an unreadable one (nested, symbolic) gives ``()`` and ``""``."""
    try:
        metadata = node._input_metadata
    except (AttributeError, RuntimeError):
        return (), ()
    if len(metadata) == 1:  # most ops: one output, without the lists
        only = metadata[0]
        try:
            return (tuple(only.shape),), (_dtype_name(only.dtype),)
        except (RuntimeError, TypeError, ValueError):
            return ((),), ("",)
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
class Walk:
    """Every node found by the walk, by index (the order in which the walk found them).

    Attributes:
        nodes: the autograd nodes.
        names: their class names (``MulBackward0``, ``AccumulateGrad``).
        seqs: their sequence numbers (forward order of ops; ``UNSEQUENCED`` or more for a
            node that is not an op, -1 where torch gives none).
        children: the indices of each node's ``next_functions`` (the inputs of its forward
            op), in order, repeats kept.
        leaves: index -> tensor of each AccumulateGrad node (a leaf that requires grad).
    """

    nodes: list[Node]
    names: list[str]
    seqs: list[int]
    children: list[list[int]]
    leaves: dict[int, torch.Tensor]

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

    def metadata(self, indices: list[int]) -> list[Meta]:
        """Shapes and dtypes of each node in ``indices``: a leaf's tensor's, an op's outputs'.

        Equal answers are one shared tuple (most nodes of a deep graph repeat a few shapes).
        """
        leaves = self.leaves
        nodes = self.nodes
        shared: dict[Meta, Meta] = {}
        result: list[Meta] = []
        for i in indices:
            leaf = leaves.get(i)
            if leaf is not None:
                meta: Meta = ((tuple(leaf.shape),), (_dtype_name(leaf.dtype),))
            else:
                meta = _node_meta(nodes[i])
            result.append(shared.setdefault(meta, meta))
        return result


def _walk(roots: list[Node]) -> Walk:
    """Every node reachable from ``roots`` through ``next_functions``, iteratively."""
    index: dict[Node, int] = {}
    nodes: list[Node] = []
    for root in roots:
        if root not in index:
            index[root] = len(nodes)
            nodes.append(root)
    children: list[list[int]] = [[] for _ in nodes]
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
                    pending.append(found)
                kids.append(found)
    names = [node.name() for node in nodes]
    leaves: dict[int, torch.Tensor] = {}
    for i, name in enumerate(names):
        if "::" in name:  # torch::autograd::AccumulateGrad and other C++ nodes
            name = names[i] = name.rpartition("::")[2]
            if name == "AccumulateGrad":  # only these hold a tensor
                leaf = getattr(nodes[i], "variable", None)
                if isinstance(leaf, torch.Tensor):
                    leaves[i] = leaf
    try:
        seqs = [int(node._sequence_nr()) for node in nodes]
    except (AttributeError, RuntimeError):
        seqs = [_sequence_nr(node) for node in nodes]
    return Walk(nodes, names, seqs, children, leaves)


def _sequence_nr(node: Node) -> int:
    try:
        return int(node._sequence_nr())
    except (AttributeError, RuntimeError):
        return -1
