"""Turning what a user passes as a model's input into call arguments (shared by the collectors)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import torchscope._util.nested as _nested

__all__ = [
    "DeviceLike",
    "ShapeLike",
    "call_arguments",
    "model_devices",
    "resolve_device",
    "split_inputs",
    "unwrap",
]


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A forward's input as ``(args, kwargs)``: a dict is keyword arguments, a tuple or list
    (not a namedtuple) positional arguments, anything else the one positional argument."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)) and not _nested.is_namedtuple(inputs):
        return tuple(inputs), {}
    return (inputs,), {}


ShapeLike = Sequence[int]
DeviceLike = str | torch.device

_QUANTIZED_DTYPES = frozenset(
    {torch.quint8, torch.qint8, torch.qint32, torch.quint4x2, torch.quint2x4}
)
_INPUT_SEED = 0  # inputs made from input_size are the same on every call


def unwrap(model: Any, *, caller: str = "summary", allow_script: bool = False) -> nn.Module:
    """The module that does the work inside DataParallel/DDP/torch.compile wrappers.

    ``caller`` names the public call in error messages; ``allow_script`` lets a TorchScript
    model through (for callers that can read one without hooks).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{caller}() needs an nn.Module as its first argument, got {type(model).__name__}; "
            f"pass the model itself, e.g. {caller}(model, input)"
        )
    while True:
        if isinstance(model, torch.jit.ScriptModule):
            if allow_script:
                return model
            raise TypeError(
                f"{caller}() cannot hook a TorchScript module (torch.jit.script/trace gave "
                f"{type(model).__name__}); pass the original nn.Module, or summary(model, ...), "
                "which reads a TorchScript model's parameters, module tree and output shapes"
            )
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


def _normalise_device(device: DeviceLike) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device={device!r} is not a device torch knows, e.g. 'cpu', 'cuda:0', 'meta'"
        ) from e
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_device(model_devices: list[torch.device], device: DeviceLike | None) -> torch.device:
    if device is None:
        return model_devices[0] if model_devices else torch.device("cpu")
    dev = _normalise_device(device)
    if model_devices and dev not in model_devices:
        where = ", ".join(str(d) for d in model_devices)
        raise ValueError(
            f"the model is on {where} but device={str(dev)!r} was given; torchscope never moves "
            f"your model: call model.to({str(dev)!r}) first, or leave device out"
        )
    return dev


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, (Sequence, torch.Size))
        and not isinstance(value, str)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in value)
    )


def _input_shapes(input_size: Any) -> list[tuple[int, ...]]:
    if _is_shape(input_size):
        shapes = [tuple(input_size)]
    elif (
        isinstance(input_size, Sequence)
        and not isinstance(input_size, str)
        and input_size
        and all(_is_shape(s) for s in input_size)
    ):
        shapes = [tuple(s) for s in input_size]
    else:
        raise TypeError(
            f"input_size must be a shape like (1, 3, 224, 224) or a list of shapes, got {input_size!r}"
        )
    for shape in shapes:
        if any(d < 0 for d in shape):
            raise ValueError(f"input_size dimensions must be >= 0, got {shape}")
    return shapes


def _input_dtypes(dtypes: Any, count: int, default: torch.dtype) -> list[torch.dtype]:
    if dtypes is None:
        return [default] * count
    listed = [dtypes] if isinstance(dtypes, torch.dtype) else list(dtypes)
    if not all(isinstance(d, torch.dtype) for d in listed):
        raise TypeError(f"dtypes must be a torch.dtype or a list of them, got {dtypes!r}")
    quantized = [d for d in listed if d in _QUANTIZED_DTYPES]
    if quantized:
        raise TypeError(
            f"input_size cannot make {quantized[0]} tensors; quantize an input yourself and pass it as input="
        )
    if len(listed) == 1:
        return listed * count
    if len(listed) != count:
        raise ValueError(
            f"got {len(listed)} dtypes for {count} input shapes; give one dtype per shape"
        )
    return listed


