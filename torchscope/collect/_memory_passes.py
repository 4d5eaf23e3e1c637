"""The passes behind the memory estimate: a dispatch mode that follows live bytes, the
kernels' internal workspaces it models, and the inference and training passes on fake
tensors, measured on the real tensors where fake ones cannot know a shape.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._python_dispatch import TorchDispatchMode

import torchscope._util.nested as _nested
from torchscope._util.collector import collector_paused
from torchscope.collect.hooks import instrumented

__all__ = ["PassFailed", "Passes", "nbytes", "run_passes"]


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
        kwargs = kwargs or {}
        try:
            out = func(*args, **kwargs)
        except RuntimeError:
            if func not in _GROUPED_MM or not isinstance(args[0], FakeTensor):
                raise
            out = _fake_grouped_mm(args, kwargs)
        if func is torch.ops.aten.mkldnn_rnn_layer.default:
            self._rnn_workspace(args, out)
        for tensor in _nested.tensors(out):
            if not tensor.is_nested:
                self.track(tensor)
        weight_at = _CONVOLUTIONS.get(func)
        if weight_at is not None and _reorders_weight(args[weight_at]):
            self.peak = max(self.peak, self.live + nbytes(args[weight_at]))
        elif func in _FUSED_ATTENTION:
            self.peak = max(self.peak, self.live + _fused_attention_workspace(func, args))
        elif func in _MATMULS:
            self.peak = max(self.peak, self.live + _expanded_operand_copies(func, args))
        return out


_GROUPED_MM = frozenset(
    getattr(torch.ops.aten, name).default
    for name in ("_grouped_mm", "_scaled_grouped_mm")
    if hasattr(torch.ops.aten, name)
)


def _fake_grouped_mm(args: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The output of ``_grouped_mm`` where its fake kernel refuses the call: torch 2.14's
    accepts bfloat16 and float16 only, while the CPU kernel (what Hugging Face's MoE layers
    call in float32) takes float32 too. Shapes: (M, K) x (G, K, N) -> (M, N);
    (G, M, K) x (G, K, N) -> (G, M, N); (G, M, K) x (K, N) -> (M, N);
    (M, K) x (K, N) with G offsets -> (G, M, N)."""
    a, b = args[0], args[1]
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    shape: tuple[Any, ...]
    if a.dim() == 2 and b.dim() == 3:
        shape = (a.shape[0], b.shape[-1])
    elif a.dim() == 3 and b.dim() == 3:
        shape = (a.shape[0], a.shape[1], b.shape[-1])
    elif a.dim() == 3:
        shape = (a.shape[1], b.shape[-1])
    else:
        groups = offs.shape[0] if offs is not None else 1
        shape = (groups, a.shape[0], b.shape[-1])
    dtype = kwargs.get("out_dtype") or a.dtype
    return a.new_empty(shape, dtype=dtype)


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


#: matrix products and where their matrix operands are
_MATMULS = {torch.ops.aten.mm.default: (0, 1), torch.ops.aten.addmm.default: (1, 2)}


def _expanded_operand_copies(func: Any, args: Any) -> int:
    """A CPU matrix product (``mm``, ``addmm``) copies a matrix operand that is expanded (a
    stride of 0 over a dimension of more than one element) into a dense one before the BLAS
    call, inside the kernel: the backward of a ``sum()`` loss hands the last linear layer an
    expanded gradient (``ones.expand``), whose copy the size of the output is alive while its
    weight gradient is computed."""
    total = 0
    for position in _MATMULS[func]:
        value = args[position]
        if (
            isinstance(value, torch.Tensor)
            and value.device.type == "cpu"
            and any(
                stride == 0 and size > 1
                for size, stride in zip(value.shape, value.stride(), strict=True)
            )
        ):
            total += nbytes(value)
    return total


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


def nbytes(tensor: torch.Tensor) -> int:
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


