"""An autograd graph's records, assembled from the columns its capture read off the nodes.

A capture (:func:`torchscope.collect.graph.autograd_graph`) reads only what the live autograd
nodes alone can tell: each node's class name, sequence number, inputs and output shapes,
into flat columns, one entry per node (:class:`AutogradColumns`). Everything else is a pure
function of those columns, built here: forward order, stable keys, :class:`GraphNode` and
:class:`GraphEdge` records, module clusters, folds of repeated steps and the gradient's
origin. :class:`~torchscope.records.AutogradGraph` builds them on first use, so a capture
costs about what its walk does (see docs/benchmarks.md) and what it costs to draw a graph is
paid by drawing it.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from torchscope._util.collector import collector_paused
from torchscope.records.graph import (
    GradInfo,
    GraphCluster,
    GraphEdge,
    GraphFold,
    GraphNode,
    make_edge,
    make_node,
)
from torchscope.records.graph_views import common_module, find_repeats

__all__ = [
    "MIN_FOLD_COUNT",
    "UNSEQUENCED",
    "Assembled",
    "AutogradColumns",
    "bad_below",
    "dtype_name",
    "forward_order",
    "module_clusters",
]

#: autograd's sequence number of nodes that are not ops (AccumulateGrad: UINT64_MAX)
UNSEQUENCED = 2**63

#: Fewest back-to-back repetitions that are folded.
MIN_FOLD_COUNT = 3

Meta = tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]

#: a graph's nodes, edges, clusters, folds and the gradient's origin
Assembled = tuple[
    tuple[GraphNode, ...],
    tuple[GraphEdge, ...],
    tuple[GraphCluster, ...],
    tuple[GraphFold, ...],
    str | None,
]


@dataclasses.dataclass(frozen=True, eq=False)
class AutogradColumns:
    """What a capture read off an autograd graph's nodes, one entry per node, by the order the
    walk found them. Plain values only (strings, ints, ``torch.Size``, ``torch.dtype``): it
    holds no node and no tensor, so it keeps no graph alive. Its lists are never changed.

    Attributes:
        names: class names (``MulBackward0``, ``AccumulateGrad``).
        seqs: sequence numbers (``UNSEQUENCED`` or more for a node that is not an op, -1
            where torch gives none).
        children: the indices of each node's ``next_functions``, in order, repeats kept.
        sizes: the shape of what the forward op produced, a list of ints (a leaf's: a
            ``torch.Size``), empty where it could not be read (a nested tensor's: its dtype
            is still read); a tuple of them (None for an unreadable one) for an op of
            several outputs or none; None when the node has no metadata at all.
        dtypes: their dtypes, the same way (``torch.dtype``, None when unreadable).
        leaves: index of each AccumulateGrad node -> the qualified name of its parameter
            (None for an input that requires grad).
        modules: with a module capture, the module that created each op (None elsewhere);
            None without a capture.
        types: with a module capture, module path -> class name; None without.
        outputs: each output tensor: its path (``output``, ``output[0]``), shape, dtype name
            and the index of its node.
        grads: with ``grads=True``, index -> the gradient the node received.
        saved: with ``show_saved``, index -> the tensors the op saved for backward.
    """

    names: list[str]
    seqs: list[int]
    children: list[list[int]]
    sizes: list[Any]
    dtypes: list[Any]
    leaves: Mapping[int, str | None]
    modules: list[str | None] | None = None
    types: Mapping[str, str] | None = None
    outputs: Sequence[tuple[str, tuple[int, ...], str, int]] = ()
    grads: Mapping[int, GradInfo] | None = None
    saved: Mapping[int, tuple[tuple[str, str], ...]] = dataclasses.field(default_factory=dict)

    def assemble(self) -> Assembled:
        """The graph's nodes, edges, clusters, folds and the gradient's origin."""
        # a few objects per node and none freed: the cyclic collector would run over and
        # over on a heap that only grows (a third of the time of a 40k-node graph), and the
        # records hold no reference cycles for it to find
        with collector_paused():
            return _assemble(self)


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """``float32`` for ``torch.float32`` (cached: it runs once per node of graphs of 400k)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _metadata(columns: AutogradColumns, indices: list[int]) -> list[Meta]:
    """Shapes and dtypes of each node in ``indices``; equal answers are one shared tuple (most
    nodes of a deep graph repeat a few shapes)."""
    sizes = columns.sizes
    dtypes = columns.dtypes
    shared: dict[Meta, Meta] = {}
    result: list[Meta] = []
    for i in indices:
        size = sizes[i]
        if type(size) is tuple:  # several outputs, or none (a torch.Size is one shape)
            dtype = dtypes[i]
            meta: Meta = (
                tuple(() if s is None else tuple(s) for s in size),
                tuple("" if d is None else dtype_name(d) for d in dtype),
            )
        elif size is None:
            meta = ((), ())
        else:
            dtype = dtypes[i]
            meta = ((tuple(size),), ("" if dtype is None else dtype_name(dtype),))
        result.append(shared.setdefault(meta, meta))
    return result