def _make_input(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if device.type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(_INPUT_SEED)
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)
    if dtype == torch.bool:
        return torch.zeros(shape, dtype=dtype, device=device)
    # small non-negative integers are valid indices for any embedding table
    return torch.randint(0, 2, shape, dtype=dtype, device=device, generator=generator)


def _default_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point() or param.is_complex():
            return param.dtype
    return torch.get_default_dtype()


def _required_arguments(model: nn.Module) -> list[str]:
    """The names of the arguments ``model.forward`` cannot run without (none when unknown)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # builtins, some TorchScript methods: let the call decide
        return []
    return [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _check_forward_takes_nothing(
    model: nn.Module, forward_kwargs: Mapping[str, Any] | None, caller: str
) -> None:
    """No input was given: fine for a forward that needs none, a clear error otherwise."""
    missing = [name for name in _required_arguments(model) if name not in (forward_kwargs or {})]
    if missing:
        raise ValueError(
            f"{caller}() needs an input: {type(model).__name__}.forward takes "
            f"{', '.join(missing)}. Pass it as {caller}(model, x) (a tuple for several "
            f"arguments, a dict for keyword arguments) or give shapes with "
            f"input_size=(1, 3, 224, 224) for random tensors"
        )


def call_arguments(
    model: nn.Module,
    input: Any,
    input_size: Any,
    dtypes: Any,
    device: DeviceLike | None,
    input_device: torch.device,
    forward_kwargs: Mapping[str, Any] | None,
    *,
    caller: str = "summary",
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if input is not None and input_size is not None:
        raise ValueError("pass either input= (real values) or input_size= (shapes), not both")
    if dtypes is not None and input_size is None:
        raise ValueError(
            "dtypes= applies to input_size= tensors; give input tensors the dtype you want"
        )
    if forward_kwargs is not None and not isinstance(forward_kwargs, Mapping):
        raise TypeError(
            f"forward_kwargs must be a dict of keyword arguments, got {type(forward_kwargs).__name__}"
        )

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = {}
    if input_size is not None:
        shapes = _input_shapes(input_size)
        kinds = _input_dtypes(dtypes, len(shapes), _default_dtype(model))
        args = tuple(_make_input(s, d, input_device) for s, d in zip(shapes, kinds, strict=True))
    elif input is None:
        _check_forward_takes_nothing(model, forward_kwargs, caller)
        args = ()
    elif isinstance(input, Mapping):
        args, kwargs = (), dict(input)
    elif isinstance(input, (tuple, list)) and not _nested.is_namedtuple(input):
        args = tuple(input)
    else:
        args = (input,)
        if not isinstance(input, torch.Tensor) and not _nested.is_namedtuple(input):
            if not list(_nested.tensors(input)):
                raise TypeError(
                    f"input must be a tensor, a tuple/list of arguments or a dict of keyword "
                    f"arguments, got {type(input).__name__}; for shapes use input_size="
                )

    for key, value in (forward_kwargs or {}).items():
        if key in kwargs:
            raise ValueError(
                f"keyword {key!r} is given both in input and in forward_kwargs; give it once"
            )
        kwargs[key] = value

    # the model gets copies (on `device`, if given): an in-place op in its forward must not
    # reach the caller's tensors
    target = input_device if device is not None else None

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.detach().to(target if target is not None else tensor.device, copy=True)
        return moved.requires_grad_(tensor.requires_grad) if moved.is_leaf else moved

    if input is not None:
        args = _nested.map_tensors(args, copy)
    kwargs = _nested.map_tensors(kwargs, copy)
    return args, kwargs


def model_devices(model: nn.Module) -> list[torch.device]:
    """The devices of the model's parameters and buffers, in order of appearance."""
    return list(dict.fromkeys(t.device for t in (*model.parameters(), *model.buffers())))
