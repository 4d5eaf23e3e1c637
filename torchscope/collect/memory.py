"""Peak memory of an inference forward and of a training step, estimated on fake tensors.

The model runs with its parameters, buffers and inputs swapped for fake tensors
(``FakeTensorMode``: shapes, dtypes and devices, no storage), so nothing is allocated and a
model too big for the machine can still be sized. A dispatch mode follows every storage the
ops create and free (weak references fire when PyTorch releases a storage) and keeps the
peak of the bytes alive. What it cannot see is documented in ``docs/costs.md``: allocator
rounding and caching, and workspaces that kernels allocate internally (one is modelled: a
CPU oneDNN convolution, forward or backward, reorders its weight into a transient copy).
Where fake tensors cannot know a shape or a value (``nonzero`` in detection models,
``.item()``), the pass is run on the real tensors instead and measured the same way; the
passes themselves are in :mod:`torchscope.collect._memory_passes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

import torchscope._util.nested as _nested
from torchscope._util.inputs import (
    DeviceLike,
    ShapeLike,
    call_arguments,
    model_devices,
    resolve_device,
    unwrap,
)
from torchscope.collect._memory_passes import PassFailed, nbytes, run_passes
from torchscope.collect.hooks import initialised, lazy_tensor_names
from torchscope.errors import TorchscopeError
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
        return factor * sum(nbytes(p) for p in trainable)
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
                total += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor))
            elif param.requires_grad:
                total += factor * nbytes(param)
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


def optimizer_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | str | None) -> int:
    """Bytes of ``optimizer``'s per-parameter state for ``model`` (0 for None).

    Raises ``ValueError``/``TypeError`` for an optimizer whose state cannot be known.
    """
    trainable = [p for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad]
    return _optimizer_state(optimizer, trainable)


def estimate_from_arguments(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, optimizer_state: int = 0
) -> MemoryEstimate:
    """The estimate for prepared call arguments (what :func:`torchscope.summary` uses).

    Raises :class:`~torchscope.errors.TorchscopeError` naming the module and the op when not
    even an inference forward can be run.
    """
    unique_params = list({id(p): p for p in model.parameters()}.values())
    trainable = [p for p in unique_params if p.requires_grad]
    try:
        passes = run_passes(model, args, kwargs)
    except PassFailed as failed:
        raise TorchscopeError(
            f"cannot estimate the memory of {type(model).__name__}: its inference forward "
            f"failed: {failed.describe()}"
        ) from failed.error
    devices = model_devices(model)
    training = passes.training_peak
    return MemoryEstimate(
        inference_peak=passes.inference_peak,
        training_peak=None if training is None else training + optimizer_state,
        parameters=sum(nbytes(p) for p in unique_params),
        buffers=sum(nbytes(b) for b in {id(b): b for b in model.buffers()}.values()),
        inputs=_nested.tensor_bytes((args, kwargs)),
        activations=max(0, passes.after_forward - passes.before),
        gradients=sum(nbytes(p) for p in trainable),
        optimizer_state=optimizer_state,
        device=str(devices[0]) if devices else "cpu",
        measured=passes.measured,
        training_error=passes.training_error,
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
    return peak + sum(nbytes(t) for t in distinct)


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
