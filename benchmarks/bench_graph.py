"""torchscope's graphs against torchviz, torchview and TensorBoard's ``add_graph``: what each
tool captures from five models, how long capturing and drawing an SVG take, and where each
one breaks.

First, the cost of capture per node against a bare walk, 1k to 400k nodes, and densenet121's
SVG time (``benchmarks/bench_graph_capture.py``). Then the peers.

Run: ``python benchmarks/bench_graph.py`` (or ``make bench``; ``--json PATH`` also writes the
results as JSON; ``--quick`` drops the two unrolled loops; ``--models``/``--tools`` pick a
subset; ``--dot-timeout`` bounds every Graphviz call). Peers: torchviz 0.0.3 and torchview
0.2.7 when installed (``pip install 'torchscope[bench]'``), TensorBoard from the dev extra.

Models (random weights, eval mode): torchvision resnet50, vit_b_16 and densenet121 at batch 1
and 224x224; a 3,000-step multiply-add chain (``x = x * a + b`` with parameters ``a``, ``b``);
a 2,000-step ``nn.RNNCell`` loop unrolled in Python.

Tools, each on the same model and input:

- torchscope autograd: ``autograd_graph_of(model, x)``, then ``graph.render("x.svg")``
  (repeated steps folded, Graphviz ``dot`` within its budget, torchscope's own layout
  beyond); its TensorBoard column is ``graph.log_to(SummaryWriter)``.
- torchviz: ``make_dot(model(x), params=dict(model.named_parameters()))``, then ``dot -Tsvg``.
- torchscope module: ``module_graph(model, x)``, then ``render("x.svg")``; the module-level
  peer of torchview.
- torchview: ``draw_graph(model, input_data=x, depth=inf)`` (every module level, as
  ``module_graph`` shows), then ``dot -Tsvg`` on its ``visual_graph``.
- TensorBoard add_graph: ``SummaryWriter.add_graph(model, x)`` (JIT tracing) and flush; it
  draws in the browser, so it has no SVG column.

Capture time includes the forward pass every tool needs; after one untimed warm-up capture
it is the median of up to 5 runs (within 4 s; a capture slower than 5 s runs once). Render
time is one run from the captured graph to the SVG file on disk. Every tool and model runs
in its own subprocess, and every ``dot`` call with a timeout, so a layout that would take
25 minutes shows as "timeout" and the bench keeps going. The machine may be shared: a worker
whose plain forward ran over twice as slow as the model's other workers runs again, and is
flagged "machine busy" if it stays slow. Nodes: how many the tool's graph holds;
drawn: the nodes and edges in the DOT it lays out (Graphviz's ``gvpr`` counts them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks import bench_graph_capture
from benchmarks._common import quietly, table

#: Seconds a capture may take (per run) and a whole worker may spend beyond its dot calls.
CAPTURE_BUDGET_S = 240.0
#: Seconds each peer's ``dot`` layout may take: enough for every layout that finishes at all
#: here (torchview's densenet121: ~35 s on 2 busy cores), short enough that the two that do
#: not (torchviz's densenet121, torchview's 2,000-step RNN) keep the bench under 10 minutes.
DOT_TIMEOUT_S = 90.0
#: Capture runs per tool and model after one untimed warm-up (imports, first-call caches):
#: up to this many while their total stays under the budget; a warm-up slower than
#: CAPTURE_SLOW_S is the only run (one-time costs are noise next to it).
CAPTURE_REPEAT = 5
CAPTURE_REPEAT_WITHIN_S = 4.0
CAPTURE_SLOW_S = 5.0


# -- models --------------------------------------------------------------------------------------


class MulAddChain(nn.Module):
    """``x = x * a + b``, ``steps`` times: 2 autograd nodes a step, deep enough to break
    recursive graph walkers."""

    def __init__(self, steps: int = 3000, width: int = 16) -> None:
        super().__init__()
        self.steps = steps
        self.a = nn.Parameter(torch.full((width,), 0.999))
        self.b = nn.Parameter(torch.full((width,), 0.001))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = x * self.a + self.b
        return x


class UnrolledRNN(nn.Module):
    """One ``nn.RNNCell`` applied to every step of a sequence in a Python loop."""

    def __init__(self, input_size: int = 16, hidden_size: int = 32) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.RNNCell(input_size, hidden_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        h = sequence.new_zeros(sequence.shape[1], self.hidden_size)
        for x in sequence:
            h = self.cell(x, h)
        return h


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)

    return build


@dataclass(frozen=True)
class BenchModel:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    quick: bool = True  # part of --quick


MODELS = {
    m.name: m
    for m in (
        BenchModel("resnet50", _torchvision("resnet50"), (1, 3, 224, 224)),
        BenchModel("vit_b_16", _torchvision("vit_b_16"), (1, 3, 224, 224)),
        BenchModel("densenet121", _torchvision("densenet121"), (1, 3, 224, 224)),
        BenchModel("mul-add chain x3000", MulAddChain, (1, 16), quick=False),
        BenchModel("RNNCell loop x2000", UnrolledRNN, (2000, 1, 16), quick=False),
    )
}


# -- what a worker measures ----------------------------------------------------------------------


@dataclass
class Result:
    """One tool on one model; times in seconds, None where not measured."""

    model: str
    tool: str
    nodes: int | None = None
    drawn_nodes: int | None = None
    drawn_edges: int | None = None
    capture_s: float | None = None  # median of the timed runs
    capture_min_s: float | None = None
    capture_max_s: float | None = None
    capture_runs: int = 0
    render_s: float | None = None
    tensorboard_s: float | None = None  # torchscope autograd only: log_to(SummaryWriter)
    forward_s: float | None = None  # a plain forward (no_grad, median of 3), for scale
    error: str | None = None  # the capture failed
    render_error: str | None = None  # the drawing failed or timed out
    notes: list[str] = field(default_factory=list)


@dataclass
class Captured:
    """What a tool captured: its own node count, the DOT it lays out, how to draw it."""

    nodes: int
    dot_source: Callable[[], str] | None
    render: Callable[[Path], object] | None


def _short(error: BaseException, limit: int = 70) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_dot(source: str, out: Path, timeout: float) -> None:
    """``dot -Tsvg`` on ``source`` into ``out``, killed after ``timeout`` seconds."""
    src = out.with_suffix(".gv")
    src.write_text(source, encoding="utf-8")
    done = subprocess.run(
        ["dot", "-Tsvg", str(src), "-o", str(out)],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace').strip()[:200]}")


def count_dot(source: str, timeout: float = 60.0) -> tuple[int, int] | None:
    """(nodes, edges) of a DOT graph by Graphviz's ``gvpr`` (no layout); None if unavailable."""
    if shutil.which("gvpr") is None:
        return None
    try:
        done = subprocess.run(
            ["gvpr", 'BEG_G { printf("%d %d\\n", nNodes($G), nEdges($G)) }'],
            input=source.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    parts = done.stdout.split()
    return (int(parts[0]), int(parts[1])) if done.returncode == 0 and len(parts) == 2 else None


# -- the tools -----------------------------------------------------------------------------------


def capture_torchscope_autograd(model: nn.Module, x: torch.Tensor, dot_timeout: float) -> Captured:
    graph = torchscope.autograd_graph_of(model, x)
    return Captured(len(graph.nodes), graph.to_dot, graph.render)


def capture_torchscope_module(model: nn.Module, x: torch.Tensor, dot_timeout: float) -> Captured:
    graph = torchscope.module_graph(model, x)
    return Captured(len(graph.nodes), graph.to_dot, graph.render)


def capture_torchviz(model: nn.Module, x: torch.Tensor, dot_timeout: float) -> Captured:
    import torchviz

    digraph = torchviz.make_dot(model(x), params=dict(model.named_parameters()))
    counted = count_dot(digraph.source)  # torchviz keeps no graph but its DOT statements
    return Captured(
        counted[0] if counted else -1,
        lambda: digraph.source,
        lambda out: run_dot(digraph.source, out, dot_timeout),
    )


def capture_torchview(model: nn.Module, x: torch.Tensor, dot_timeout: float) -> Captured:
    import torchview

    graph = torchview.draw_graph(model, input_data=x, depth=math.inf)
    return Captured(
        len(graph.node_set),
        lambda: graph.visual_graph.source,
        lambda out: run_dot(graph.visual_graph.source, out, dot_timeout),
    )


def capture_add_graph(model: nn.Module, x: torch.Tensor, dot_timeout: float) -> Captured:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    logdir = tempfile.mkdtemp(prefix="bench_graph_tb_")
    try:
        with SummaryWriter(logdir) as writer:
            writer.add_graph(model, x)
            writer.flush()
        accumulator = EventAccumulator(logdir)
        accumulator.Reload()
        nodes = len(accumulator.Graph().node)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return Captured(nodes, None, None)


@dataclass(frozen=True)
class Tool:
    name: str
    distribution: str | None  # peers: the package whose version is reported
    capture: Callable[[nn.Module, torch.Tensor, float], Captured]
    level: str  # "autograd", "module" or "trace"


TOOLS = {
    t.name: t
    for t in (
        Tool("torchscope autograd", None, capture_torchscope_autograd, "autograd"),
        Tool("torchviz", "torchviz", capture_torchviz, "autograd"),
        Tool("torchscope module", None, capture_torchscope_module, "module"),
        Tool("torchview", "torchview", capture_torchview, "module"),
        Tool("TensorBoard add_graph", "tensorboard", capture_add_graph, "trace"),
    )
}


def worker(tool_name: str, model_name: str, result_file: Path, dot_timeout: float) -> None:
    """Measure one tool on one model, appending JSON lines to ``result_file`` as it goes (so a
    worker killed while drawing still reports its capture)."""
    tool, spec = TOOLS[tool_name], MODELS[model_name]
    result = Result(model=model_name, tool=tool_name)

    def emit() -> None:
        with result_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result)) + "\n")

    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(spec.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        forwards = []
        for _ in range(4):  # the first one warms up
            start = time.perf_counter()
            model(x)
            forwards.append(time.perf_counter() - start)
        result.forward_s = statistics.median(forwards[1:])

    def timed_capture() -> tuple[float, Captured | None]:
        start = time.perf_counter()
        try:
            captured = quietly(lambda: tool.capture(model, x, dot_timeout))
        except Exception as error:  # RecursionError included
            result.error = _short(error)
            captured = None
        return time.perf_counter() - start, captured

    warmup, captured = timed_capture()
    times = [warmup]
    if captured is not None and warmup <= CAPTURE_SLOW_S:
        times = []
        while captured is not None and (
            not times or (len(times) < CAPTURE_REPEAT and sum(times) < CAPTURE_REPEAT_WITHIN_S)
        ):
            seconds, captured = timed_capture()
            times.append(seconds)
    result.capture_s = statistics.median(times)
    result.capture_min_s, result.capture_max_s = min(times), max(times)
    result.capture_runs = len(times)
    if captured is None:
        emit()
        return
    result.nodes = captured.nodes
    emit()

    workdir = Path(tempfile.mkdtemp(prefix="bench_graph_"))
    try:
        dot_source = captured.dot_source
        counted = count_dot(quietly(dot_source)) if dot_source is not None else None
        if counted is not None:
            result.drawn_nodes, result.drawn_edges = counted
        if tool_name == "torchscope autograd":
            result.tensorboard_s = _torchscope_tensorboard(model, x, workdir)
        emit()
        if captured.render is not None:
            start = time.perf_counter()
            try:
                captured.render(workdir / "graph.svg")
                result.render_s = time.perf_counter() - start
            except subprocess.TimeoutExpired:
                result.render_error = f"timeout >{dot_timeout:.0f} s"
            except Exception as error:
                result.render_error = _short(error)
            emit()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _torchscope_tensorboard(model: nn.Module, x: torch.Tensor, workdir: Path) -> float:
    """Seconds for ``autograd_graph_of(model, x).log_to(SummaryWriter)``: add_graph's peer."""
    from torch.utils.tensorboard import SummaryWriter

    start = time.perf_counter()
    with SummaryWriter(workdir / "tb") as writer:
        torchscope.autograd_graph_of(model, x).log_to(writer)
    return time.perf_counter() - start


# -- the parent: one subprocess per tool and model -----------------------------------------------


def run_worker(tool: str, model: str, dot_timeout: float) -> Result:
    """Run :func:`worker` in a fresh process (its own session, killed whole on timeout)."""
    with tempfile.TemporaryDirectory(prefix="bench_graph_run_") as tmp:
        result_file = Path(tmp) / "result.jsonl"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            tool,
            model,
            "--result-file",
            str(result_file),
            "--dot-timeout",
            str(dot_timeout),
        ]
        limit = CAPTURE_BUDGET_S + dot_timeout + 60
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # dot and the tool's children die with it
        )
        try:
            _, stderr = process.communicate(timeout=limit)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            killed = True
        lines = result_file.read_text().splitlines() if result_file.exists() else []
    if not lines:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
        why = (
            f"worker killed after {limit:.0f} s"
            if killed
            else f"worker exited {process.returncode}"
        )
        return Result(model, tool, error=why + (f": {tail[0][:80]}" if tail else ""))
    result = Result(**json.loads(lines[-1]))
    if killed:
        where = "while drawing" if result.nodes is not None else "while capturing"
        result.render_error = f"killed {where}: over {limit:.0f} s"
    elif result.nodes is not None and result.render_s is None and result.render_error is None:
        if TOOLS[tool].level != "trace":
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
            result.render_error = f"worker exited {process.returncode}" + (
                f": {tail[0][:80]}" if tail else ""
            )
    return result