def forward_order(seqs: Sequence[int], children: Sequence[Sequence[int]]) -> list[int]:
    """Node indices in forward (execution) order: ops by sequence number; a leaf (or any node
    without one) just before its first user; ties by the order the walk found them."""
    first_user = [-1] * len(seqs)
    for user, kids in enumerate(children):
        seq = seqs[user]
        if 0 <= seq < UNSEQUENCED:
            for child in kids:
                if first_user[child] < 0 or seq < first_user[child]:
                    first_user[child] = seq
    n = len(seqs)
    # one integer per node, (position, 1 for an op) then the walk's index: one sort of ints
    keys = [
        ((2 * seq + 1) if 0 <= seq < UNSEQUENCED else 2 * first_user[i]) * n + i
        for i, seq in enumerate(seqs)
    ]
    return sorted(range(n), key=keys.__getitem__)


def _assemble(columns: AutogradColumns) -> Assembled:
    names = columns.names
    children = columns.children
    leaves = columns.leaves
    size = len(names)
    order = forward_order(columns.seqs, children)
    op_modules = columns.modules
    captured = op_modules is not None
    # parameter leaves go in the cluster of the module owning them
    keys: list[str] = [""] * size
    modules: list[str | None] = [None] * size
    kinds: list[str] = ["op"] * size
    labels: list[str] = names.copy()
    counters: dict[tuple[str | None, str], int] = {}
    input_count = 0
    for i in order:
        if i in leaves:
            name = leaves[i]
            if name is not None:
                keys[i], kinds[i], labels[i] = f"param:{name}", "parameter", name
                modules[i] = name.rpartition(".")[0] if captured else None
            else:
                keys[i], kinds[i] = f"input:{input_count}", "input"
                labels[i] = f"input {input_count}"
                input_count += 1
            continue
        op = names[i]
        module = op_modules[i] if op_modules is not None else None
        count = counters.get((module, op), 0)
        counters[(module, op)] = count + 1
        keys[i] = f"{module}/{op}#{count}" if module else f"{op}#{count}"
        modules[i] = module
    metadata = _metadata(columns, order)
    grad_of = columns.grads or {}
    saved = columns.saved
    nodes = [
        make_node(
            keys[i],
            labels[i],
            kinds[i],
            names[i],
            shapes,
            dtypes,
            modules[i],
            r,
            grad_of.get(i),
            saved.get(i, ()),
        )
        for r, (i, (shapes, dtypes)) in enumerate(zip(order, metadata, strict=True))
    ]
    edges = [
        make_edge(keys[child], keys[i], "")
        for i in order
        for child in (children[i] if len(children[i]) < 2 else dict.fromkeys(children[i]))
    ]
    next_order = len(nodes)
    for path, shape, dtype, at in columns.outputs:
        key = path if path == "output" else f"output:{path.removeprefix('output')}"
        nodes.append(
            make_node(key, path, "output", "output", (shape,), (dtype,), None, next_order,
                      None, ())
        )  # fmt: skip
        next_order += 1
        edges.append(make_edge(keys[at], key, ""))
    clusters = module_clusters({m for m in modules if m}, columns.types or {})
    folds = _folds(columns, order, keys, kinds, metadata, modules)
    origin = _grad_origin(columns, order, grad_of, keys) if columns.grads is not None else None
    return tuple(nodes), tuple(edges), clusters, folds, origin


