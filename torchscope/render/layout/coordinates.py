"""Step 5 of the layout: the x of every item and cluster, and the y of every row."""

from __future__ import annotations

from torchscope.render.layout.clusters import _cluster_values, _ClusterTree
from torchscope.render.layout.geometry import (
    CLUSTER_CHAR_WIDTH,
    CLUSTER_FOOTER,
    CLUSTER_HEADER,
    CLUSTER_PAD,
    GAP_X,
    MARGIN,
    NODE_HEIGHT,
    RANK_GAP,
)

ALIGN_SWEEPS = 4


def _place_x(
    item_layer: list[int],
    item_width: list[float],
    item_cluster: list[int],
    position: list[float],
    source: list[int],
    down: list[list[int]],
    tree: _ClusterTree,
) -> tuple[list[float], list[float], list[float], float]:
    """x of every item, x and width of every cluster, width of the drawing.

    Each cluster, innermost first, places its members (items and child clusters, a child
    cluster as one rectangle spanning its rows) left to right in the order of their
    positions, each as far left as the members already placed on its rows allow; then the
    same from the right; and takes the average, which keeps every gap and centres short
    rows under long ones. A few passes then slide each member, within the room its
    neighbours on the same rows leave it, towards the median of where its edges lead.
    """
    items = len(item_layer)
    count = len(tree.keys)
    total = items + count  # members are numbered items first, then clusters
    top = [0] * total
    bottom = [0] * total
    width = [0.0] * total
    for i in range(items):
        top[i] = bottom[i] = item_layer[i]
        width[i] = item_width[i]
    span_top, span_bottom = tree.spans(item_cluster, item_layer)
    for c in range(count):
        top[items + c] = span_top[c]
        bottom[items + c] = span_bottom[c]
    members: list[list[int]] = [[] for _ in range(count + 1)]  # the last: the top level
    for i in range(items):
        members[item_cluster[i]].append(i)
    for c in tree.inner_first:
        if span_top[c] >= 0:  # a cluster without items is not drawn
            members[tree.parent[c]].append(items + c)
    order_value = position + _cluster_values(position, item_cluster, tree)

    relative = [0.0] * total  # x inside the enclosing cluster's box
    left_of: list[list[int]] = [[] for _ in range(total)]  # next member to the left, per row
    right_of: list[list[int]] = [[] for _ in range(total)]
    lower = [0.0] * (count + 1)  # room for members inside each cluster, the top level last
    upper = [0.0] * (count + 1)

    def pack(group: list[int]) -> float:
        group.sort(key=lambda m: (order_value[m], m))
        low = top[group[0]]
        high = bottom[group[0]]
        for m in group:
            if top[m] < low:
                low = top[m]
            if bottom[m] > high:
                high = bottom[m]
        last = [-1] * (high - low + 1)  # the member placed last on each row
        sky = [0.0] * (high - low + 1)
        left: list[float] = []
        extent = 0.0
        for m in group:
            x = 0.0
            for k in range(top[m] - low, bottom[m] - low + 1):
                if sky[k] > x:
                    x = sky[k]
                neighbour = last[k]
                if neighbour >= 0 and (not left_of[m] or left_of[m][-1] != neighbour):
                    left_of[m].append(neighbour)
                    right_of[neighbour].append(m)
                last[k] = m
            left.append(x)
            if x + width[m] > extent:
                extent = x + width[m]
            for k in range(top[m] - low, bottom[m] - low + 1):
                sky[k] = x + width[m] + GAP_X
        sky = [extent] * (high - low + 1)
        for g in range(len(group) - 1, -1, -1):
            m = group[g]
            x = extent
            for k in range(top[m] - low, bottom[m] - low + 1):
                if sky[k] < x:
                    x = sky[k]
            x -= width[m]
            relative[m] = (left[g] + x) / 2
            for k in range(top[m] - low, bottom[m] - low + 1):
                sky[k] = x - GAP_X
        return extent

    for c in tree.inner_first:
        own = items + c
        if span_top[c] < 0:
            continue
        inner = pack(members[c])
        width[own] = max(inner, len(tree.labels[c]) * CLUSTER_CHAR_WIDTH) + 2 * CLUSTER_PAD
        shift = (width[own] - inner) / 2
        for m in members[c]:
            relative[m] += shift
        lower[c] = CLUSTER_PAD
        upper[c] = width[own] - CLUSTER_PAD
    total_width = 2 * MARGIN
    if members[-1]:
        total_width += pack(members[-1])
        for m in members[-1]:
            relative[m] += MARGIN
    lower[-1] = MARGIN
    upper[-1] = total_width - MARGIN

    # absolute x, outermost clusters first
    absolute = [0.0] * total
    outer_first = tree.inner_first[::-1]
    for c in outer_first:
        parent = tree.parent[c]
        absolute[items + c] = relative[items + c] + (
            absolute[items + parent] if parent >= 0 else 0.0
        )
    for i in range(items):
        c = item_cluster[i]
        absolute[i] = relative[i] + (absolute[items + c] if c >= 0 else 0.0)

    _align(
        members,
        outer_first,
        items,
        relative,
        absolute,
        width,
        left_of,
        right_of,
        lower,
        upper,
        item_cluster,
        source,
        down,
        tree,
    )
    cluster_width = [width[items + c] if span_top[c] >= 0 else 0.0 for c in range(count)]
    return absolute[:items], absolute[items:], cluster_width, total_width


