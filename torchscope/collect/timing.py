"""Timing: ``benchmark(fn)`` for one piece of work, ``time_layers(model, input)`` per module.

A correct timing needs warm-up, enough repetitions for a median and a spread, and on a GPU
device-side clocks: CUDA work is asynchronous, so a host clock read after a launch measures
the launch. Here every mark is a ``torch.cuda.Event`` recorded on the current stream on CUDA
(``time.perf_counter_ns`` on the CPU), and the only synchronisation is one per repetition,
after its last mark, outside every measured region.

Per-module backward time comes from the autograd nodes each module's forward created
(``torch.autograd.graph.node_creation_hook``): a pre-hook and a hook on every node mark when
the engine starts and finishes it, wherever backward kernels run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import torchscope._util.nested as _nested
from torchscope._util.inputs import call_arguments, model_devices, resolve_device, unwrap
from torchscope.collect.graph import capture, run_forward
from torchscope.collect.hooks import (
    HookSet,
    initialised,
    instrumented,
    iter_modules,
    parameter_writes_unwatched,
)
from torchscope.errors import TorchscopeError
from torchscope.records import LayerTiming, Measurement, TimingReport

__all__ = ["benchmark", "time_layers"]

#: Bytes overwritten between runs when flushing a cache whose size the device does not say.
DEFAULT_FLUSH_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------
# clocks: marks that become seconds after one synchronisation


class _HostClock:
    """``perf_counter_ns`` marks; nothing to synchronise."""

    device = "cpu"

    def mark(self) -> int:
        return time.perf_counter_ns()

    def settle(self) -> None:
        return None

    def seconds(self, start: Any, end: Any) -> float:
        return (end - start) / 1e9


class _EventClock:
    """CUDA events recorded on the current stream; :meth:`settle` synchronises once."""

    def __init__(self, device: torch.device) -> None:
        self.device = str(device)
        self._device = device

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def settle(self) -> None:
        torch.cuda.synchronize(self._device)

    def seconds(self, start: Any, end: Any) -> float:
        return float(start.elapsed_time(end)) / 1e3


def _clock(device: torch.device) -> _HostClock | _EventClock:
    return _EventClock(device) if device.type == "cuda" else _HostClock()


@contextlib.contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """Make ``device`` the current CUDA device for the block (events record on its stream)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


def _label(fn: Callable[..., Any]) -> str:
    """``torch.mm`` for torch's builtins (whose qualname is ``_VariableFunctionsClass.mm``),
    else the function's qualified name."""
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return type(fn).__name__
    if qualname.startswith("_VariableFunctionsClass."):
        return "torch." + qualname.split(".", 1)[1]
    return str(qualname)


def _measurement(times: list[float], device: str, label: str, flushed: bool) -> Measurement:
    ordered = sorted(times)
    return Measurement(
        median=statistics.median(ordered),
        iqr=_iqr(ordered),
        mean=statistics.fmean(ordered),
        min=ordered[0],
        n=len(ordered),
        device=device,
        times=tuple(times),
        label=label,
        flushed_cache=flushed,
    )