def module_clusters(modules: set[str], types: Mapping[str, str]) -> tuple[GraphCluster, ...]:
    """Clusters for every module path that holds nodes, with all their ancestors."""
    paths: set[str] = set()
    for module in modules:
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            paths.add(".".join(parts[:n]))
    clusters = []
    for path in sorted(paths, key=lambda p: (p.count("."), p)):
        base = path.split("#")[0]
        parent = path.rpartition(".")[0] or None
        if parent is not None and parent not in paths:
            parent = None
        type_name = types.get(path) or types.get(base, "")
        clusters.append(GraphCluster(path, f"{path} ({type_name})" if type_name else path, parent))
    return tuple(clusters)


def _folds(
    columns: AutogradColumns,
    order: list[int],
    keys: list[str],
    kinds: list[str],
    metadata: list[Meta],
    modules: list[str | None],
) -> tuple[GraphFold, ...]:
    """Repeated steps: runs of ops whose names, output shapes and inputs (as offsets back to
    earlier ops, or the shapes of leaves) repeat back to back."""
    names = columns.names
    children = columns.children
    sizes = columns.sizes
    ops: list[int] = []
    op_meta: list[Meta] = []
    for i, meta in zip(order, metadata, strict=True):
        if kinds[i] == "op":
            ops.append(i)
            op_meta.append(meta)
    position = [-1] * len(names)
    for p, i in enumerate(ops):
        position[i] = p
    # a signature is a flat tuple of ints, cheap to hash: a code for the op's name and
    # metadata (equal metadata are one shared tuple, so its id stands for its value), then
    # per input its offset back, or a code for the leaf's kind and shape below any offset (an
    # offset is negative where an input comes later in forward order: autograd numbers the
    # ops of each thread apart)
    below_offsets = -len(ops) - 1
    heads: dict[tuple[str, int], int] = {}
    leaf_codes: dict[tuple[str, tuple[int, ...]], int] = {}
    code_of_leaf: dict[int, int] = {}
    leaves = columns.leaves
    signatures = []
    for p, i in enumerate(ops):
        head = (names[i], id(op_meta[p]))
        code = heads.get(head)
        if code is None:
            code = heads[head] = len(heads)
        parts = [code]
        for child in children[i]:
            at = position[child]
            if at >= 0:
                parts.append(p - at)
            else:
                part = code_of_leaf.get(child)
                if part is None:
                    shape = sizes[child] if child in leaves else ()
                    value = (kinds[child], tuple(shape or ()))
                    part = leaf_codes.get(value)
                    if part is None:
                        part = leaf_codes[value] = below_offsets - len(leaf_codes)
                    code_of_leaf[child] = part
                parts.append(part)
        signatures.append(tuple(parts))
    runs = find_repeats(signatures, min_count=MIN_FOLD_COUNT)
    if not runs:
        return ()
    # the span of positions of each leaf's users: a leaf whose users all lie in one
    # repetition (its own weights) folds with it
    first_use: dict[int, int] = {}
    last_use: dict[int, int] = {}
    for p, i in enumerate(ops):
        for child in children[i]:
            if position[child] < 0:
                if child not in first_use:
                    first_use[child] = p
                last_use[child] = p
    op_keys = [keys[i] for i in ops]
    # leaves in the order they are first used (that of their first appearance in any block)
    by_first_use = list(first_use)
    first_uses = list(first_use.values())  # never decreasing
    folds = []
    for start, period, count in runs:
        end = start + period * count
        blocks = [tuple(op_keys[first : first + period]) for first in range(start, end, period)]
        owned: list[list[str]] = [[] for _ in range(count)]
        for leaf in by_first_use[bisect_left(first_uses, start) : bisect_left(first_uses, end)]:
            block = (first_use[leaf] - start) // period
            if last_use[leaf] < start + (block + 1) * period:  # used in that block only
                owned[block].append(keys[leaf])
        own_leaves = [tuple(leaves) for leaves in owned]
        same = len({len(leaves) for leaves in own_leaves}) == 1
        instances = (
            tuple(block + leaves for block, leaves in zip(blocks, own_leaves, strict=True))
            if same
            else tuple(blocks)
        )
        label = _fold_label(columns, ops[start : start + period], modules)
        folds.append(GraphFold(label, count, instances))
    folds.sort(key=lambda f: -f.count * len(f.instances[0]))
    return tuple(folds)


