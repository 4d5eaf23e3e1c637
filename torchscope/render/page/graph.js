// torchscope's graph page: drawing and interaction only. Every position comes from
// torchscope/render/layout.py, computed in Python and embedded as LAYOUTS (one layout per
// collapse depth the page starts from or expands to); this script never lays out.
// The page sets GRAPH, INITIAL_DEPTH, PALETTE, GRAD_LOG_RANGE, NODE_HEIGHT and LAYOUTS
// before this script.

// ======================================================================================
// The cluster tree of GRAPH: parents, nesting depth, the chain of holders of each cluster.
// ======================================================================================

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
  }

  // the innermost cluster holding a node of `module`, -1 for none
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
}

const TREE = new ClusterTree(GRAPH.clusters || []);
const NODE_BY_KEY = new Map(GRAPH.nodes.map((node) => [node.key, node]));

// a fold cluster ("Block ×6") is no nesting level: the modules inside it are counted
function isFold(c) {
  return /×\d+$/.test(TREE.labels[c]);
}

// the clusters view(graph, depth=depth) collapses: modules at that nesting level (1: the
// model's children) and below, so that expanding one shows its children collapsed
function collapsedAt(depth) {
  const set = new Set();
  if (depth === null) return set;
  TREE.keys.forEach((key, c) => {
    const level = TREE.chain[c].filter((at) => !isFold(at)).length;
    if (!isFold(c) && level >= depth) set.add(key);
  });
  return set;
}

// one embedded layout, unpacked: boxes by key, edges as lists of points
function unpack(layout) {
  const nodes = new Map();
  for (const [key, x, y, width, height, label, shapes] of layout.nodes) {
    nodes.set(key, { x, y, width, height, label, shapes });
  }
  const clusters = new Map();
  for (const [key, x, y, width, height] of layout.clusters) {
    clusters.set(key, { x, y, width, height });
  }
  const edges = layout.edges.map(([src, dst, reversed, flat]) => {
    const points = [];
    for (let k = 0; k + 1 < flat.length; k += 2) points.push([flat[k], flat[k + 1]]);
    return { src, dst, reversed: reversed === 1, points };
  });
  const modules = new Map(layout.modules.map((node) => [node.key, node]));
  return {
    depth: layout.depth, collapsed: collapsedAt(layout.depth), nodes, clusters, edges, modules,
    width: layout.width, height: layout.height,
  };
}

const STATES = LAYOUTS.map(unpack);

// ======================================================================================
// What the page shows for a set of collapsed clusters, from the precomputed layouts.
// ======================================================================================

// The base is the embedded layout whose collapsed clusters are the most of `collapsed`
// (the all-expanded one collapses none, so there always is one). Every other cluster in
// `collapsed` that has a box there is drawn as one node in place of its box: no layout.
function compose(collapsed) {
  let base = STATES[0];
  for (const state of STATES) {
    if (state.collapsed.size > base.collapsed.size &&
        [...state.collapsed].every((key) => collapsed.has(key))) {
      base = state;
    }
  }
  // the outermost collapsed cluster with a box in the base that holds cluster `c`
  const cover = (c) => {
    if (c < 0) return null;
    for (const at of TREE.chain[c]) {
      const key = TREE.keys[at];
      if (collapsed.has(key) && base.clusters.has(key)) return key;
    }
    return null;
  };
  const nodes = new Map();
  const clusters = new Map();
  const hidden = new Map(); // key drawn in the base -> the collapsed box that hides it
  for (const [key, box] of base.clusters) {
    const c = TREE.index.get(key);
    const outer = c === undefined ? null : cover(c);
    if (outer === null) {
      clusters.set(key, Object.assign({ label: c === undefined ? key : TREE.labels[c] }, box));
    } else if (outer === key) {
      const parent = TREE.parent[c];
      const node = {
        key, label: TREE.labels[c], kind: "module", op: TREE.labels[c], shapes: [], dtypes: [],
        module: parent >= 0 ? TREE.keys[parent] : "", grad: null, attrs: [], collapsed: true,
      };
      nodes.set(key, Object.assign({ node }, box, { label: TREE.labels[c], shapes: "" }));
    }
  }
  for (const [key, box] of base.nodes) {
    const module = base.modules.get(key);
    const node = module ? Object.assign({ collapsed: true }, module) : NODE_BY_KEY.get(key);
    const outer = cover(TREE.resolve(node.module));
    if (outer === null) nodes.set(key, Object.assign({ node }, box));
    else hidden.set(key, outer);
  }
  const edges = [];
  for (const edge of base.edges) {
    const src = hidden.get(edge.src) || edge.src;
    const dst = hidden.get(edge.dst) || edge.dst;
    if (src === dst) continue;
    let points = edge.points;
    if (src !== edge.src) points = leave(points, nodes.get(src));
    if (dst !== edge.dst) points = leave(points.slice().reverse(), nodes.get(dst)).reverse();
    edges.push({ src, dst, reversed: edge.reversed, points, bounds: bounds(points) });
  }
  // what each node of the graph is drawn as: itself, or the collapsed module holding it
  const shownAs = new Map();
  for (const node of GRAPH.nodes) {
    if (nodes.has(node.key)) {
      shownAs.set(node.key, node.key);
      continue;
    }
    const c = TREE.resolve(node.module);
    if (c < 0) continue;
    for (const at of TREE.chain[c]) {
      if (nodes.has(TREE.keys[at])) {
        shownAs.set(node.key, TREE.keys[at]);
        break;
      }
    }
  }
  // outer clusters first, so that inner ones are drawn on top of them
  const clusterOrder = [...clusters.keys()].sort((a, b) => depthOf(a) - depthOf(b));
  const folded = [...nodes.values()].filter((item) => item.node.collapsed).length;
  return { nodes, clusters, edges, shownAs, clusterOrder, folded, width: base.width, height: base.height };
}

