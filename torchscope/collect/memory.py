"""Peak memory of an inference forward and of a training step, estimated on fake tensors.

The model runs with its parameters, buffers and inputs swapped for fake tensors
(``FakeTensorMode``: shapes, dtypes and devices, no storage), so nothing is allocated and a
model too big for the machine can still be sized. A dispatch mode follows every storage the
ops create and free (weak references fire when PyTorch releases a storage) and keeps the
peak of the bytes alive. What it cannot see is documented in ``docs/costs.md``: allocator
rounding and caching, and workspaces that kernels allocate internally (one is modelled: a
CPU oneDNN convolution, forward or backward, reorders its weight into a transient copy).
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import torchscope._util.nested as _nested
from torchscope._util.inputs import (
    DeviceLike,
    ShapeLike,
    call_arguments,
    model_devices,
    resolve_device,
    unwrap,
)
from torchscope.collect.hooks import initialised, instrumented, lazy_tensor_names
from torchscope.records import MemoryEstimate

__all__ = [
    "OPTIMIZER_STATE_FACTORS",
    "estimate_memory",
    "measure_peak_bytes",
    "optimizer_state_bytes",
]

# Per-parameter state of common optimizers, as a multiple of the parameter's bytes, for an
# optimizer that has not stepped yet (a stepped optimizer's real state is counted instead).
OPTIMIZER_STATE_FACTORS = {
    "sgd": 0,
    "sgd_momentum": 1,
    "adam": 2,
    "adamw": 2,
    "adam_amsgrad": 3,
    "rmsprop": 1,
    "adagrad": 1,
    "adadelta": 2,
    "adamax": 2,
    "nadam": 2,
    "radam": 2,
}
# convolution ops and the position of their weight argument
_CONVOLUTIONS = {
    torch.ops.aten.convolution.default: 1,
    torch.ops.aten._convolution.default: 1,
    torch.ops.aten.convolution_backward.default: 2,
}


class _LiveBytes(TorchDispatchMode):
    """Follows the storages that ops create and records the peak of the bytes alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref[Any]] = {}

    def track(self, tensor: torch.Tensor, size: int | None = None) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = storage.nbytes() if size is None else size

        def released(_: object, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, released)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _rnn_workspace(self, args: Any, out: Any) -> None:
        workspace = out[3]
        if workspace.numel():  # a real workspace: tracked like any output
            return
        if bool(args[15]):  # train: the workspace is kept for backward
            self.track(workspace, _mkldnn_lstm_workspace(args))
        # inference scratch inside the kernel is not modelled (no stable fit): see docs/costs.md

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **kwargs) if kwargs else func(*args)
        if func is torch.ops.aten.mkldnn_rnn_layer.default:
            self._rnn_workspace(args, out)
        for tensor in _nested.tensors(out):
            if not tensor.is_nested:
                self.track(tensor)
        weight_at = _CONVOLUTIONS.get(func)
        if weight_at is not None and _reorders_weight(args[weight_at]):
            self.peak = max(self.peak, self.live + _bytes(args[weight_at]))
        elif func in _FUSED_ATTENTION:
            self.peak = max(self.peak, self.live + _fused_attention_workspace(func, args))
        return out


_FUSED_ATTENTION = frozenset(
    {
        torch.ops.aten._native_multi_head_attention.default,
        torch.ops.aten._transformer_encoder_layer_fwd.default,
    }
)


def _fused_attention_workspace(func: Any, args: Any) -> int:
    """What the fused attention kernels allocate inside: the packed q/k/v projections and
    the per-head score matrix (ragged nested inputs: not modelled)."""
    query = args[0]
    if query.is_nested or query.dim() != 3:
        return 0
    batch, length, embed = (int(d) for d in query.shape)
    heads = int(
        args[2] if func is torch.ops.aten._transformer_encoder_layer_fwd.default else args[4]
    )
    source = (
        length
        if func is torch.ops.aten._transformer_encoder_layer_fwd.default
        else int(args[1].shape[1])
    )
    elements = 3 * batch * length * embed + batch * heads * length * source
    return elements * query.element_size()


def _mkldnn_lstm_workspace(args: Any) -> int:
    """oneDNN's LSTM workspace, which fake kernels return empty: an empirical fit on the CPU
    (torch 2.14) of about 15 floats per hidden unit, per step (plus one), per batch element."""
    inp, hidden = args[0], int(args[10])
    batch_first = bool(args[14])
    steps = (
        int(inp.shape[1] if batch_first else inp.shape[0]) if inp.dim() == 3 else int(inp.shape[0])
    )
    batch = int(inp.shape[0] if batch_first else inp.shape[1]) if inp.dim() == 3 else 1
    return (steps + 1) * batch * hidden * 60


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _reorders_weight(weight: torch.Tensor) -> bool:
    """A CPU convolution run by oneDNN copies its weight into a blocked layout for the call
    (forward and backward alike): a transient allocation the size of the weight."""
    return bool(
        weight.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and weight.dtype in (torch.float32, torch.bfloat16)
    )