def _check_counts(warmup: int, repeat: int) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a whole number >= 0, got {warmup!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a whole number >= 1, got {repeat!r}")


def _device_of(args: Any, kwargs: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in _nested.tensors((args, kwargs)):
        if tensor.device.type == "cuda":
            return tensor.device
    return torch.device("cpu")


class _CacheFlusher:
    """Overwrites a buffer larger than the device's L2 cache, so every run starts cold."""

    def __init__(self, device: torch.device) -> None:
        size = DEFAULT_FLUSH_BYTES
        if device.type == "cuda":
            l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
            size = max(2 * int(l2), 2**20) if l2 else DEFAULT_FLUSH_BYTES
        self.buffer = torch.empty(size // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def benchmark(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    repeat: int = 20,
    min_run_time: float | None = None,
    flush_cache: bool = True,
    device: Any = None,
    label: str = "",
    **kwargs: Any,
) -> Measurement:
    """Return the :class:`~torchscope.records.Measurement` of ``fn(*args, **kwargs)``.

    ``warmup`` untimed calls, then ``repeat`` timed calls (more until ``min_run_time``
    seconds of timed runs have accumulated, when given). On CUDA (a CUDA tensor among the
    arguments, or ``device="cuda"``) each call is timed by two CUDA events on the current
    stream, with one synchronisation after all the calls of a round, never between the
    events; with ``flush_cache`` a buffer twice the L2 size is overwritten before each call,
    outside the timed region. On the CPU calls are timed with ``perf_counter_ns`` and the
    cache is not flushed (CPU caches are the machine's, and a flush costs more than most
    measured work).
    """
    _check_counts(warmup, repeat)
    if min_run_time is not None and not min_run_time > 0:
        raise ValueError(f"min_run_time must be a positive number of seconds, got {min_run_time!r}")
    if not callable(fn):
        raise TypeError(f"benchmark needs a callable, got {type(fn).__name__}")
    target = _device_of(args, kwargs, device)
    clock = _clock(target)
    flush = _CacheFlusher(target) if flush_cache and target.type == "cuda" else None
    label = label or _label(fn)
    with _on(target):
        for _ in range(warmup):
            fn(*args, **kwargs)
        clock.settle()
        times: list[float] = []
        while True:
            marks = []
            for _ in range(repeat if not times else max(1, repeat // 2)):
                if flush is not None:
                    flush()
                start = clock.mark()
                fn(*args, **kwargs)
                marks.append((start, clock.mark()))
            clock.settle()  # once per round, after the last event
            times.extend(clock.seconds(start, end) for start, end in marks)
            if min_run_time is None or sum(times) >= min_run_time:
                break
    return _measurement(times, clock.device, label, flush is not None)


# --------------------------------------------------------------------------------------------
# time_layers


@dataclass
class _Module:
    name: str
    type: str
    depth: int
    parent: int | None
    children: list[int] = field(default_factory=list)


@dataclass
class _Repetition:
    """The marks of one step: forward (start, end) per call, backward (start, end) per node."""

    forward: list[tuple[int, Any, Any]] = field(default_factory=list)  # (module, start, end)
    nodes: dict[Any, int] = field(default_factory=dict)  # autograd node -> module
    node_start: dict[Any, Any] = field(default_factory=dict)
    node_end: dict[Any, Any] = field(default_factory=dict)


class _LayerTimer:
    """Hooks that mark every module call and every autograd node its forward creates."""

    def __init__(self, model: nn.Module, clock: _HostClock | _EventClock, backward: bool) -> None:
        self.clock = clock
        self.backward = backward
        self.modules: list[_Module] = []
        self.index: dict[int, int] = {}
        for name, module in iter_modules(model):
            parent = self.index.get(id(_parent(model, name))) if name else None
            self.index[id(module)] = len(self.modules)
            depth = name.count(".") + 1 if name else 0
            self.modules.append(_Module(name, type(module).__name__, depth, parent))
            if parent is not None:
                self.modules[parent].children.append(len(self.modules) - 1)
        self.stack: list[tuple[int, Any]] = []
        self.current = _Repetition()
        self.calls = 0

    def attach(self, model: nn.Module, hooks: HookSet) -> None:
        for _, module in iter_modules(model):
            position = self.index[id(module)]
            hooks.add(module.register_forward_pre_hook(self._enter(position)))
            hooks.add(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, position: int) -> Callable[..., None]:
        def pre_hook(module: nn.Module, args: Any) -> None:
            self.stack.append((position, self.clock.mark()))

        return pre_hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        end = self.clock.mark()
        if self.stack:
            position, start = self.stack.pop()
            self.current.forward.append((position, start, end))
            self.calls += 1

    def on_node(self, node: Any) -> None:
        owner = self.stack[-1][0] if self.stack else 0
        self.current.nodes[node] = owner
        node.register_prehook(self._node_started(node))
        node.register_hook(self._node_finished(node))

    def _node_started(self, node: Any) -> Callable[..., None]:
        def prehook(grad_outputs: Any) -> None:
            self.current.node_start[node] = self.clock.mark()

        return prehook

    def _node_finished(self, node: Any) -> Callable[..., None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            self.current.node_end[node] = self.clock.mark()

        return hook


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def _loss(outputs: Any) -> torch.Tensor | None:
    """A scalar whose backward reaches every output that requires grad."""
    parts = [t.float().sum() for t in _nested.tensors(outputs) if t.requires_grad]
    if not parts:
        return None
    return torch.stack(parts).sum() if len(parts) > 1 else parts[0]


def time_layers(
    model: nn.Module,
    input: Any = None,
    *,
    input_size: Any = None,
    dtypes: Any = None,
    backward: bool = True,
    warmup: int = 3,
    repeat: int = 20,
    device: Any = None,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> TimingReport:
    """Return per-module forward (and backward) times of ``model``: a :class:`TimingReport`.

    Each of ``repeat`` timed steps (after ``warmup`` untimed ones) runs the forward and, with
    ``backward``, ``torch.autograd.grad`` of the sum of the outputs with respect to the
    parameters (``.grad`` is never touched). Per module it gives the median and the
    inter-quartile range of its inclusive time, its self time (outside child modules), and
    its share of the step. The report also holds the step timed without any hooks, the
    instrumented step, the coverage and the instrumentation's cost per module call, so it
    states its own accuracy.

    The model is left as found: state (BatchNorm statistics included), ``training`` flags,
    ``requires_grad``, ``.grad``, hooks and the global RNG. It runs in the mode it is in.
    Inputs are given like :func:`torchscope.summary`'s.
    """
    _check_counts(warmup, repeat)
    model = unwrap(model, caller="time_layers")
    target = resolve_device(model_devices(model), device)
    args, kwargs = call_arguments(
        model, input, input_size, dtypes, device, target, forward_kwargs, caller="time_layers"
    )
    model = initialised(model, args, kwargs, call="time_layers")
    clock = _clock(target)
    params = [p for p in model.parameters() if p.requires_grad]
    backward = bool(backward and params)

    def step() -> None:
        outputs = model(*args, **kwargs)
        if backward and (loss := _loss(outputs)) is not None:
            torch.autograd.grad(loss, params, allow_unused=True)

    node_hook = getattr(torch.autograd.graph, "node_creation_hook", None)
    if backward and node_hook is None:
        raise TorchscopeError(
            "per-module backward times need torch.autograd.graph.node_creation_hook, which "
            f"torch {torch.__version__} lacks; pass backward=False"
        )
    timer = _LayerTimer(model, clock, backward)
    repetitions: list[_Repetition] = []
    bare_times: list[float] = []
    hooked_times: list[float] = []
    with _on(target), instrumented(model, grad=backward):
        with capture(model) as cap:  # a failing forward is reported with its module and shapes
            outputs = run_forward(model, args, kwargs, cap)
        try:
            if backward and (loss := _loss(outputs)) is not None:
                torch.autograd.grad(loss, params, allow_unused=True)
        except Exception as e:
            raise TorchscopeError(f"the backward pass failed: {type(e).__name__}: {e}") from e
        del outputs
        # bare and instrumented steps alternate, so that drift (clocks, other processes,
        # thermal limits) hits both alike; each is settled once, after its last mark. The
        # guard that undoes parameter writes stays off the clock unless the model wrote one
        with parameter_writes_unwatched():
            for k in range(warmup + repeat):
                start = clock.mark()
                step()
                end = clock.mark()
                clock.settle()
                if k >= warmup:
                    bare_times.append(clock.seconds(start, end))
                handles = HookSet()
                timer.attach(model, handles)
                timer.current = _Repetition()
                try:
                    # the step's backward creates no nodes: the hook only sees the forward's
                    creation = (
                        node_hook(timer.on_node)
                        if backward and node_hook is not None
                        else contextlib.nullcontext()
                    )
                    start = clock.mark()
                    with creation:
                        step()
                    end = clock.mark()
                    clock.settle()
                finally:
                    handles.remove_all()
                if k >= warmup:
                    repetitions.append(timer.current)
                    hooked_times.append(clock.seconds(start, end))
                timer.current = _Repetition()  # drop the step's nodes (and their hooks)
    calls_per_step = timer.calls / (warmup + repeat)
    bare = _measurement(bare_times, clock.device, "step without hooks", False)
    instrumented_step = _measurement(hooked_times, clock.device, "step with timing hooks", False)
    return _report(
        model, timer, repetitions, clock, bare, instrumented_step, calls_per_step, warmup
    )


def _report(
    model: nn.Module,
    timer: _LayerTimer,
    repetitions: list[_Repetition],
    clock: _HostClock | _EventClock,
    bare: Measurement,
    instrumented_step: Measurement,
    calls_per_step: float,
    warmup: int,
) -> TimingReport:
    count = len(timer.modules)
    samples: dict[str, list[list[float]]] = {
        key: [[] for _ in range(count)]
        for key in ("forward", "forward_self", "backward", "backward_self")
    }
    calls = [0] * count
    for rep_index, rep in enumerate(repetitions):
        inclusive = [0.0] * count
        children_time = [0.0] * count
        for position, start, end in rep.forward:
            seconds = clock.seconds(start, end)
            inclusive[position] += seconds
            parent = timer.modules[position].parent
            if parent is not None:
                children_time[parent] += seconds
            if rep_index == 0:
                calls[position] += 1
        # backward: per module, own node time; inclusive from its subtree's first start to
        # last end, measured against one reference mark
        own = [0.0] * count
        first: list[float | None] = [None] * count
        last: list[float | None] = [None] * count
        reference = next(iter(rep.node_start.values()), None)
        for node, owner in rep.nodes.items():
            begin, finish = rep.node_start.get(node), rep.node_end.get(node)
            if begin is None or finish is None or reference is None:
                continue  # not run by this backward (no path to the parameters)
            own[owner] += clock.seconds(begin, finish)
            t0, t1 = clock.seconds(reference, begin), clock.seconds(reference, finish)
            ancestor: int | None = owner
            while ancestor is not None:
                low, high = first[ancestor], last[ancestor]
                first[ancestor] = t0 if low is None or t0 < low else low
                last[ancestor] = t1 if high is None or t1 > high else high
                ancestor = timer.modules[ancestor].parent
        for i in range(count):
            samples["forward"][i].append(inclusive[i])
            samples["forward_self"][i].append(max(inclusive[i] - children_time[i], 0.0))
            low, high = first[i], last[i]
            samples["backward"][i].append(
                high - low if low is not None and high is not None else 0.0
            )
            samples["backward_self"][i].append(own[i])
    rows = []
    for i, module in enumerate(timer.modules):
        if not calls[i] and not any(samples["backward_self"][i]):
            continue  # never called
        forward = samples["forward"][i]
        backward_times = samples["backward"][i]
        forward_self = statistics.median(samples["forward_self"][i])
        backward_self = statistics.median(samples["backward_self"][i])
        rows.append(
            LayerTiming(
                name=module.name,
                type=module.type,
                depth=module.depth,
                calls=calls[i],
                forward=statistics.median(forward),
                forward_iqr=_iqr(forward),
                forward_self=forward_self,
                backward=statistics.median(backward_times),
                backward_iqr=_iqr(backward_times),
                backward_self=backward_self,
                share=(forward_self + backward_self) / bare.median if bare.median > 0 else 0.0,
            )
        )
    top = [r for r in rows if r.depth == 1] or [r for r in rows if r.depth == 0]
    covered = sum(r.forward + r.backward for r in top)
    overhead = (instrumented_step.median - bare.median) / calls_per_step if calls_per_step else 0.0
    return TimingReport(
        model_type=type(model).__name__,
        device=clock.device,
        backward=timer.backward,
        warmup=warmup,
        repeat=len(repetitions),
        layers=tuple(rows),
        step=bare,
        instrumented_step=instrumented_step,
        coverage=covered / bare.median if bare.median > 0 else 0.0,
        overhead_per_call=max(overhead, 0.0),
    )


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(sorted(values), n=4, method="inclusive")
    return quartiles[2] - quartiles[0]
