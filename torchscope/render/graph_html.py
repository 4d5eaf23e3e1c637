"""A self-contained HTML page for graphs too big for a static picture.

The page embeds the graph (folded, as :func:`torchscope._graphs.view` returns it) as JSON
and lays it out in the browser with a JavaScript port of
:func:`torchscope.render.layout.layered_layout`, so that clusters can be collapsed and
expanded without a server: click a cluster's box to collapse it into one node, click that
node to expand it again. Drag to pan, scroll to zoom, type in the search box to highlight
nodes whose label or key contains the text (Enter jumps to the next match). Everything is
inline: no network, no CDN.

The port in :data:`SCRIPT` follows ``layout.py`` function by function and gives the same
coordinates; change both together (``tests/test_render_layout.py`` compares them when
Node.js is installed).
"""

from __future__ import annotations

import json
from html import escape
from typing import TYPE_CHECKING, Any

from torchscope._graphs import check_depth, view
from torchscope.render import layout
from torchscope.render.svg import GRAD_LOG_RANGE, PALETTE, grad_fill

if TYPE_CHECKING:
    from torchscope.records import Graph

__all__ = ["SCRIPT", "graph_to_html", "script_json"]

#: Constants of :mod:`torchscope.render.layout` that the script's port uses.
_GEOMETRY_NAMES = (
    "NODE_HEIGHT",
    "LABEL_CHAR_WIDTH",
    "SHAPE_CHAR_WIDTH",
    "CLUSTER_CHAR_WIDTH",
    "NODE_PADDING",
    "MIN_NODE_WIDTH",
    "DUMMY_WIDTH",
    "GAP_X",
    "RANK_GAP",
    "CLUSTER_PAD",
    "CLUSTER_HEADER",
    "CLUSTER_FOOTER",
    "MARGIN",
    "MAX_LABEL_CHARS",
    "MAX_SHAPE_CHARS",
    "SWEEPS",
    "ALIGN_SWEEPS",
    "DUMMY_BUDGET",
)


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside ``<script>``: ``<``, ``>`` and ``&`` are written
    as ``\\u003c`` and friends, so a label such as ``</script>`` or ``<!--`` cannot end or
    comment out the script, and the text is still JSON (``json.loads`` reads it back)."""
    # ensure_ascii also escapes U+2028/U+2029, which old JavaScript engines end lines at
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _legend_html(graph: Graph) -> str:
    """The legend as a ``<ul>``: every colour the page can use (gradients only when the
    graph has them)."""
    fill, stroke, other = PALETTE["fill"], PALETTE["stroke"], PALETTE["other"]
    entries: list[tuple[str, str, str, str]] = [  # (name, fill, outline, extra style)
        ("parameter", fill["parameter"], stroke["parameter"], ""),
        ("input", fill["input"], stroke["input"], ""),
        ("output", fill["output"], stroke["output"], ""),
        ("op", fill["op"], stroke["op"], ""),
        ("collapsed module (click to expand)", fill["module"], stroke["module"], ""),
        ("module (click to collapse)", other["cluster_fill"], other["cluster_stroke"], ""),
        ("repeated step ×N", other["cluster_fold_fill"], other["cluster_stroke"], ""),
    ]
    if any(node.grad is not None for node in graph.nodes):
        grey = stroke["op"]
        entries += [
            ("gradient ok, small norm", grad_fill(10 ** GRAD_LOG_RANGE[0]), grey, ""),
            ("gradient ok, large norm", grad_fill(10 ** GRAD_LOG_RANGE[1]), grey, ""),
            ("gradient all zero", PALETTE["grad"]["zero"], grey, ""),
            ("gradient NaN or inf", PALETTE["grad"]["nan"], grey, ""),
            ("no gradient", PALETTE["grad"]["none"], grey, "border-style:dashed;"),
            ("where the trouble starts", "#ffffff", other["origin"], "border-width:3px;"),
        ]
    items = "".join(
        f'<li><span class="swatch" style="background:{f};border-color:{s};{extra}"></span>'
        f"{escape(name)}</li>"
        for name, f, s, extra in entries
    )
    return f'<ul id="legend">{items}</ul>'


def graph_to_html(graph: Graph, *, fold: bool = True, depth: int | None = None) -> str:
    """A standalone HTML page that draws ``graph`` interactively: pan, zoom, collapse and
    expand clusters, search nodes by label or key.

    ``fold`` folds repeated steps; with ``depth``, the modules at nesting level ``depth``
    (1: the model's direct children) start collapsed, as in ``view(graph, depth=depth)``
    (None: all expanded). The page needs no network and no Graphviz.
    """
    check_depth(depth)
    shown = view(graph, fold=fold)
    title = graph.title or graph.kind
    counts = f"{len(shown.nodes):,} nodes, {len(shown.edges):,} edges"
    warnings = "".join(f"<li>{escape(w)}</li>" for w in shown.warnings)
    geometry = {name: getattr(layout, name) for name in _GEOMETRY_NAMES}
    data_lines = "\n".join(
        [
            f"const GRAPH = {script_json(shown.to_dict())};",
            f"const INITIAL_DEPTH = {script_json(depth)};",
            f"const PALETTE = {script_json(PALETTE)};",
            f"const GRAD_LOG_RANGE = {script_json(list(GRAD_LOG_RANGE))};",
            f"const GEOMETRY = {script_json(geometry)};",
        ]
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} — torchscope graph</title>
<style>
{_STYLE}
</style>
</head>
<body>
<header>
  <h1>{escape(title)} <small>{escape(shown.kind)} graph: {counts}</small></h1>
  <div id="controls">
    <input id="search" type="search" placeholder="search label or key" autocomplete="off">
    <span id="matches"></span>
    <button id="fit" type="button">fit</button>
    <button id="expand" type="button">expand all</button>
    <button id="reset" type="button">reset</button>
    <span id="shown"></span>
  </div>
</header>
{f'<ul id="warnings">{warnings}</ul>' if warnings else ""}
<div id="main">
  <div id="view" tabindex="0">
    <canvas id="canvas"></canvas>
    <div id="tooltip" hidden></div>
    <noscript>This page draws the graph with JavaScript; enable it to see the graph.</noscript>
  </div>
  <aside>
    <h2>Legend</h2>
    {_legend_html(shown)}
    <p class="hint">Drag to pan, scroll to zoom. Click a module's box to collapse it, click
    a collapsed module to expand it.</p>
    <h2>Selected</h2>
    <pre id="details">Click a node.</pre>
  </aside>
</div>
<script>
"use strict";
{data_lines}
{SCRIPT}
</script>
</body>
</html>
"""


_STYLE = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { display: flex; flex-direction: column; font: 13px Helvetica, Arial, sans-serif;
       color: #1a1a1a; background: #fafafa; }
header { padding: 6px 12px; border-bottom: 1px solid #ddd; background: #fff; }
h1 { font-size: 16px; margin: 0 0 6px 0; }
h1 small { font-weight: normal; color: #555; margin-left: 8px; }
h2 { font-size: 13px; margin: 10px 0 4px 0; }
#controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
#search { width: 260px; padding: 3px 6px; }
#matches, #shown { color: #555; }
#warnings { margin: 0; padding: 4px 12px 4px 30px; background: #fff8e1; color: #7a4b00;
            border-bottom: 1px solid #f0d9a0; }
#main { flex: 1; display: flex; min-height: 0; }
#view { flex: 1; position: relative; overflow: hidden; cursor: grab; outline: none;
        background: #fff; }
#view.dragging { cursor: grabbing; }
#canvas { position: absolute; left: 0; top: 0; }
#tooltip { position: absolute; pointer-events: none; background: rgba(30, 30, 30, 0.92);
           color: #fff; padding: 6px 8px; border-radius: 4px; font: 12px monospace;
           white-space: pre; max-width: 600px; overflow: hidden; z-index: 2; }
aside { width: 260px; overflow: auto; padding: 4px 12px; border-left: 1px solid #ddd;
        background: #fff; }
#legend { list-style: none; padding: 0; margin: 0; }
#legend li { margin: 3px 0; display: flex; align-items: center; }
.swatch { display: inline-block; width: 18px; height: 12px; margin-right: 8px;
          border: 1px solid; border-radius: 3px; flex: none; }
.hint { color: #555; }
#details { white-space: pre-wrap; word-break: break-all; font: 11px monospace;
           background: #f6f6f6; padding: 6px; margin: 0; }
"""

#: The page's script: a port of layout.py, then drawing and interaction on a canvas.
SCRIPT = r"""
// ======================================================================================
// Layout: a port of torchscope/render/layout.py, function by function. Keep the two in
// step: the same graph must give the same coordinates (the tests compare them).
// ======================================================================================

const G = GEOMETRY;

function shorten(text, limit) {
  return text.length <= limit ? text : text.slice(0, limit - 1) + "\u2026";
}

function nodeLines(node) {
  const label = shorten(node.label || node.key, G.MAX_LABEL_CHARS);
  const shapes = (node.shapes || []).map((shape) => "[" + shape.join(", ") + "]").join(", ");
  return [label, shorten(shapes, G.MAX_SHAPE_CHARS)];
}

function nodeWidth(node) {
  const [label, shapes] = nodeLines(node);
  const text = Math.max(label.length * G.LABEL_CHAR_WIDTH, shapes.length * G.SHAPE_CHAR_WIDTH);
  return Math.max(G.MIN_NODE_WIDTH, text + G.NODE_PADDING);
}

// Lexicographic order of two arrays of numbers, like Python's tuple comparison.
function compareKeys(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return a.length - b.length;
}

class ClusterTree {
  constructor(clusters) {
    this.keys = [];
    this.labels = [];
    this.index = new Map();
    const parents = [];
    for (const cluster of clusters) {
      // "" is the root, drawn as the whole picture, not as a cluster
      if (cluster.key && !this.index.has(cluster.key)) {
        this.index.set(cluster.key, this.keys.length);
        this.keys.push(cluster.key);
        this.labels.push(cluster.label);
        parents.push(cluster.parent);
      }
    }
    const count = this.keys.length;
    this.parent = parents.map((p) => (p && this.index.has(p) ? this.index.get(p) : -1));
    this.depth = new Array(count).fill(-1);
    for (let c = 0; c < count; c++) {
      // walk up until a known depth; a loop of parents is cut where it closes
      const path = [];
      const seen = new Set();
      let at = c;
      while (at >= 0 && this.depth[at] < 0 && !seen.has(at)) {
        seen.add(at);
        path.push(at);
        at = this.parent[at];
      }
      if (at >= 0 && this.depth[at] < 0) {
        this.parent[path[path.length - 1]] = -1;
        at = -1;
      }
      const base = at >= 0 ? this.depth[at] : 0;
      for (let k = 0; k < path.length; k++) this.depth[path[path.length - 1 - k]] = base + k + 1;
    }
    this.chain = [];
    for (let c = 0; c < count; c++) {
      const chain = [];
      let at = c;
      while (at >= 0) {
        chain.push(at);
        at = this.parent[at];
      }
      this.chain.push(chain.reverse());
    }
    this.innerFirst = [...Array(count).keys()].sort(
      (a, b) => this.depth[b] - this.depth[a] || a - b
    );
  }

  resolve(module) {
    let key = module || "";
    while (key) {
      const found = this.index.get(key);
      if (found !== undefined) return found;
      const dot = key.lastIndexOf(".");
      key = dot >= 0 ? key.slice(0, dot) : "";
    }
    return -1;
  }

  spans(itemCluster, itemLayer) {
    const count = this.keys.length;
    const top = new Array(count).fill(-1);
    const bottom = new Array(count).fill(-1);
    for (let i = 0; i < itemCluster.length; i++) {
      const c = itemCluster[i];
      const lay = itemLayer[i];
      if (c >= 0) {
        if (top[c] < 0 || lay < top[c]) top[c] = lay;
        if (lay > bottom[c]) bottom[c] = lay;
      }
    }
    for (const c of this.innerFirst) {
      const p = this.parent[c];
      if (p >= 0 && top[c] >= 0) {
        if (top[p] < 0 || top[c] < top[p]) top[p] = top[c];
        if (bottom[c] > bottom[p]) bottom[p] = bottom[c];
      }
    }
    return [top, bottom];
  }

  dummyHome(a, b, lay, top, bottom) {
    let best = this.common(a, b);
    let bestDepth = best >= 0 ? this.depth[best] : 0;
    for (const end of [b, a]) {
      let at = end;
      while (at >= 0 && this.depth[at] > bestDepth) {
        if (top[at] <= lay && lay <= bottom[at]) {
          best = at;
          bestDepth = this.depth[at];
          break;
        }
        at = this.parent[at];
      }
    }
    return best;
  }

  holds(outer, inner) {
    if (inner < 0) return false;
    const depth = this.depth[outer];
    return depth <= this.depth[inner] && this.chain[inner][depth - 1] === outer;
  }

  common(a, b) {
    if (a < 0 || b < 0) return -1;
    let found = -1;
    const ca = this.chain[a];
    const cb = this.chain[b];
    for (let k = 0; k < Math.min(ca.length, cb.length); k++) {
      if (ca[k] !== cb[k]) break;
      found = ca[k];
    }
    return found;
  }
}

function backEdges(succ) {
  const n = succ.length;
  const state = new Array(n).fill(0); // 0: not seen, 1: on the stack, 2: done
  const nextChild = new Array(n).fill(0);
  const back = new Set(); // v * n + w
  for (let root = 0; root < n; root++) {
    if (state[root]) continue;
    state[root] = 1;
    const stack = [root];
    while (stack.length) {
      const v = stack[stack.length - 1];
      const children = succ[v];
      if (nextChild[v] < children.length) {
        const w = children[nextChild[v]];
        nextChild[v] += 1;
        if (state[w] === 0) {
          state[w] = 1;
          stack.push(w);
        } else if (state[w] === 1) {
          back.add(v * n + w);
        }
      } else {
        state[v] = 2;
        stack.pop();
      }
    }
  }
  return back;
}

function topological(succ) {
  const remaining = new Array(succ.length).fill(0);
  for (const edges of succ) for (const [w] of edges) remaining[w] += 1;
  const queue = [];
  for (let v = 0; v < succ.length; v++) if (remaining[v] === 0) queue.push(v);
  // the queue only grows, so it doubles as the order
  for (let head = 0; head < queue.length; head++) {
    for (const [w] of succ[queue[head]]) {
      remaining[w] -= 1;
      if (remaining[w] === 0) queue.push(w);
    }
  }
  return queue;
}

function outermostEnabled(chain, start, enabled) {
  for (let k = start; k < chain.length; k++) if (enabled[chain[k]]) return chain[k];
  return -1;
}

function constraints(n, flow, nodeCluster, tree, enabled) {
  const count = tree.keys.length;
  const succ = [];
  for (let v = 0; v < n + 2 * count; v++) succ.push([]);
  const nearest = new Array(count).fill(-1);
  for (let k = tree.innerFirst.length - 1; k >= 0; k--) {
    const c = tree.innerFirst[k];
    const parent = tree.parent[c];
    nearest[c] = enabled[c] ? c : parent >= 0 ? nearest[parent] : -1;
  }
  for (let c = 0; c < count; c++) {
    const parent = tree.parent[c];
    const outer = parent >= 0 ? nearest[parent] : -1;
    if (enabled[c] && outer >= 0) {
      succ[n + 2 * outer].push([n + 2 * c, 0]);
      succ[n + 2 * c + 1].push([n + 2 * outer + 1, 0]);
    }
  }
  for (let v = 0; v < n; v++) {
    const c = nodeCluster[v];
    const home = c >= 0 ? nearest[c] : -1;
    if (home >= 0) {
      succ[n + 2 * home].push([v, 0]);
      succ[v].push([n + 2 * home + 1, 0]);
    }
  }
  for (const [a, b] of flow) {
    succ[a].push([b, 1]);
    const ca = nodeCluster[a];
    const cb = nodeCluster[b];
    const common = tree.common(ca, cb);
    const start = common >= 0 ? tree.depth[common] : 0;
    const leaving = ca >= 0 ? outermostEnabled(tree.chain[ca], start, enabled) : -1;
    const entering = cb >= 0 ? outermostEnabled(tree.chain[cb], start, enabled) : -1;
    if (leaving >= 0 || entering >= 0) {
      const src = leaving >= 0 ? n + 2 * leaving + 1 : a;
      const dst = entering >= 0 ? n + 2 * entering : b;
      succ[src].push([dst, 1]);
    }
  }
  return succ;
}

function assignLayers(n, flow, nodeCluster, tree) {
  const count = tree.keys.length;
  let enabled = new Array(count).fill(true);
  let succ;
  let order;
  for (;;) {
    succ = constraints(n, flow, nodeCluster, tree, enabled);
    order = topological(succ);
    if (order.length === succ.length) break;
    const pred = succ.map(() => []);
    succ.forEach((edges, v) => {
      for (const [w, length] of edges) pred[w].push([v, length]);
    });
    const done = new Set(order);
    const fromEnd = new Set(topological(pred));
    const caught = (v) => !done.has(v) && !fromEnd.has(v);
    let disabled = false;
    for (let c = 0; c < count; c++) {
      if (enabled[c] && (caught(n + 2 * c) || caught(n + 2 * c + 1))) {
        enabled[c] = false;
        disabled = true;
      }
    }
    if (!disabled) enabled = new Array(count).fill(false);
  }
  const layer = new Array(succ.length).fill(0);
  for (const v of order) {
    for (const [w, length] of succ[v]) if (layer[v] + length > layer[w]) layer[w] = layer[v] + length;
  }
  for (let k = order.length - 1; k >= 0; k--) {
    const v = order[k];
    const edges = succ[v];
    if (edges.length) {
      let lowest = layer[edges[0][0]] - edges[0][1];
      for (const [w, length] of edges) if (layer[w] - length < lowest) lowest = layer[w] - length;
      layer[v] = lowest;
    }
  }
  if (n === 0) return [];
  let first = layer[0];
  for (let v = 1; v < n; v++) if (layer[v] < first) first = layer[v];
  return layer.slice(0, n).map((lay) => lay - first);
}

function clusterValues(position, itemCluster, tree) {
  const count = tree.keys.length;
  const total = new Array(count).fill(0);
  const members = new Array(count).fill(0);
  for (let i = 0; i < itemCluster.length; i++) {
    const c = itemCluster[i];
    if (c >= 0) {
      total[c] += position[i];
      members[c] += 1;
    }
  }
  for (const c of tree.innerFirst) {
    const p = tree.parent[c];
    if (p >= 0) {
      total[p] += total[c];
      members[p] += members[c];
    }
  }
  return total.map((t, c) => (members[c] ? t / members[c] : 0));
}

function clusterPrefixes(tree, cvalue, offset) {
  const prefixes = new Array(tree.keys.length).fill(null);
  for (let k = tree.innerFirst.length - 1; k >= 0; k--) {
    const c = tree.innerFirst[k];
    const parent = tree.parent[c];
    prefixes[c] = (parent >= 0 ? prefixes[parent] : []).concat([cvalue[c], 0, offset + c]);
  }
  return prefixes;
}

function orderRows(rows, value, source, up, down, itemCluster, tree) {
  const position = value.slice();
  const items = value.length;
  let prefixes = clusterPrefixes(tree, clusterValues(position, itemCluster, tree), items);
  const keys = new Array(items);
  function place(row) {
    for (const i of row) {
      const c = itemCluster[i];
      keys[i] = (c >= 0 ? prefixes[c] : []).concat([value[i], source[i], i]);
    }
    row.sort((a, b) => compareKeys(keys[a], keys[b]));
    const middle = (row.length - 1) / 2;
    let changed = false;
    row.forEach((i, k) => {
      if (position[i] !== k - middle) changed = true;
      position[i] = k - middle;
    });
    return changed;
  }
  for (const row of rows) place(row);
  for (let s = 0; s < G.SWEEPS; s++) {
    let changed = false;
    for (const [neighbours, sweep] of [
      [up, rows.slice(1)],
      [down, rows.slice(0, -1).reverse()],
    ]) {
      prefixes = clusterPrefixes(tree, clusterValues(position, itemCluster, tree), items);
      for (const row of sweep) {
        for (const i of row) {
          const near = neighbours[i];
          if (near.length) {
            let total = 0;
            for (const j of near) total += position[j];
            value[i] = total / near.length;
          } else {
            value[i] = position[i];
          }
        }
        changed = place(row) || changed;
      }
    }
    if (!changed) break;
  }
  return position;
}

function placeX(itemLayer, itemWidth, itemCluster, position, source, down, tree) {
  const items = itemLayer.length;
  const count = tree.keys.length;
  const total = items + count;
  const top = new Array(total).fill(0);
  const bottom = new Array(total).fill(0);
  const width = new Array(total).fill(0);
  for (let i = 0; i < items; i++) {
    top[i] = bottom[i] = itemLayer[i];
    width[i] = itemWidth[i];
  }
  const [spanTop, spanBottom] = tree.spans(itemCluster, itemLayer);
  for (let c = 0; c < count; c++) {
    top[items + c] = spanTop[c];
    bottom[items + c] = spanBottom[c];
  }
  const members = [];
  for (let c = 0; c <= count; c++) members.push([]); // the last: the top level
  const slot = (c) => (c >= 0 ? c : count);
  for (let i = 0; i < items; i++) members[slot(itemCluster[i])].push(i);
  for (const c of tree.innerFirst) {
    if (spanTop[c] >= 0) members[slot(tree.parent[c])].push(items + c);
  }
  const orderValue = position.concat(clusterValues(position, itemCluster, tree));

  const relative = new Array(total).fill(0);
  const leftOf = [];
  const rightOf = [];
  for (let m = 0; m < total; m++) {
    leftOf.push([]);
    rightOf.push([]);
  }
  const lower = new Array(count + 1).fill(0);
  const upper = new Array(count + 1).fill(0);

  function pack(group) {
    group.sort((a, b) => orderValue[a] - orderValue[b] || a - b);
    let low = top[group[0]];
    let high = bottom[group[0]];
    for (const m of group) {
      if (top[m] < low) low = top[m];
      if (bottom[m] > high) high = bottom[m];
    }
    const last = new Array(high - low + 1).fill(-1);
    let sky = new Array(high - low + 1).fill(0);
    const left = [];
    let extent = 0;
    for (const m of group) {
      let x = 0;
      for (let k = top[m] - low; k <= bottom[m] - low; k++) {
        if (sky[k] > x) x = sky[k];
        const neighbour = last[k];
        const known = leftOf[m];
        if (neighbour >= 0 && (!known.length || known[known.length - 1] !== neighbour)) {
          known.push(neighbour);
          rightOf[neighbour].push(m);
        }
        last[k] = m;
      }
      left.push(x);
      if (x + width[m] > extent) extent = x + width[m];
      for (let k = top[m] - low; k <= bottom[m] - low; k++) sky[k] = x + width[m] + G.GAP_X;
    }
    sky = new Array(high - low + 1).fill(extent);
    for (let g = group.length - 1; g >= 0; g--) {
      const m = group[g];
      let x = extent;
      for (let k = top[m] - low; k <= bottom[m] - low; k++) if (sky[k] < x) x = sky[k];
      x -= width[m];
      relative[m] = (left[g] + x) / 2;
      for (let k = top[m] - low; k <= bottom[m] - low; k++) sky[k] = x - G.GAP_X;
    }
    return extent;
  }

  for (const c of tree.innerFirst) {
    const own = items + c;
    if (spanTop[c] < 0) continue;
    const inner = pack(members[c]);
    width[own] = Math.max(inner, tree.labels[c].length * G.CLUSTER_CHAR_WIDTH) + 2 * G.CLUSTER_PAD;
    const shift = (width[own] - inner) / 2;
    for (const m of members[c]) relative[m] += shift;
    lower[c] = G.CLUSTER_PAD;
    upper[c] = width[own] - G.CLUSTER_PAD;
  }
  let totalWidth = 2 * G.MARGIN;
  if (members[count].length) {
    totalWidth += pack(members[count]);
    for (const m of members[count]) relative[m] += G.MARGIN;
  }
  lower[count] = G.MARGIN;
  upper[count] = totalWidth - G.MARGIN;

  const absolute = new Array(total).fill(0);
  const outerFirst = tree.innerFirst.slice().reverse();
  for (const c of outerFirst) {
    const parent = tree.parent[c];
    absolute[items + c] = relative[items + c] + (parent >= 0 ? absolute[items + parent] : 0);
  }
  for (let i = 0; i < items; i++) {
    const c = itemCluster[i];
    absolute[i] = relative[i] + (c >= 0 ? absolute[items + c] : 0);
  }

  align(members, outerFirst, items, relative, absolute, width, leftOf, rightOf, lower, upper,
    itemCluster, source, down, tree);
  const clusterWidth = [];
  for (let c = 0; c < count; c++) clusterWidth.push(spanTop[c] >= 0 ? width[items + c] : 0);
  return [absolute.slice(0, items), absolute.slice(items), clusterWidth, totalWidth];
}

function align(members, outerFirst, items, relative, absolute, width, leftOf, rightOf, lower,
  upper, itemCluster, source, down, tree) {
  const count = tree.keys.length;
  const ports = [];
  for (let m = 0; m < items + count; m++) ports.push([]);
  for (let a = 0; a < items; a++) {
    for (const b of down[a]) {
      ports[a].push([a, b]);
      ports[b].push([b, a]);
      const ca = itemCluster[a];
      const cb = itemCluster[b];
      for (const [inside, outside, start, other] of [[a, b, ca, cb], [b, a, cb, ca]]) {
        let at = start;
        while (at >= 0 && !tree.holds(at, other)) {
          ports[items + at].push([inside, outside]);
          at = tree.parent[at];
        }
      }
    }
  }
  for (let m = 0; m < items; m++) {
    const along = ports[m].filter(([, o]) => !source[o]);
    if (along.length) ports[m] = along;
  }
  const descendants = [];
  for (let c = 0; c < count; c++) descendants.push([]);
  for (let i = 0; i < items; i++) {
    let at = itemCluster[i];
    while (at >= 0) {
      descendants[at].push(i);
      at = tree.parent[at];
    }
  }
  for (let c = 0; c < count; c++) {
    let at = tree.parent[c];
    while (at >= 0) {
      descendants[at].push(items + c);
      at = tree.parent[at];
    }
  }
  const containers = [count].concat(outerFirst);
  for (let sweep = 0; sweep < G.ALIGN_SWEEPS; sweep++) {
    for (const container of containers) {
      const group = members[container];
      for (let g = 0; g < group.length; g++) {
        const m = sweep % 2 === 0 ? group[g] : group[group.length - 1 - g];
        if (!ports[m].length) continue;
        const offsets = ports[m]
          .map(([i, o]) => absolute[o] + width[o] / 2 - absolute[i] - width[i] / 2)
          .sort((a, b) => a - b);
        const middle = Math.floor(offsets.length / 2);
        const shift =
          offsets.length % 2 ? offsets[middle] : (offsets[middle - 1] + offsets[middle]) / 2;
        let low = lower[container];
        for (const neighbour of leftOf[m]) {
          if (relative[neighbour] + width[neighbour] + G.GAP_X > low) {
            low = relative[neighbour] + width[neighbour] + G.GAP_X;
          }
        }
        let high = upper[container] - width[m];
        for (const neighbour of rightOf[m]) {
          if (relative[neighbour] - G.GAP_X - width[m] < high) {
            high = relative[neighbour] - G.GAP_X - width[m];
          }
        }
        let target = relative[m] + shift;
        if (target < low) target = low;
        if (target > high) target = high;
        const moved = target - relative[m];
        if (moved === 0) continue;
        relative[m] = target;
        absolute[m] += moved;
        if (m >= items) for (const d of descendants[m - items]) absolute[d] += moved;
      }
    }
  }
}

function rowsY(layerCount, itemLayer, itemCluster, tree) {
  const count = tree.keys.length;
  const [top, bottom] = tree.spans(itemCluster, itemLayer);
  const head = new Array(count).fill(G.CLUSTER_HEADER);
  const foot = new Array(count).fill(G.CLUSTER_FOOTER);
  for (const c of tree.innerFirst) {
    const p = tree.parent[c];
    if (p >= 0 && top[c] >= 0) {
      if (top[c] === top[p] && head[c] + G.CLUSTER_HEADER > head[p]) head[p] = head[c] + G.CLUSTER_HEADER;
      if (bottom[c] === bottom[p] && foot[c] + G.CLUSTER_FOOTER > foot[p]) foot[p] = foot[c] + G.CLUSTER_FOOTER;
    }
  }
  const above = new Array(layerCount).fill(0);
  const below = new Array(layerCount).fill(0);
  for (let c = 0; c < count; c++) {
    if (top[c] >= 0) {
      if (head[c] > above[top[c]]) above[top[c]] = head[c];
      if (foot[c] > below[bottom[c]]) below[bottom[c]] = foot[c];
    }
  }
  const y = new Array(layerCount).fill(0);
  let at = G.MARGIN;
  for (let lay = 0; lay < layerCount; lay++) {
    at += above[lay];
    y[lay] = at;
    at += G.NODE_HEIGHT + below[lay] + G.RANK_GAP;
  }
  const height = layerCount ? at - G.RANK_GAP + G.MARGIN : 2 * G.MARGIN;
  const clusterY = new Array(count).fill(0);
  const clusterHeight = new Array(count).fill(0);
  for (let c = 0; c < count; c++) {
    if (top[c] >= 0) {
      clusterY[c] = y[top[c]] - head[c];
      clusterHeight[c] = y[bottom[c]] + G.NODE_HEIGHT + foot[c] - clusterY[c];
    }
  }
  return [y, clusterY, clusterHeight, height];
}

function edgePaths(pairs, flow, chains, x, y, itemLayer, itemWidth) {
  const outgoing = new Map();
  const incoming = new Map();
  const add = (ports, node, entry) => {
    if (!ports.has(node)) ports.set(node, []);
    ports.get(node).push(entry);
  };
  pairs.forEach(([s, d], p) => {
    if (flow[p][0] !== s) return;
    const chain = chains[p];
    const first = chain.length ? chain[0] : d;
    const last = chain.length ? chain[chain.length - 1] : s;
    add(outgoing, s, [x[first] + itemWidth[first] / 2, p]);
    add(incoming, d, [x[last] + itemWidth[last] / 2, p]);
  });
  const startX = new Map();
  const endX = new Map();
  for (const [ports, where] of [[outgoing, startX], [incoming, endX]]) {
    for (const [node, edges] of ports) {
      edges.sort(compareKeys);
      const step = itemWidth[node] / (edges.length + 1);
      edges.forEach(([, p], k) => where.set(p, x[node] + step * (k + 1)));
    }
  }
  return pairs.map(([s, d], p) => {
    let points = [];
    for (const i of chains[p]) {
      const middle = x[i] + itemWidth[i] / 2;
      const row = y[itemLayer[i]];
      points.push([middle, row], [middle, row + G.NODE_HEIGHT]);
    }
    if (flow[p][0] === s) {
      points.unshift([startX.get(p), y[itemLayer[s]] + G.NODE_HEIGHT]);
      points.push([endX.get(p), y[itemLayer[d]]]);
    } else {
      points = points.reverse();
      points.unshift([x[s] + itemWidth[s] / 2, y[itemLayer[s]]]);
      points.push([x[d] + itemWidth[d] / 2, y[itemLayer[d]] + G.NODE_HEIGHT]);
    }
    return points;
  });
}

// The layout of a graph ({nodes, edges, clusters} as in Graph.to_dict()):
// {nodes: Map key -> box, layers, edges: [{src, dst, points, reversed}], clusters, width, height}.
function layeredLayout(graph) {
  const nodes = [];
  const index = new Map();
  for (const node of graph.nodes) {
    if (!index.has(node.key)) {
      index.set(node.key, nodes.length);
      nodes.push(node);
    }
  }
  const n = nodes.length;
  const tree = new ClusterTree(graph.clusters || []);
  const nodeCluster = nodes.map((node) => tree.resolve(node.module));

  const pairs = [];
  const pairIndex = new Map();
  const edgePair = [];
  for (const edge of graph.edges) {
    const s = index.get(edge.src);
    const d = index.get(edge.dst);
    if (s === undefined || d === undefined || s === d) {
      edgePair.push(-1);
      continue;
    }
    let p = pairIndex.get(s * n + d);
    if (p === undefined) {
      p = pairs.length;
      pairIndex.set(s * n + d, p);
      pairs.push([s, d]);
    }
    edgePair.push(p);
  }

  const succ = nodes.map(() => []);
  for (const [s, d] of pairs) succ[s].push(d);
  const back = backEdges(succ);
  const flow = pairs.map(([s, d]) => (back.has(s * n + d) ? [d, s] : [s, d]));
  const layer = assignLayers(n, flow, nodeCluster, tree);

  const itemLayer = layer.slice();
  const itemWidth = nodes.map(nodeWidth);
  const itemCluster = nodeCluster.slice();
  const chains = pairs.map(() => []);
  const straight = pairs.map(() => false);
  const longPairs = [];
  flow.forEach(([a, b], p) => {
    if (layer[b] - layer[a] > 1) longPairs.push([layer[b] - layer[a], p]);
  });
  longPairs.sort(compareKeys);
  const [spanTop, spanBottom] = tree.spans(nodeCluster, layer);
  let budget = G.DUMMY_BUDGET;
  for (const [span, p] of longPairs) {
    if (span - 1 > budget) {
      straight[p] = true;
      continue;
    }
    budget -= span - 1;
    const [a, b] = flow[p];
    for (let lay = layer[a] + 1; lay < layer[b]; lay++) {
      chains[p].push(itemLayer.length);
      itemLayer.push(lay);
      itemWidth.push(G.DUMMY_WIDTH);
      itemCluster.push(tree.dummyHome(nodeCluster[a], nodeCluster[b], lay, spanTop, spanBottom));
    }
  }
  const items = itemLayer.length;
  const up = [];
  const down = [];
  for (let i = 0; i < items; i++) {
    up.push([]);
    down.push([]);
  }
  flow.forEach(([a, b], p) => {
    if (straight[p]) return;
    const path = [a].concat(chains[p], [b]);
    for (let k = 0; k + 1 < path.length; k++) {
      down[path[k]].push(path[k + 1]);
      up[path[k + 1]].push(path[k]);
    }
  });

  let layerCount = 0;
  for (const lay of itemLayer) if (lay + 1 > layerCount) layerCount = lay + 1;
  const rows = [];
  for (let lay = 0; lay < layerCount; lay++) rows.push([]);
  for (let i = 0; i < items; i++) rows[itemLayer[i]].push(i);
  const value = new Array(items).fill(0);
  for (let i = 0; i < n; i++) value[i] = i;
  chains.forEach((chain, p) => {
    for (const i of chain) value[i] = flow[p][0] + 0.5;
  });
  const source = [];
  for (let i = 0; i < items; i++) source.push(i < n && !up[i].length ? 1 : 0);
  const position = orderRows(rows, value, source, up, down, itemCluster, tree);

  const [x, clusterX, clusterWidth, width] = placeX(
    itemLayer, itemWidth, itemCluster, position, source, down, tree);
  const [y, clusterY, clusterHeight, height] = rowsY(layerCount, itemLayer, itemCluster, tree);

  const boxes = new Map();
  const layers = new Map();
  for (let i = 0; i < n; i++) {
    boxes.set(nodes[i].key, { x: x[i], y: y[itemLayer[i]], width: itemWidth[i], height: G.NODE_HEIGHT });
    layers.set(nodes[i].key, layer[i]);
  }
  const clusterBoxes = new Map();
  for (let c = 0; c < tree.keys.length; c++) {
    if (clusterWidth[c] > 0) {
      clusterBoxes.set(tree.keys[c], {
        x: clusterX[c], y: clusterY[c], width: clusterWidth[c], height: clusterHeight[c],
      });
    }
  }
  const paths = edgePaths(pairs, flow, chains, x, y, itemLayer, itemWidth);
  const edges = [];
  graph.edges.forEach((edge, k) => {
    const p = edgePair[k];
    if (p >= 0) {
      edges.push({ src: edge.src, dst: edge.dst, points: paths[p], reversed: flow[p][0] !== pairs[p][0] });
    }
  });
  return { nodes: boxes, layers, edges, clusters: clusterBoxes, width, height };
}

// ======================================================================================
// Collapsing: what the page shows when some clusters are folded into one node each.
// ======================================================================================

// The graph with every cluster in `collapsed` drawn as one node (kind "module"), keyed by
// the cluster's key; `hidden` maps each node folded away to the node that stands for it.
function collapseView(graph, collapsed) {
  const tree = new ClusterTree(graph.clusters || []);
  const targetOf = new Array(tree.keys.length).fill(-1); // outermost collapsed holder
  for (let c = 0; c < tree.keys.length; c++) {
    for (const member of tree.chain[c]) {
      if (collapsed.has(tree.keys[member])) {
        targetOf[c] = member;
        break;
      }
    }
  }
  const hidden = new Map();
  const summary = new Map();
  const nodes = [];
  for (const node of graph.nodes) {
    const c = tree.resolve(node.module);
    const target = c >= 0 ? targetOf[c] : -1;
    if (target < 0) {
      nodes.push(node);
      continue;
    }
    const key = tree.keys[target];
    hidden.set(node.key, key);
    if (!summary.has(key)) {
      const parent = tree.parent[target];
      const made = {
        key, label: tree.labels[target], kind: "module", op: tree.labels[target],
        shapes: [], dtypes: [], module: parent >= 0 ? tree.keys[parent] : "",
        order: node.order, grad: null, attrs: [], collapsed: true, last: -Infinity,
      };
      summary.set(key, made);
      nodes.push(made);
    }
  }
  const byKey = new Map(graph.nodes.map((node) => [node.key, node]));
  const edges = [];
  const seen = new Set();
  for (const edge of graph.edges) {
    const src = hidden.get(edge.src) || edge.src;
    const dst = hidden.get(edge.dst) || edge.dst;
    if (src === dst) continue;
    // a collapsed module shows what its last node that feeds the outside produced
    const made = summary.get(src);
    const inner = byKey.get(edge.src);
    if (made && inner && inner.order > made.last) {
      made.last = inner.order;
      made.shapes = inner.shapes || [];
      made.dtypes = inner.dtypes || [];
    }
    const id = src + "\u0000" + dst;
    if (seen.has(id)) continue;
    seen.add(id);
    edges.push({ src, dst, label: edge.label || "" });
  }
  const clusters = (graph.clusters || []).filter((cluster) => {
    const c = tree.index.get(cluster.key);
    return c === undefined || targetOf[c] < 0;
  });
  return { nodes, edges, clusters, hidden };
}

// ======================================================================================
// Colours: the same rules as torchscope/render/svg.py (node_style, grad_fill).
// ======================================================================================

function gradFill(norm) {
  if (norm === null || norm === undefined || !(norm > 0) || !isFinite(norm)) {
    return "hsl(120, 50%, 70%)";
  }
  const [low, high] = GRAD_LOG_RANGE;
  const t = Math.min(1, Math.max(0, (Math.log10(norm) - low) / (high - low)));
  return "hsl(120, 50%, " + Math.round(92 - 42 * t) + "%)";
}

function nodeStyle(node) {
  let fill = PALETTE.fill[node.kind] || "#ffffff";
  let stroke = PALETTE.stroke[node.kind] || "#888888";
  let dashed = false;
  if (node.grad && (node.kind === "parameter" || node.kind === "op")) {
    if (node.grad.status === "ok") {
      fill = gradFill(node.grad.norm);
    } else {
      fill = PALETTE.grad[node.grad.status] || fill;
      dashed = node.grad.status === "none";
    }
  }
  if (node.key === GRAPH.grad_origin) stroke = PALETTE.other.origin;
  return { fill, stroke, dashed };
}

function describe(node) {
  const lines = [node.key];
  if (node.collapsed) lines.push("collapsed module: click to expand");
  if (node.op && node.op !== node.label) lines.push("op: " + node.op);
  if (node.module) lines.push("module: " + node.module);
  (node.shapes || []).forEach((shape, k) => {
    const dtype = (node.dtypes || [])[k] || "";
    lines.push(("[" + shape.join(", ") + "] " + dtype).trim());
  });
  if (node.grad) {
    const norm = node.grad.norm === null ? "-" : Number(node.grad.norm).toPrecision(3);
    lines.push("grad: " + node.grad.status + ", norm " + norm);
  }
  for (const [name, value] of node.attrs || []) lines.push(name + ": " + value);
  return lines.join("\n");
}

// ======================================================================================
// The page: a canvas drawn from the current layout, pan, zoom, click, search.
// ======================================================================================

function startPage() {
  const viewElement = document.getElementById("view");
  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d");
  const tooltip = document.getElementById("tooltip");
  const search = document.getElementById("search");
  const matchesText = document.getElementById("matches");
  const shownText = document.getElementById("shown");
  const details = document.getElementById("details");

  const fullTree = new ClusterTree(GRAPH.clusters || []);
  const collapsed = new Set();
  function initialCollapsed() {
    collapsed.clear();
    if (INITIAL_DEPTH === null) return;
    // like view(graph, depth=...): modules at that nesting level (1: the model's children)
    // and below start collapsed; expanding one shows its children collapsed
    // a fold cluster ("Block ×6") is no nesting level: the modules inside it are counted
    const isFold = (c) => /×\d+$/.test(fullTree.labels[c]);
    fullTree.keys.forEach((key, c) => {
      const level = fullTree.chain[c].filter((at) => !isFold(at)).length;
      if (!isFold(c) && level >= INITIAL_DEPTH) collapsed.add(key);
    });
  }

  let shown = null; // {graph, layout, nodeByKey, clusterOrder, edgeBoxes}
  const camera = { scale: 1, x: 0, y: 0 };
  let matches = [];
  let matchIndex = -1;
  let highlighted = new Set();
  let selected = null;

  function relayout() {
    const graph = collapseView(GRAPH, collapsed);
    const layout = layeredLayout(graph);
    const nodeByKey = new Map(graph.nodes.map((node) => [node.key, node]));
    const depthOf = new ClusterTree(graph.clusters);
    // outer clusters first, so that inner ones are drawn on top of them
    const clusterOrder = [...layout.clusters.keys()].sort(
      (a, b) => depthOf.depth[depthOf.index.get(a)] - depthOf.depth[depthOf.index.get(b)]
    );
    const clusterLabel = new Map(graph.clusters.map((c) => [c.key, c.label]));
    const edgeBoxes = layout.edges.map((edge) => {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const [px, py] of edge.points) {
        x0 = Math.min(x0, px); y0 = Math.min(y0, py); x1 = Math.max(x1, px); y1 = Math.max(y1, py);
      }
      return [x0, y0, x1, y1];
    });
    shown = { graph, layout, nodeByKey, clusterOrder, clusterLabel, depthOf, edgeBoxes };
    const folded = graph.nodes.filter((node) => node.collapsed).length;
    shownText.textContent =
      "showing " + graph.nodes.length.toLocaleString() + " nodes" +
      (folded ? ", " + folded + (folded === 1 ? " module" : " modules") + " collapsed" : "");
    runSearch(false);
  }

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.floor(viewElement.clientWidth * ratio));
    canvas.height = Math.max(1, Math.floor(viewElement.clientHeight * ratio));
    canvas.style.width = viewElement.clientWidth + "px";
    canvas.style.height = viewElement.clientHeight + "px";
    draw();
  }

  function fit(all) {
    const w = viewElement.clientWidth, h = viewElement.clientHeight;
    const layout = shown.layout;
    let scale = Math.min(w / layout.width, h / layout.height, 1.5);
    // a very tall graph fitted whole is unreadable: fit its width and start at the top
    if (!all && scale < 0.3) scale = Math.min(1, Math.max(0.3, w / layout.width));
    camera.scale = scale;
    camera.x = (w - layout.width * scale) / 2;
    camera.y = layout.height * scale < h ? (h - layout.height * scale) / 2 : 0;
    draw();
  }

  function toWorld(px, py) {
    return [(px - camera.x) / camera.scale, (py - camera.y) / camera.scale];
  }

  function roundRect(x, y, w, h, r) {
    context.beginPath();
    context.moveTo(x + r, y);
    context.arcTo(x + w, y, x + w, y + h, r);
    context.arcTo(x + w, y + h, x, y + h, r);
    context.arcTo(x, y + h, x, y, r);
    context.arcTo(x, y, x + w, y, r);
    context.closePath();
  }

  function draw() {
    if (!shown) return;
    const ratio = window.devicePixelRatio || 1;
    const { layout, nodeByKey } = shown;
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    const s = camera.scale;
    context.setTransform(ratio * s, 0, 0, ratio * s, ratio * camera.x, ratio * camera.y);
    const [vx0, vy0] = toWorld(0, 0);
    const [vx1, vy1] = toWorld(viewElement.clientWidth, viewElement.clientHeight);
    const visible = (x0, y0, x1, y1) => x1 >= vx0 && x0 <= vx1 && y1 >= vy0 && y0 <= vy1;
    const hair = 1 / s; // one screen pixel
    const showText = s * 12 >= 6;

    for (const key of shown.clusterOrder) {
      const box = layout.clusters.get(key);
      if (!visible(box.x, box.y, box.x + box.width, box.y + box.height)) continue;
      const label = shown.clusterLabel.get(key) || key;
      roundRect(box.x, box.y, box.width, box.height, 8);
      context.fillStyle = /×\d+$/.test(label) ? PALETTE.other.cluster_fold_fill : PALETTE.other.cluster_fill;
      context.globalAlpha = 0.6;
      context.fill();
      context.globalAlpha = 1;
      context.lineWidth = hair;
      context.strokeStyle = PALETTE.other.cluster_stroke;
      context.stroke();
      if (s * 11 >= 6) {
        context.fillStyle = PALETTE.other.muted;
        context.font = "11px Helvetica, Arial, sans-serif";
        context.textAlign = "left";
        context.fillText(label, box.x + 8, box.y + 14);
      }
    }

    context.strokeStyle = PALETTE.other.edge;
    context.fillStyle = PALETTE.other.edge;
    context.lineWidth = Math.max(1, hair);
    for (const dashed of [false, true]) {
      context.setLineDash(dashed ? [5, 3] : []);
      context.beginPath();
      layout.edges.forEach((edge, k) => {
        if (edge.reversed !== dashed) return;
        const [x0, y0, x1, y1] = shown.edgeBoxes[k];
        if (!visible(x0, y0, x1, y1)) return;
        edge.points.forEach(([px, py], j) => (j ? context.lineTo(px, py) : context.moveTo(px, py)));
      });
      context.stroke();
    }
    context.setLineDash([]);
    if (s > 0.25) {
      context.beginPath();
      layout.edges.forEach((edge, k) => {
        const [x0, y0, x1, y1] = shown.edgeBoxes[k];
        if (!visible(x0, y0, x1, y1) || edge.points.length < 2) return;
        const [ax, ay] = edge.points[edge.points.length - 2];
        const [bx, by] = edge.points[edge.points.length - 1];
        const angle = Math.atan2(by - ay, bx - ax);
        context.moveTo(bx, by);
        context.lineTo(bx - 8 * Math.cos(angle - 0.4), by - 8 * Math.sin(angle - 0.4));
        context.lineTo(bx - 8 * Math.cos(angle + 0.4), by - 8 * Math.sin(angle + 0.4));
        context.closePath();
      });
      context.fill();
    }

    for (const [key, box] of layout.nodes) {
      if (!visible(box.x, box.y, box.x + box.width, box.y + box.height)) continue;
      const node = nodeByKey.get(key);
      const style = nodeStyle(node);
      roundRect(box.x, box.y, box.width, box.height, 6);
      context.fillStyle = style.fill;
      context.fill();
      context.setLineDash(style.dashed ? [4, 3] : []);
      context.lineWidth = key === GRAPH.grad_origin ? 3 : Math.max(1, hair);
      context.strokeStyle = style.stroke;
      context.stroke();
      context.setLineDash([]);
      if (highlighted.has(key) || key === selected) {
        roundRect(box.x - 3, box.y - 3, box.width + 6, box.height + 6, 8);
        context.lineWidth = Math.max(3, 3 * hair);
        context.strokeStyle = key === selected ? "#1565c0" : "#ff9800";
        context.stroke();
      }
      if (showText) {
        const [label, shapes] = nodeLines(node);
        const middle = box.x + box.width / 2;
        context.textAlign = "center";
        context.fillStyle = PALETTE.other.text;
        context.font = "12px Helvetica, Arial, sans-serif";
        context.fillText(label, middle, box.y + (shapes ? 14 : G.NODE_HEIGHT / 2 + 4));
        if (shapes) {
          context.fillStyle = PALETTE.other.muted;
          context.font = "10px monospace";
          context.fillText(shapes, middle, box.y + 28);
        }
      }
    }
  }

  // what is under a point: a node, else the innermost cluster holding it
  function hit(px, py) {
    const [x, y] = toWorld(px, py);
    for (const [key, box] of shown.layout.nodes) {
      if (x >= box.x && x <= box.x + box.width && y >= box.y && y <= box.y + box.height) {
        return { node: shown.nodeByKey.get(key) };
      }
    }
    let best = null;
    let bestDepth = -1;
    for (const [key, box] of shown.layout.clusters) {
      if (x >= box.x && x <= box.x + box.width && y >= box.y && y <= box.y + box.height) {
        const depth = shown.depthOf.depth[shown.depthOf.index.get(key)];
        if (depth > bestDepth) {
          best = key;
          bestDepth = depth;
        }
      }
    }
    return best === null ? null : { cluster: best };
  }

  // re-lay out, keeping `key` (a node or cluster) where it was on the screen
  function toggle(key, collapse) {
    const before = shown.layout.nodes.get(key) || shown.layout.clusters.get(key);
    const screen = before ? [before.x * camera.scale + camera.x, before.y * camera.scale + camera.y] : null;
    if (collapse) collapsed.add(key);
    else collapsed.delete(key);
    relayout();
    const after = shown.layout.nodes.get(key) || shown.layout.clusters.get(key);
    if (screen && after) {
      camera.x = screen[0] - after.x * camera.scale;
      camera.y = screen[1] - after.y * camera.scale;
    }
    draw();
  }

  function centreOn(key) {
    const box = shown.layout.nodes.get(key);
    if (!box) return;
    if (camera.scale < 0.6) camera.scale = 0.8;
    camera.x = viewElement.clientWidth / 2 - (box.x + box.width / 2) * camera.scale;
    camera.y = viewElement.clientHeight / 2 - (box.y + box.height / 2) * camera.scale;
  }

  function runSearch(move) {
    const text = search.value.trim().toLowerCase();
    highlighted = new Set();
    matches = [];
    if (text) {
      for (const node of GRAPH.nodes) {
        if ((node.label || "").toLowerCase().includes(text) || node.key.toLowerCase().includes(text)) {
          // a match inside a collapsed module lights up the module
          const key = shown.graph.hidden.get(node.key) || node.key;
          if (!highlighted.has(key)) {
            highlighted.add(key);
            matches.push(key);
          }
        }
      }
    }
    matchesText.textContent = text ? matches.length + (matches.length === 1 ? " match" : " matches") : "";
    if (move && matches.length) {
      matchIndex = 0;
      centreOn(matches[0]);
    }
    draw();
  }

  function select(node) {
    selected = node ? node.key : null;
    details.textContent = node ? describe(node) : "Click a node.";
  }

  let drag = null;
  viewElement.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, cx: camera.x, cy: camera.y, moved: false };
    viewElement.classList.add("dragging");
  });
  window.addEventListener("mousemove", (event) => {
    if (drag) {
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      camera.x = drag.cx + dx;
      camera.y = drag.cy + dy;
      tooltip.hidden = true;
      draw();
      return;
    }
    const rect = viewElement.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    if (!shown || px < 0 || py < 0 || px > rect.width || py > rect.height) {
      tooltip.hidden = true;
      return;
    }
    const found = hit(px, py);
    if (found && found.node) {
      tooltip.textContent = describe(found.node);
      tooltip.style.left = Math.min(px + 14, rect.width - 200) + "px";
      tooltip.style.top = py + 14 + "px";
      tooltip.hidden = false;
    } else {
      tooltip.hidden = true;
    }
  });
  window.addEventListener("mouseup", (event) => {
    if (!drag) return;
    const moved = drag.moved;
    drag = null;
    viewElement.classList.remove("dragging");
    if (moved) return;
    const rect = viewElement.getBoundingClientRect();
    const found = hit(event.clientX - rect.left, event.clientY - rect.top);
    if (!found) {
      select(null);
      draw();
    } else if (found.node && found.node.collapsed) {
      toggle(found.node.key, false);
    } else if (found.node) {
      select(found.node);
      draw();
    } else {
      toggle(found.cluster, true);
    }
  });
  viewElement.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = viewElement.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    const factor = Math.exp(-event.deltaY * (event.deltaMode === 1 ? 0.05 : 0.0015));
    const scale = Math.min(4, Math.max(0.01, camera.scale * factor));
    camera.x = px - ((px - camera.x) * scale) / camera.scale;
    camera.y = py - ((py - camera.y) * scale) / camera.scale;
    camera.scale = scale;
    draw();
  }, { passive: false });
  search.addEventListener("input", () => runSearch(true));
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && matches.length) {
      matchIndex = (matchIndex + 1) % matches.length;
      centreOn(matches[matchIndex]);
      draw();
    }
  });
  document.getElementById("fit").addEventListener("click", () => fit(true));
  document.getElementById("expand").addEventListener("click", () => {
    collapsed.clear();
    relayout();
    fit(false);
  });
  document.getElementById("reset").addEventListener("click", () => {
    initialCollapsed();
    relayout();
    fit(false);
  });
  window.addEventListener("resize", resize);

  initialCollapsed();
  relayout();
  resize();
  fit(false);
}

if (typeof document !== "undefined") {
  startPage();
}
// lets the tests run the layout under Node.js; browsers have no `module`
if (typeof module !== "undefined" && module.exports) {
  module.exports = { GRAPH, INITIAL_DEPTH, layeredLayout, collapseView, nodeLines };
}
"""
