"""Every torchvision classification model: autograd graph captured and drawn to SVG.

The target of docs/graphs.md: each renders to SVG in under 10 seconds, densenet121 included
(whose autograd graph Graphviz alone lays out in ~25 minutes). Models are built on the
``meta`` device where torchvision allows it (no weights are made, so even vit_h_14 is quick);
the few that compute on their weights at construction (regnet) are built on the CPU.

Run: ``.venv/bin/python benchmarks/bench_graph_zoo.py [--only NAME,...] [--out DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

import torchscope
from benchmarks._common import table

#: The bar every model must meet (seconds from captured graph to SVG file).
RENDER_TARGET_S = 10.0


def _build(name: str) -> tuple[torch.nn.Module, torch.device]:
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name), torch.device("meta")
    except (NotImplementedError, RuntimeError):  # reads its own weights while it is built
        return torchvision.models.get_model(name), torch.device("cpu")


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--out", help="folder for the SVG files (default: a temporary one)")
    args, _ = parser.parse_known_args(argv)
    names = torchvision.models.list_models(module=torchvision.models)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    out = Path(args.out or tempfile.mkdtemp(prefix="torchscope-graph-zoo-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    worst = ("", 0.0)
    failures = []
    for name in names:
        model, device = _build(name)
        size = 299 if name == "inception_v3" else 224
        x = torch.empty(1, 3, size, size, device=device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                graph = torchscope.autograd_graph_of(model, x)
                captured = time.perf_counter() - start
                start = time.perf_counter()
                graph.render(out / f"{name}.svg")
                rendered = time.perf_counter() - start
        except Exception as e:  # report and go on: the table says which failed
            failures.append(name)
            rows.append([name, device.type, "-", "-", "-", f"{type(e).__name__}: {str(e)[:60]}"])
            continue
        if rendered > worst[1]:
            worst = (name, rendered)
        status = "ok" if rendered < RENDER_TARGET_S else "SLOW"
        rows.append(
            [name, device.type, len(graph.nodes), f"{captured:.2f}", f"{rendered:.2f}", status]
        )
        del model, graph
    print(table(["model", "built on", "nodes", "capture s", "render svg s", "status"], rows))
    print(
        f"\n{len(rows) - len(failures)}/{len(rows)} models drawn; slowest render: "
        f"{worst[0]} {worst[1]:.2f} s (target < {RENDER_TARGET_S:.0f} s); SVGs in {out}"
    )
    return {
        "torchvision models drawn to SVG": f"{len(rows) - len(failures)}/{len(rows)}",
        "slowest SVG render (s)": f"{worst[1]:.2f} ({worst[0]})",
    }


if __name__ == "__main__":
    main()