def _optimizer_state(optimizer: Any, trainable: list[nn.Parameter]) -> int:
    if optimizer is None:
        return 0
    if isinstance(optimizer, str):
        factor = OPTIMIZER_STATE_FACTORS.get(optimizer.lower())
        if factor is None:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; use one of {', '.join(sorted(OPTIMIZER_STATE_FACTORS))} "
                "or pass the optimizer object"
            )
        return factor * sum(_bytes(p) for p in trainable)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or a name, got {type(optimizer).__name__}"
        )
    total = 0
    for group in optimizer.param_groups:
        factor = _factor_of(optimizer, group)
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state:  # stepped already: count what is there
                total += sum(_bytes(v) for v in state.values() if isinstance(v, torch.Tensor))
            elif param.requires_grad:
                total += factor * _bytes(param)
    return total


def _factor_of(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> int:
    name = type(optimizer).__name__.lower()
    if name == "sgd":
        return 1 if group.get("momentum", 0) else 0
    if name in ("adam", "adamw") and group.get("amsgrad", False):
        return 3
    if name == "rmsprop":
        return 1 + int(bool(group.get("momentum", 0))) + int(bool(group.get("centered", False)))
    factor = OPTIMIZER_STATE_FACTORS.get(name)
    if factor is None:
        raise ValueError(
            f"cannot predict the state of {type(optimizer).__name__} before its first step; "
            "step it once (its real state is then counted) or pass a name such as 'adam'"
        )
    return factor


def _fake_state(
    model: nn.Module, fake: FakeTensorMode
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Fake twins of every parameter and buffer, by name; tied tensors stay one tensor."""
    twins: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        twin = twins.get(id(tensor))
        if twin is None:
            # .data, not .detach(): a detached tensor shares the version counter, and a
            # forward's in-place write to the twin would bump the real parameter's
            twin = fake.from_tensor(tensor.data)
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                twin.requires_grad_(True)
            twins[id(tensor)] = twin
        state[name] = twin
    return state, list(twins.values())


@dataclass(frozen=True)
class _FakeCopy:
    """The model's parameters and buffers and the call's arguments as fake tensors."""

    mode: FakeTensorMode
    state: dict[str, torch.Tensor]  # by name, for functional_call
    persistent: list[torch.Tensor]  # each parameter and buffer once
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _fake_copy(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _FakeCopy:
    """Fake twins made once for both passes: converting every parameter to a fake tensor
    takes about twice as long as a fake forward (resnet50, under cProfile), and only their
    shapes, dtypes, devices and shared storages matter to either pass."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        state, persistent = _fake_state(model, mode)
        fake_args, fake_kwargs = _nested.map_tensors((args, kwargs), mode.from_tensor)
    return _FakeCopy(mode, state, persistent, fake_args, fake_kwargs)


@contextlib.contextmanager
def _cycles_kept() -> Iterator[None]:
    """Python's cycle collector held off for one pass (then put back as it was).

    Tensors that a reference cycle holds (an output object that points back to its
    container, as Hugging Face caches do) are then alive until the pass ends in every run;
    with the collector on they were freed whenever it happened to run, so the same model's
    training peak changed with what the process had done before.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run(model: nn.Module, fake: _FakeCopy, *, train: bool) -> tuple[int, int, int]:
    """(peak, bytes live after the forward, bytes live before it) of one fake pass.

    Each pass is instrumented on its own: what one forward leaves on the model (a cache in
    a plain attribute) is undone before the next, so each starts from the model as found.
    """
    live = _LiveBytes()
    for tensor in [*fake.persistent, *_nested.tensors((fake.args, fake.kwargs))]:
        live.track(tensor)
    before = live.live
    with instrumented(model, grad=train), _cycles_kept(), fake.mode, live:
        model.train(train)
        # a copy of the name table: a forward that rebinds a parameter changes this pass only
        state = dict(fake.state)
        output = torch.func.functional_call(model, state, fake.args, fake.kwargs, strict=False)
        after_forward = live.live
        roots = [t for t in _nested.tensors(output) if t.requires_grad and t.grad_fn is not None]
        del output  # a training loop keeps the loss, not the output
        if train and roots:
            loss = roots[0].sum()  # a scalar loss: its gradient seeds the outputs without a copy
            for root in roots[1:]:
                loss = loss + root.sum()
            del roots
            loss.backward()
    return live.peak, after_forward, before


def optimizer_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | str | None) -> int:
    """Bytes of ``optimizer``'s per-parameter state for ``model`` (0 for None).

    Raises ``ValueError``/``TypeError`` for an optimizer whose state cannot be known.
    """
    trainable = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    return _optimizer_state(optimizer, trainable)


def estimate_from_arguments(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, optimizer_state: int = 0
) -> MemoryEstimate:
    """The estimate for prepared call arguments (what :func:`torchscope.summary` uses)."""
    unique_params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in unique_params if p.requires_grad]
    state = optimizer_state
    fake = _fake_copy(model, args, kwargs)
    # the inference pass first: the training pass's backward leaves .grad on the twins
    inference_peak, _, _ = _run(model, fake, train=False)
    training_peak, after_forward, before = _run(model, fake, train=True)
    devices = model_devices(model)
    return MemoryEstimate(
        inference_peak=inference_peak,
        training_peak=training_peak + state,
        parameters=sum(_bytes(p) for p in unique_params),
        buffers=sum(_bytes(b) for b in {id(b): b for b in model.buffers()}.values()),
        inputs=_nested.tensor_bytes((args, kwargs)),
        activations=max(0, after_forward - before),
        gradients=sum(_bytes(p) for p in trainable),
        optimizer_state=state,
        device=str(devices[0]) if devices else "cpu",
    )


def estimate_memory(
    model: nn.Module,
    input: Any = None,
    *,
    input_size: ShapeLike | list[ShapeLike] | None = None,
    dtypes: torch.dtype | list[torch.dtype] | None = None,
    device: DeviceLike | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | str | None = None,
) -> MemoryEstimate:
    """Return the estimated peak memory of an inference forward and of one training step.

    ``input``, ``input_size``, ``dtypes``, ``device`` and ``forward_kwargs`` are as for
    :func:`torchscope.summary`. ``optimizer`` adds its per-parameter state to the training
    peak: an optimizer object (its real state once it has stepped, else predicted from its
    type and settings) or a name from ``OPTIMIZER_STATE_FACTORS`` (``"adam"``, ``"sgd_momentum"``).
    Nothing is allocated and the model is left exactly as it was.
    """
    model = unwrap(model, caller="estimate_memory")
    lazy = bool(lazy_tensor_names(model))  # their sizes are known once a copy is initialised
    state = 0 if lazy else optimizer_state_bytes(model, optimizer)  # a bad one fails first
    input_device = resolve_device(model_devices(model), device)
    args, kwargs = call_arguments(
        model, input, input_size, dtypes, device, input_device, forward_kwargs,
        caller="estimate_memory",
    )  # fmt: skip
    if lazy:  # the estimate is of an initialised copy: the model stays as found
        model = initialised(model, args, kwargs, call="estimate_memory")
        state = optimizer_state_bytes(model, optimizer)
    return estimate_from_arguments(model, args, kwargs, optimizer_state=state)


def measure_peak_bytes(fn: Callable[[], object], *, existing: Iterable[torch.Tensor] = ()) -> int:
    """The real peak of live tensor bytes while ``fn()`` runs on the CPU, plus ``existing``.

    Uses PyTorch's profiler (``profile_memory=True``), which records every allocation and
    free of the CPU allocator, kernel-internal tensors included; the running sum of those
    records peaks at the answer. ``existing``: tensors alive before and throughout (the
    parameters, buffers and inputs), counted once each. For checking an estimate on your own
    model; CUDA users can read ``torch.cuda.max_memory_allocated`` instead.
    """
    from torch.profiler import ProfilerActivity, profile  # the profiler is only needed here

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    kineto = getattr(prof.profiler, "kineto_results", None)
    if kineto is None:
        raise RuntimeError("the profiler recorded no events; is another profiler running?")
    records = sorted(
        (e for e in kineto.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for record in records:
        live += record.nbytes()
        peak = max(peak, live)
    distinct = {id(t): t for t in existing}.values()
    return peak + sum(_bytes(t) for t in distinct)


def measure_step_peak(model: nn.Module, x: torch.Tensor, *, train: bool) -> int:
    """The real CPU peak of what :func:`estimate_memory` models, for checking it.

    ``train=False``: ``model.eval()`` and a forward under ``torch.no_grad()``;
    ``train=True``: ``model.train()``, forward and ``output.sum().backward()``. Parameters,
    buffers and ``x`` count as existing. Changes the model's mode, and sets then clears
    the parameters' ``.grad``: a measuring tool for tests and benchmarks, not for models
    in use.
    """
    model.train(train)

    def step() -> None:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    peak = measure_peak_bytes(step, existing=[*model.parameters(), *model.buffers(), x])
    for param in model.parameters():
        param.grad = None
    return peak