def _fold_label(columns: AutogradColumns, block: list[int], modules: list[str | None]) -> str:
    """The type of the module one repetition ran in (``Bottleneck``), else its ops."""
    types = columns.types
    if types is not None:
        common = common_module(modules[i] or "" for i in block)
        type_name = types.get(common, "") if common else ""
        if type_name:
            return type_name
        # a repetition that straddles two calls of one module type (RNNCell, RNNCell, ...)
        found = {types.get(m, "") for i in block if (m := modules[i])}
        if len(found) == 1 and all(modules[i] for i in block):
            return found.pop()
    if len(block) <= 4:
        return " → ".join(columns.names[i] for i in block)
    return f"{len(block)} ops"


def _grad_origin(
    columns: AutogradColumns, order: list[int], grad_of: Mapping[int, GradInfo], keys: list[str]
) -> str | None:
    """The node closest to the loss where the gradient first became zero or non-finite.

    With op gradients: an op that received a good gradient and passed only bad ones on (a
    dead ReLU), else one that passed some bad one on. With parameter gradients only: the op
    above the largest set of parameters whose gradients all went bad.
    """
    bad = {"zero", "nan", "inf"}
    leaves = columns.leaves
    children = columns.children
    partial: str | None = None
    for i in reversed(order):
        info = grad_of.get(i)
        if info is None or i in leaves or info.status != "ok":
            continue
        statuses = [grad_of[c].status for c in children[i] if c in grad_of]
        if statuses and all(s in bad for s in statuses):
            return keys[i]
        if partial is None and any(s in bad for s in statuses):
            partial = keys[i]
    if partial is not None:
        return partial
    leaf_bits: dict[int, int] = {}
    bad_bits = 0
    for bit, i in enumerate(i for i in order if i in leaves and i in grad_of):
        leaf_bits[i] = 1 << bit
        if grad_of[i].status in bad:
            bad_bits |= 1 << bit
    if not bad_bits:
        return None
    below: dict[int, int] = {}
    for i in order:  # children come before their consumers in forward order
        mask = leaf_bits.get(i, 0)
        for child in children[i]:
            mask |= below.get(child, 0)
        below[i] = mask
    best: tuple[int, int] | None = None
    for i in order:
        mask = below[i]
        if mask and mask & bad_bits == mask and i not in leaves:
            size = bin(mask).count("1")
            if best is None or size >= best[0]:
                best = (size, i)
    return keys[best[1]] if best is not None else None


def bad_below(nodes: Sequence[GraphNode]) -> str:
    """What went wrong at the origin: "zero", "nan" or "inf" (the worst below it)."""
    statuses = {n.grad.status for n in nodes if n.grad is not None}
    for status in ("nan", "inf", "zero"):
        if status in statuses:
            return status
    return "zero"