def _twins(
    model: nn.Module, make: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """A twin of every parameter and buffer, by name (tied tensors stay one twin), made by
    ``make`` from the tensor's ``.data``; a trainable parameter's twin requires grad."""
    twins: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    named = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in named:
        twin = twins.get(id(tensor))
        if twin is None:
            twin = make(tensor.data)
            if isinstance(tensor, nn.Parameter) and tensor.requires_grad:
                twin.requires_grad_(True)
            twins[id(tensor)] = twin
        state[name] = twin
    return state, list(twins.values())


@dataclass(frozen=True)
class _FakeCopy:
    """The model's parameters and buffers and the call's arguments as fake tensors (or, for
    a measured pass, as real tensors: ``mode`` is then a null context)."""

    mode: Any
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
        # .data, not .detach(): a detached tensor shares the version counter, and a
        # forward's in-place write to the twin would bump the real parameter's
        state, persistent = _twins(model, mode.from_tensor)
        fake_args, fake_kwargs = _nested.map_tensors((args, kwargs), mode.from_tensor)
    return _FakeCopy(mode, state, persistent, fake_args, fake_kwargs)


def _real_copy(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _FakeCopy:
    """Twins that share the real storages: a measured pass allocates what a real step does
    beyond them. Parameters are detached leaves (their gradients land on the twins, never on
    the model's ``.grad``); the arguments are copied, so an in-place first op cannot reach the
    caller's tensors. Writes into parameters and buffers are undone by ``instrumented``."""
    state, persistent = _twins(model, torch.Tensor.detach)
    real_args, real_kwargs = _nested.map_tensors((args, kwargs), lambda t: t.detach().clone())
    return _FakeCopy(contextlib.nullcontext(), state, persistent, real_args, real_kwargs)


def _where(error: BaseException, model: nn.Module) -> str:
    """The innermost module of ``model`` whose code the exception's traceback passes through
    (read from the frames' ``self``: hooks would change which kernels some modules run)."""
    names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            name = names[id(owner)]
            return f"module {name!r}" if name else "the model's own forward"
    return (
        "the backward pass" if any(f.f_code.co_name == "backward" for f in frames) else "the model"
    )


@contextlib.contextmanager
def _quiet_fake_logs() -> Iterator[None]:
    """FakeTensorMode logs a full traceback at ERROR level when a fake kernel fails, before it
    raises: the exception is ours to explain, so its loggers are held quiet during a pass."""
    loggers = [logging.getLogger(name) for name in _FAKE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


_FAKE_LOGGERS = ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes")


class PassFailed(Exception):
    """A pass raised: ``error`` is the exception, ``where`` the module call it came from."""

    def __init__(self, error: BaseException, where: str) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error
        self.where = where

    def describe(self) -> str:
        op = getattr(self.error, "func", None)
        if isinstance(self.error, _DATA_DEPENDENT) and op is not None:
            if isinstance(self.error, UnsupportedOperatorException):
                what = "has no fake (shape-only) kernel"
            elif isinstance(self.error, DynamicOutputShapeException):
                what = "has a data-dependent output shape"
            else:
                what = "has a data-dependent value"
            return f"{op} {what} (in {self.where})"
        first = str(self.error).strip().splitlines()[0] if str(self.error).strip() else ""
        return f"{type(self.error).__name__} in {self.where}: {first}"


#: what only the real tensors can answer, named by its op
_DATA_DEPENDENT = (
    DynamicOutputShapeException,
    DataDependentOutputException,
    UnsupportedOperatorException,
)


def _run(model: nn.Module, fake: _FakeCopy, *, train: bool) -> tuple[int, int, int]:
    """(peak, bytes live after the forward, bytes live before it) of one pass.

    Each pass is instrumented on its own: what one forward leaves on the model (a cache in
    a plain attribute) is undone before the next, so each starts from the model as found.
    Raises :class:`PassFailed` naming the module call that raised.
    """
    live = _LiveBytes()
    for tensor in [*fake.persistent, *_nested.tensors((fake.args, fake.kwargs))]:
        live.track(tensor)
    before = live.live
    # the cycle collector held off for the pass: tensors that a reference cycle holds (an
    # output object that points back to its container, as Hugging Face caches do) are then
    # alive until the pass ends in every run; with the collector on they were freed whenever
    # it happened to run, so the same model's training peak changed with what the process
    # had done before
    with instrumented(model, grad=train), collector_paused(), _quiet_fake_logs():
        try:
            with fake.mode, live:
                model.train(train)
                # a copy of the name table: a forward that rebinds a parameter changes this pass only
                state = dict(fake.state)
                output = torch.func.functional_call(
                    model, state, fake.args, fake.kwargs, strict=False
                )
                after_forward = live.live
                roots = [
                    t for t in _nested.tensors(output) if t.requires_grad and t.grad_fn is not None
                ]
                del output  # a training loop keeps the loss, not the output
                if train and roots:
                    loss = roots[0].sum()  # a scalar loss: its gradient seeds the outputs
                    for root in roots[1:]:
                        loss = loss + root.sum()
                    del roots
                    loss.backward()
        except Exception as error:
            raise PassFailed(error, _where(error, model)) from error
    return live.peak, after_forward, before


@dataclass(frozen=True)
class Passes:
    """What the two passes found: peaks, the training forward's live bytes, and notes."""

    inference_peak: int
    training_peak: int | None  # None: the training step could not run (``training_error``)
    after_forward: int
    before: int
    measured: str  # why a pass ran on real tensors ("" when both ran on fake ones)
    training_error: str


def run_passes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Passes:
    """The inference pass, then the training pass, each on fake tensors where it can be.

    A pass that fake tensors cannot run (an op whose output shape or value depends on the
    data, such as ``nonzero`` in detection and ``.item()``; a custom op without a fake
    kernel; a fake kernel stricter than the real one) is run again on the real tensors,
    measured the same way (a real forward, and backward for training). A training step
    that cannot run at all (BatchNorm on a batch of one, a detection model asking for
    targets) leaves the inference peak and says why. An inference pass that fails on the
    real tensors too raises ``PassFailed``.
    """
    fake: _FakeCopy | None = _fake_copy(model, args, kwargs)
    real: _FakeCopy | None = None
    measured = ""

    def one(train: bool) -> tuple[int, int, int]:
        nonlocal fake, real, measured
        reason = ""
        if fake is not None:
            try:
                return _run(model, fake, train=train)
            except PassFailed as failed:
                reason = failed.describe()
        if real is None:
            real = _real_copy(model, args, kwargs)
        result = _run(model, real, train=train)  # raises the real failure, if any
        if reason:  # fake tensors failed where real ones did not: the other pass meets it too
            fake, measured = None, f"measured on the real tensors: {reason}"
        return result

    # the inference pass first: the training pass's backward leaves .grad on the twins
    inference_peak, _, _ = one(False)
    try:
        training_peak, after_forward, before = one(True)
    except PassFailed as failed:
        return Passes(inference_peak, None, 0, 0, measured, failed.describe())
    return Passes(inference_peak, training_peak, after_forward, before, measured, "")