def _run_and_log(tool: str, model: str, dot_timeout: float, note: str = "") -> Result:
    """:func:`run_worker`, with a progress line on stderr."""
    start = time.perf_counter()
    result = run_worker(tool, model, dot_timeout)
    print(
        f"  {model:<22} {tool:<22} {time.perf_counter() - start:6.1f} s  "
        f"{result.error or result.render_error or 'ok'}" + (f" ({note})" if note else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__, "python": platform.python_version()}
    for dist in ("torchscope", "torchvision", "torchviz", "torchview", "tensorboard"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-V"], capture_output=True, check=False)
        found["graphviz"] = done.stderr.decode().strip().removeprefix("dot - graphviz version ")
    return found


def available(tool: Tool, found: dict[str, str]) -> str | None:
    """Why a tool cannot run here, None when it can."""
    if tool.distribution is not None and found.get(tool.distribution) == "not installed":
        return "not installed (pip install 'torchscope[bench]')"
    return None


# -- output --------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:,.0f}"


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:,.2f}"


def _capture_cell(r: Result) -> str:
    """Median ms, with the range and run count when there was more than one run."""
    if r.capture_runs <= 1 or r.capture_min_s is None or r.capture_max_s is None:
        return f"{_ms(r.capture_s)} (1 run)"
    return (
        f"{_ms(r.capture_s)} ({_ms(r.capture_min_s)}-{_ms(r.capture_max_s)}, {r.capture_runs} runs)"
    )


#: A worker whose plain forward ran this much slower than the model's median shared the
#: machine with something else: it runs once more, and its times are flagged if it stays slow.
BUSY_FACTOR = 2.0


def busy(results: list[Result]) -> dict[tuple[str, str], float]:
    """(model, tool) -> how many times slower than usual its plain forward ran, for the
    workers above :data:`BUSY_FACTOR`."""
    usual: dict[str, float] = {}
    for model in dict.fromkeys(r.model for r in results):
        forwards = [r.forward_s for r in results if r.model == model and r.forward_s]
        if forwards:
            usual[model] = statistics.median(forwards)
    return {
        (r.model, r.tool): r.forward_s / usual[r.model]
        for r in results
        if r.forward_s and r.model in usual and r.forward_s > BUSY_FACTOR * usual[r.model]
    }


def result_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    slow = busy(results)
    for r in results:
        drawn = (
            f"{r.drawn_nodes:,} / {r.drawn_edges:,}"
            if r.drawn_nodes is not None and r.drawn_edges is not None
            else ""
        )
        if r.error:
            status = f"FAILED {r.error}"
        elif r.render_error:
            status = f"drawing: {r.render_error}"
        elif TOOLS[r.tool].level == "trace":
            status = "ok (drawn in the browser)"
        else:
            status = "ok"
        if (r.model, r.tool) in slow:
            status += f"; machine busy (forward {slow[r.model, r.tool]:.1f}x usual)"
        total = (
            r.capture_s + r.render_s if r.capture_s is not None and r.render_s is not None else None
        )
        rows.append(
            [
                r.model,
                r.tool,
                "" if r.nodes is None else f"{r.nodes:,}",
                drawn,
                _ms(r.forward_s),
                "" if r.error else _capture_cell(r),
                _s(r.render_s),
                _s(total),
                status,
            ]
        )
    return rows


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b is not None and b > 0 else "n/a"


def _speed(ours: Result, peer: Result, attribute: str) -> str:
    """peer time / our time (above 1: torchscope is faster), or what stopped the peer."""
    if peer.error:
        return f"peer failed ({peer.error.split(':')[0]})"
    mine, theirs = getattr(ours, attribute), getattr(peer, attribute)
    if attribute == "render_s" and theirs is None and peer.render_error:
        if mine is None:
            return "both failed"
        return f"peer {peer.render_error}"
    if mine is None:
        return f"torchscope failed ({(ours.error or ours.render_error or '').split(':')[0]})"
    return _ratio(theirs, mine)


def ratio_rows(results: list[Result]) -> list[list[str]]:
    by = {(r.model, r.tool): r for r in results}
    rows = []
    pairs = [
        ("torchscope autograd", "torchviz", "capture_s"),
        ("torchscope autograd", "torchviz", "render_s"),
        ("torchscope module", "torchview", "capture_s"),
        ("torchscope module", "torchview", "render_s"),
        ("torchscope autograd", "TensorBoard add_graph", "tensorboard_s"),
    ]
    for model in dict.fromkeys(r.model for r in results):
        for ours_name, peer_name, attribute in pairs:
            ours, peer = by.get((model, ours_name)), by.get((model, peer_name))
            if ours is None or peer is None:
                continue
            if attribute == "tensorboard_s":
                # add_graph's time against autograd_graph_of + log_to
                what = "TensorBoard graph tab (add_graph / autograd_graph_of+log_to)"
                if peer.error:
                    value = f"peer failed ({peer.error.split(':')[0]})"
                else:
                    value = _ratio(peer.capture_s, ours.tensorboard_s)
            else:
                label = "capture" if attribute == "capture_s" else "render to SVG"
                what = f"{label}: {peer_name} / {ours_name}"
                value = _speed(ours, peer, attribute)
            rows.append([model, what, value])
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the three torchvision models only")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=None, help="a subset of models"
    )
    parser.add_argument(
        "--tools", nargs="+", choices=list(TOOLS), default=None, help="a subset of tools"
    )
    parser.add_argument(
        "--dot-timeout",
        type=float,
        default=DOT_TIMEOUT_S,
        help=f"seconds each Graphviz layout may take (default {DOT_TIMEOUT_S:.0f})",
    )
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    # `python -m benchmarks` hands every bench the same arguments
    args, _ = parser.parse_known_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.result_file, args.dot_timeout)
        return {}

    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    capture_headline = bench_graph_capture.run(args.quick)
    found = versions()
    models = args.models or [m.name for m in MODELS.values() if m.quick or not args.quick]
    tools = args.tools or list(TOOLS)
    print(
        f"# Graphs: torchscope vs torchviz {found['torchviz']}, torchview {found['torchview']}, "
        f"TensorBoard {found['tensorboard']} add_graph (torch {torch.__version__}, "
        f"Graphviz {found.get('graphviz', 'missing')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} threads)\n"
    )
    if shutil.which("dot") is None:
        print("Graphviz `dot` is not installed: the render columns will show failures.\n")
    results: list[Result] = []
    for model in models:
        for name in tools:
            why = available(TOOLS[name], found)
            if why is not None:
                results.append(Result(model, name, error=why))
                continue
            results.append(_run_and_log(name, model, args.dot_timeout))
    # a worker that shared the machine with something else runs once more; the run whose
    # plain forward was faster (the quieter machine) is kept
    for model, name in busy(results):
        i = next(k for k, r in enumerate(results) if (r.model, r.tool) == (model, name))
        again = _run_and_log(name, model, args.dot_timeout, note="again: machine was busy")
        if again.forward_s and again.forward_s < (results[i].forward_s or math.inf):
            results[i] = again

    print(
        table(
            [
                "model",
                "tool",
                "nodes",
                "drawn nodes / edges",
                "forward ms",
                "capture ms (range, runs)",
                "render to SVG s",
                "capture + render s",
                "status",
            ],
            result_rows(results),
        )
    )
    tb = [r for r in results if r.tool == "torchscope autograd" and r.tensorboard_s is not None]
    if tb:
        print(
            "\nTensorBoard graph tab without tracing, autograd_graph_of(model, x).log_to(writer), "
            "seconds: " + ", ".join(f"{r.model} {r.tensorboard_s:.2f}" for r in tb)
        )
    print(
        "\nnodes: what the tool's graph holds (torchview: its node set; add_graph: nodes in "
        "the written GraphDef). drawn: nodes / edges of the DOT laid out (torchscope folds "
        "repeated steps). forward: a plain no_grad forward, for scale. Capture includes the "
        "forward pass: median of up to 5 runs after a warm-up (1 run when one takes over "
        f"{CAPTURE_SLOW_S:.0f} s). Render: one run from the captured graph to the SVG on disk; "
        f"dot calls time out after {args.dot_timeout:.0f} s.\n"
    )
    rows = ratio_rows(results)
    if rows:
        print("## Ratios (peer time / torchscope time: above 1.00x torchscope is faster)\n")
        print(table(["model", "comparison", "ratio"], rows))
    elapsed = time.perf_counter() - began
    load_after = os.getloadavg()[0]
    print(
        f"\nBench time {elapsed:.0f} s. Load average (1 min): {load_before:.2f} before, "
        f"{load_after:.2f} after; a forward ms far above its usual value marks a worker that "
        "shared the machine."
    )

    if args.json is not None:
        payload = {
            "versions": found,
            "dot_timeout_s": args.dot_timeout,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "elapsed_s": elapsed,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "results": [asdict(r) for r in results],
            "busy": {f"{m} / {t}": factor for (m, t), factor in busy(results).items()},
            "ratios": [
                dict(zip(["model", "comparison", "ratio"], row, strict=True)) for row in rows
            ],
        }
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"Results written to {args.json}")

    # the headline of `python -m benchmarks`: capture cost, drawing and TensorBoard ratios,
    # peer failures
    headline: dict[str, str] = dict(capture_headline)
    for row in rows:
        if not row[1].startswith("capture"):
            headline[f"{row[0]}: {row[1]}"] = row[2]
    for r in results:
        if r.error and TOOLS[r.tool].distribution is not None:
            headline[f"{r.model}: {r.tool}"] = f"failed: {r.error}"
    return headline


if __name__ == "__main__":
    main()
