"""The graph's clusters as indices (parent, depth, nesting order), shared by every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchscope.records import Graph


class _ClusterTree:
    """The graph's clusters as indices: parent, depth and nesting order."""

    def __init__(self, graph: Graph) -> None:
        self.keys: list[str] = []
        self.labels: list[str] = []
        index: dict[str, int] = {}
        parents: list[str | None] = []
        for cluster in graph.clusters:
            # "" is the root, which is drawn as the whole picture, not as a cluster
            if cluster.key and cluster.key not in index:
                index[cluster.key] = len(self.keys)
                self.keys.append(cluster.key)
                self.labels.append(cluster.label)
                parents.append(cluster.parent)
        self.index = index
        count = len(self.keys)
        self.parent = [index.get(p, -1) if p else -1 for p in parents]
        self.depth = [-1] * count
        for c in range(count):
            # walk up until a known depth; a loop of parents is cut where it closes
            path: list[int] = []
            seen: set[int] = set()
            at = c
            while at >= 0 and self.depth[at] < 0 and at not in seen:
                seen.add(at)
                path.append(at)
                at = self.parent[at]
            if at >= 0 and self.depth[at] < 0:
                self.parent[path[-1]] = -1
                at = -1
            base = self.depth[at] if at >= 0 else 0
            for k, member in enumerate(reversed(path)):
                self.depth[member] = base + k + 1
        # ancestors outermost first, the cluster itself last
        self.chain: list[tuple[int, ...]] = []
        for c in range(count):
            chain: list[int] = []
            at = c
            while at >= 0:
                chain.append(at)
                at = self.parent[at]
            self.chain.append(tuple(reversed(chain)))
        #: clusters, innermost first (children before their parents)
        self.inner_first = sorted(range(count), key=lambda c: (-self.depth[c], c))

    def resolve(self, module: str | None) -> int:
        """The cluster a node of ``module`` is drawn in: the module's own, or that of its
        nearest enclosing module that has one; -1 for the top level."""
        key = module or ""
        while key:
            found = self.index.get(key)
            if found is not None:
                return found
            key = key.rpartition(".")[0]
        return -1

    def spans(self, item_cluster: list[int], item_layer: list[int]) -> tuple[list[int], list[int]]:
        """First and last layer of the items in every cluster (-1 for none)."""
        count = len(self.keys)
        top = [-1] * count
        bottom = [-1] * count
        for i, c in enumerate(item_cluster):
            lay = item_layer[i]
            if c >= 0:
                if top[c] < 0 or lay < top[c]:
                    top[c] = lay
                if lay > bottom[c]:
                    bottom[c] = lay
        for c in self.inner_first:
            p = self.parent[c]
            if p >= 0 and top[c] >= 0:
                if top[p] < 0 or top[c] < top[p]:
                    top[p] = top[c]
                if bottom[c] > bottom[p]:
                    bottom[p] = bottom[c]
        return top, bottom

    def dummy_home(self, a: int, b: int, lay: int, top: list[int], bottom: list[int]) -> int:
        """The cluster a dummy node on ``lay`` of an edge from cluster ``a`` to cluster ``b``
        is drawn in: the innermost cluster of either end whose nodes span ``lay``, so that an
        edge into a module runs inside the module's box rather than beside it."""
        best = self.common(a, b)
        best_depth = self.depth[best] if best >= 0 else 0
        for end in (b, a):
            at = end
            while at >= 0 and self.depth[at] > best_depth:
                if top[at] <= lay <= bottom[at]:
                    best, best_depth = at, self.depth[at]
                    break
                at = self.parent[at]
        return best

    def holds(self, outer: int, inner: int) -> bool:
        """True when cluster ``inner`` is ``outer`` or nested in it (-1: the top level)."""
        if inner < 0:
            return False
        depth = self.depth[outer]
        return depth <= self.depth[inner] and self.chain[inner][depth - 1] == outer

    def common(self, a: int, b: int) -> int:
        """The innermost cluster holding both ``a`` and ``b`` (-1: the top level)."""
        if a < 0 or b < 0:
            return -1
        found = -1
        for x, y in zip(self.chain[a], self.chain[b], strict=False):
            if x != y:
                break
            found = x
        return found


def _cluster_values(
    position: list[float], item_cluster: list[int], tree: _ClusterTree
) -> list[float]:
    """Mean position of every cluster's items, its child clusters' included."""
    count = len(tree.keys)
    total = [0.0] * count
    members = [0] * count
    for i, c in enumerate(item_cluster):
        if c >= 0:
            total[c] += position[i]
            members[c] += 1
    for c in tree.inner_first:
        p = tree.parent[c]
        if p >= 0:
            total[p] += total[c]
            members[p] += members[c]
    return [total[c] / members[c] if members[c] else 0.0 for c in range(count)]