function depthOf(key) {
  const c = TREE.index.get(key);
  return c === undefined ? 0 : TREE.depth[c];
}

// `points` with the start moved onto the border of `box`: an edge that began inside a
// module collapsed in place now leaves from its box
function leave(points, box) {
  const inside = ([x, y]) => x > box.x && x < box.x + box.width && y > box.y && y < box.y + box.height;
  let k = 0;
  while (k < points.length && inside(points[k])) k++;
  if (k === points.length) {
    return [[box.x + box.width / 2, box.y + box.height], points[points.length - 1]];
  }
  const [x, y] = points[k];
  const edgeY = y >= box.y + box.height ? box.y + box.height : box.y;
  const start = [Math.min(Math.max(x, box.x), box.x + box.width), edgeY];
  return [start, ...points.slice(k)];
}

function bounds(points) {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const [px, py] of points) {
    x0 = Math.min(x0, px); y0 = Math.min(y0, py); x1 = Math.max(x1, px); y1 = Math.max(y1, py);
  }
  return [x0, y0, x1, y1];
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

  let collapsed = collapsedAt(INITIAL_DEPTH);
  let shown = null; // what compose() returned for `collapsed`
  const camera = { scale: 1, x: 0, y: 0 };
  let matches = [];
  let matchIndex = -1;
  let highlighted = new Set();
  let selected = null;

  function show() {
    shown = compose(collapsed);
    const folded = shown.folded;
    shownText.textContent =
      "showing " + shown.nodes.size.toLocaleString() + " nodes" +
      (folded ? ", " + folded + (folded === 1 ? " module" : " modules") + " collapsed" : "");
    // the page's state, for tests and for anyone inspecting the page
    viewElement.dataset.nodes = String(shown.nodes.size);
    viewElement.dataset.edges = String(shown.edges.length);
    viewElement.dataset.clusters = String(shown.clusters.size);
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
    let scale = Math.min(w / shown.width, h / shown.height, 1.5);
    // a very tall graph fitted whole is unreadable: fit its width and start at the top
    if (!all && scale < 0.3) scale = Math.min(1, Math.max(0.3, w / shown.width));
    camera.scale = scale;
    camera.x = (w - shown.width * scale) / 2;
    camera.y = shown.height * scale < h ? (h - shown.height * scale) / 2 : 0;
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
      const box = shown.clusters.get(key);
      if (!visible(box.x, box.y, box.x + box.width, box.y + box.height)) continue;
      roundRect(box.x, box.y, box.width, box.height, 8);
      context.fillStyle = /×\d+$/.test(box.label) ? PALETTE.other.cluster_fold_fill : PALETTE.other.cluster_fill;
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
        context.fillText(box.label, box.x + 8, box.y + 14);
      }
    }

    context.strokeStyle = PALETTE.other.edge;
    context.fillStyle = PALETTE.other.edge;
    context.lineWidth = Math.max(1, hair);
    for (const dashed of [false, true]) {
      context.setLineDash(dashed ? [5, 3] : []);
      context.beginPath();
      for (const edge of shown.edges) {
        if (edge.reversed !== dashed || !visible(...edge.bounds)) continue;
        edge.points.forEach(([px, py], j) => (j ? context.lineTo(px, py) : context.moveTo(px, py)));
      }
      context.stroke();
    }
    context.setLineDash([]);
    if (s > 0.25) {
      context.beginPath();
      for (const edge of shown.edges) {
        if (!visible(...edge.bounds) || edge.points.length < 2) continue;
        const [ax, ay] = edge.points[edge.points.length - 2];
        const [bx, by] = edge.points[edge.points.length - 1];
        const angle = Math.atan2(by - ay, bx - ax);
        context.moveTo(bx, by);
        context.lineTo(bx - 8 * Math.cos(angle - 0.4), by - 8 * Math.sin(angle - 0.4));
        context.lineTo(bx - 8 * Math.cos(angle + 0.4), by - 8 * Math.sin(angle + 0.4));
        context.closePath();
      }
      context.fill();
    }

    for (const [key, box] of shown.nodes) {
      if (!visible(box.x, box.y, box.x + box.width, box.y + box.height)) continue;
      const style = nodeStyle(box.node);
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
        const middle = box.x + box.width / 2;
        context.textAlign = "center";
        context.fillStyle = PALETTE.other.text;
        context.font = "12px Helvetica, Arial, sans-serif";
        const top = box.height > NODE_HEIGHT ? box.y + box.height / 2 - NODE_HEIGHT / 2 : box.y;
        context.fillText(box.label, middle, top + (box.shapes ? 14 : NODE_HEIGHT / 2 + 4));
        if (box.shapes) {
          context.fillStyle = PALETTE.other.muted;
          context.font = "10px monospace";
          context.fillText(box.shapes, middle, top + 28);
        }
      }
    }
  }

  // what is under a point: a node, else the innermost cluster holding it
  function hit(px, py) {
    const [x, y] = toWorld(px, py);
    for (const [, box] of shown.nodes) {
      if (x >= box.x && x <= box.x + box.width && y >= box.y && y <= box.y + box.height) {
        return { node: box.node };
      }
    }
    let best = null;
    let bestDepth = -1;
    for (const [key, box] of shown.clusters) {
      if (x >= box.x && x <= box.x + box.width && y >= box.y && y <= box.y + box.height) {
        if (depthOf(key) > bestDepth) {
          best = key;
          bestDepth = depthOf(key);
        }
      }
    }
    return best === null ? null : { cluster: best };
  }

  // show another collapse state, keeping `key` (a node or cluster) where it was on screen
  function toggle(key, collapse) {
    const before = shown.nodes.get(key) || shown.clusters.get(key);
    const screen = before ? [before.x * camera.scale + camera.x, before.y * camera.scale + camera.y] : null;
    if (collapse) collapsed.add(key);
    else collapsed.delete(key);
    show();
    const after = shown.nodes.get(key) || shown.clusters.get(key);
    if (screen && after) {
      camera.x = screen[0] - after.x * camera.scale;
      camera.y = screen[1] - after.y * camera.scale;
    }
    draw();
  }

  function centreOn(key) {
    const box = shown.nodes.get(key);
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
          const key = shown.shownAs.get(node.key);
          if (key !== undefined && !highlighted.has(key)) {
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
    collapsed = new Set();
    show();
    fit(false);
  });
  document.getElementById("reset").addEventListener("click", () => {
    collapsed = collapsedAt(INITIAL_DEPTH);
    show();
    fit(false);
  });
  window.addEventListener("resize", resize);

  show();
  resize();
  fit(false);
}

if (typeof document !== "undefined") {
  startPage();
}
// lets the tests run the script under Node.js; browsers have no `module`
if (typeof module !== "undefined" && module.exports) {
  module.exports = { GRAPH, INITIAL_DEPTH, LAYOUTS, compose, collapsedAt };
}
