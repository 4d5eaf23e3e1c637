"""What capturing an autograd graph costs per node, against a bare walk of the same graph, from
1k to 400k nodes; and the time to draw densenet121's autograd graph as an SVG.

Run: ``python benchmarks/bench_graph_capture.py`` (``--quick``: up to 100k nodes);
``python benchmarks/bench_graph.py`` prints this section first.

The graph: ``x = x * a + b`` repeated (two autograd nodes a step; ``a``, ``b`` parameters of
4 elements), summed. The bare walk follows ``next_functions`` iteratively with a ``seen`` set
and does nothing else: the least any capture must do. Capture is
``torchscope.autograd_graph(loss)``: the walk, and every node's name, sequence number, inputs
and output shapes, which are all that can be read only while the graph lives. The records
(forward order, keys, ``GraphNode`` and ``GraphEdge``, the folds of repeated steps) are
built from those when the graph is first read: timed apart, as "records". Walk and capture
are timed in alternating rounds (the minimum of the rounds: the machine may be shared), each
graph kept alive until its round ends, so that freeing it is not counted. It all runs in a
thread with a 512 MB stack: PyTorch 2.14 frees walked graphs recursively, and a 100k-node
chain overflows 8 MB.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import table

SIZES = (1_000, 10_000, 100_000, 400_000)


def chain(nodes: int) -> torch.Tensor:
    """A loss behind an autograd graph of about ``nodes`` nodes."""
    a = nn.Parameter(torch.randn(4))
    b = nn.Parameter(torch.randn(4))
    x = torch.randn(4)
    for _ in range(max(1, nodes // 2)):
        x = x * a + b
    return x.sum()


def bare_walk(root: Any) -> int:
    """Every node behind ``root``, iteratively: the floor of any capture."""
    seen = {root}
    stack = [root]
    count = 0
    while stack:
        node = stack.pop()
        count += 1
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                stack.append(child)
    return count


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def capture_rows(sizes: tuple[int, ...]) -> tuple[list[list[str]], dict[str, float]]:
    rows = []
    ratios: dict[str, float] = {}
    for size in sizes:
        loss = chain(size)
        rounds = 5 if size <= 10_000 else 3 if size <= 100_000 else 2
        walk_s, capture_s, records_s = [], [], []
        nodes = 0
        len(torchscope.autograd_graph(loss))  # warm-up, records included
        for _ in range(rounds):
            seconds, nodes = _timed(bare_walk, loss.grad_fn)
            walk_s.append(seconds)
            seconds, graph = _timed(torchscope.autograd_graph, loss)
            capture_s.append(seconds)
            seconds, _ = _timed(getattr, graph, "nodes")  # the records, built on first read
            records_s.append(seconds)
            del graph
            gc.collect()
        walk, capture, records = min(walk_s), min(capture_s), min(records_s)
        ratios[f"{nodes} nodes"] = capture / walk
        rows.append(
            [
                f"{nodes:,}",
                f"{walk / nodes * 1e6:.2f}",
                f"{capture / nodes * 1e6:.2f}",
                f"{capture / walk:.1f}x",
                f"{records / nodes * 1e6:.2f}",
                f"{capture:.3f}",
            ]
        )
        del loss
        gc.collect()
    return rows, ratios


def _with_a_large_stack(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread with a 512 MB stack. PyTorch 2.14 frees autograd nodes that
    were seen from Python recursively: a chain of 100k nodes, once walked, crashes a default
    8 MB stack when it is freed (see ``torchscope.collect.graph.autograd.DEEP_GRAPH``)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the deep-graph warning: heeded here
                box["result"] = fn(*args)
        except BaseException as error:  # re-raised in the caller's thread
            box["error"] = error

    before = threading.stack_size(1 << 29)
    try:
        worker = threading.Thread(target=target)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(before)
    if "error" in box:
        raise box["error"]
    return box["result"]


def densenet_svg(path: Path) -> tuple[float, float, int]:
    """Seconds to capture densenet121's autograd graph and to draw it as an SVG."""
    model = torchvision.models.densenet121().eval()
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchscope.autograd_graph_of(model, x).render(path)  # warm-up
        captures, renders = [], []
        for _ in range(3):
            seconds, graph = _timed(torchscope.autograd_graph_of, model, x)
            captures.append(seconds)
            seconds, _ = _timed(graph.render, path)
            renders.append(seconds)
    return min(captures), min(renders), len(graph.nodes)


def run(quick: bool) -> dict[str, str]:
    sizes = tuple(s for s in SIZES if not quick or s <= 100_000)
    print(
        f"## Autograd graph capture against a bare walk (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; minimum of alternating rounds)\n"
    )
    rows, ratios = _with_a_large_stack(capture_rows, sizes)
    print(
        table(
            [
                "nodes",
                "bare walk µs/node",
                "capture µs/node",
                "capture / walk",
                "records µs/node (first read)",
                "capture s",
            ],
            rows,
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        capture, render, nodes = densenet_svg(Path(folder) / "densenet121.svg")
    print(
        f"\ndensenet121 at 1x3x224x224, {nodes} nodes: autograd_graph_of {capture:.2f} s "
        f"(forward included), render to SVG {render:.2f} s\n"
    )
    headline = {f"graph capture / bare walk, {k}": f"{v:.1f}x" for k, v in ratios.items()}
    headline["densenet121 autograd SVG (render)"] = f"{render:.2f} s"
    return headline


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="up to 100k nodes")
    args, _ = parser.parse_known_args(argv)
    return run(args.quick)


if __name__ == "__main__":
    main()