def _align(
    members: list[list[int]],
    outer_first: list[int],
    items: int,
    relative: list[float],
    absolute: list[float],
    width: list[float],
    left_of: list[list[int]],
    right_of: list[list[int]],
    lower: list[float],
    upper: list[float],
    item_cluster: list[int],
    source: list[int],
    down: list[list[int]],
    tree: _ClusterTree,
) -> None:
    """Slide members towards the median of where their edges lead, in place.

    Each member only moves inside the room left by its neighbours on its rows and by its
    cluster's box, so nothing comes to overlap and boxes keep their size. An op lines up
    with the path its data comes along, not with its weights (they line up with it).
    """
    count = len(tree.keys)
    # the edges that leave each member: (end inside, end outside)
    ports: list[list[tuple[int, int]]] = [[] for _ in range(items + count)]
    for a in range(items):
        for b in down[a]:
            ports[a].append((a, b))
            ports[b].append((b, a))
            ca, cb = item_cluster[a], item_cluster[b]
            # every cluster holding one end but not the other is crossed by the edge
            for inside, outside, start, other in ((a, b, ca, cb), (b, a, cb, ca)):
                at = start
                while at >= 0 and not tree.holds(at, other):
                    ports[items + at].append((inside, outside))
                    at = tree.parent[at]
    for m in range(items):
        along = [(i, o) for i, o in ports[m] if not source[o]]
        if along:
            ports[m] = along
    descendants: list[list[int]] = [[] for _ in range(count)]  # items, then clusters
    for i in range(items):
        at = item_cluster[i]
        while at >= 0:
            descendants[at].append(i)
            at = tree.parent[at]
    for c in range(count):
        at = tree.parent[c]
        while at >= 0:
            descendants[at].append(items + c)
            at = tree.parent[at]
    containers = [count, *outer_first]  # the top level (members[-1]) first
    for sweep in range(ALIGN_SWEEPS):
        for container in containers:
            group = members[container] if container < count else members[-1]
            inner = container if container < count else -1
            for g in range(len(group)):
                m = group[g] if sweep % 2 == 0 else group[len(group) - 1 - g]
                if not ports[m]:
                    continue
                offsets = sorted(
                    absolute[o] + width[o] / 2 - absolute[i] - width[i] / 2 for i, o in ports[m]
                )
                middle = len(offsets) // 2
                shift = (
                    offsets[middle]
                    if len(offsets) % 2
                    else (offsets[middle - 1] + offsets[middle]) / 2
                )
                low = lower[inner]
                for neighbour in left_of[m]:
                    if relative[neighbour] + width[neighbour] + GAP_X > low:
                        low = relative[neighbour] + width[neighbour] + GAP_X
                high = upper[inner] - width[m]
                for neighbour in right_of[m]:
                    if relative[neighbour] - GAP_X - width[m] < high:
                        high = relative[neighbour] - GAP_X - width[m]
                target = relative[m] + shift
                if target < low:
                    target = low
                if target > high:
                    target = high
                moved = target - relative[m]
                if moved == 0.0:
                    continue
                relative[m] = target
                absolute[m] += moved
                if m >= items:
                    for d in descendants[m - items]:
                        absolute[d] += moved


def _rows_y(
    layer_count: int, item_layer: list[int], item_cluster: list[int], tree: _ClusterTree
) -> tuple[list[float], list[float], list[float], float]:
    """y of every row, y and height of every cluster, height of the drawing.

    Rows are spaced so that the labels of the clusters that start on a row (nested ones
    stacked) fit above it, and their bottom padding below the row where they end.
    """
    count = len(tree.keys)
    top, bottom = tree.spans(item_cluster, item_layer)
    # margins: a cluster's header sits above those of its children that start on its row
    head = [CLUSTER_HEADER] * count
    foot = [CLUSTER_FOOTER] * count
    for c in tree.inner_first:
        p = tree.parent[c]
        if p >= 0 and top[c] >= 0:
            if top[c] == top[p] and head[c] + CLUSTER_HEADER > head[p]:
                head[p] = head[c] + CLUSTER_HEADER
            if bottom[c] == bottom[p] and foot[c] + CLUSTER_FOOTER > foot[p]:
                foot[p] = foot[c] + CLUSTER_FOOTER
    above = [0.0] * layer_count
    below = [0.0] * layer_count
    for c in range(count):
        if top[c] >= 0:
            if head[c] > above[top[c]]:
                above[top[c]] = head[c]
            if foot[c] > below[bottom[c]]:
                below[bottom[c]] = foot[c]
    y = [0.0] * layer_count
    at = MARGIN
    for lay in range(layer_count):
        at += above[lay]
        y[lay] = at
        at += NODE_HEIGHT + below[lay] + RANK_GAP
    height = at - RANK_GAP + MARGIN if layer_count else 2 * MARGIN
    cluster_y = [0.0] * count
    cluster_height = [0.0] * count
    for c in range(count):
        if top[c] >= 0:
            cluster_y[c] = y[top[c]] - head[c]
            cluster_height[c] = y[bottom[c]] + NODE_HEIGHT + foot[c] - cluster_y[c]
    return y, cluster_y, cluster_height, height
