"""The passes behind the memory estimate: a dispatch mode that follows live bytes, the
kernels' internal workspaces it models, and the inference and training passes on fake
tensors, measured on the real tensors where fake ones cannot know a shape.
"""

from __future__ import annotations

import contextlib
import gc
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
from torchscope.collect._preserved_state import OpCall, parameter_writes_inline, plain_call
from torchscope.collect._shape_only import ShapeOnly, shape_only_allowed
from torchscope.collect.hooks import instrumented

__all__ = ["MEASURED_BUDGET", "PassFailed", "Passes", "nbytes", "run_passes"]


# convolution ops and the position of their weight argument
_CONVOLUTIONS = {
    torch.ops.aten.convolution.default: 1,
    torch.ops.aten._convolution.default: 1,
    torch.ops.aten.convolution_backward.default: 2,
}


class _OverBudget(Exception):
    """A measured pass came to hold more than its budget of bytes."""


class _LiveBytes(TorchDispatchMode):
    """Follows the storages that ops create and records the peak of the bytes alive.

    ``budget``: a pass on real tensors is abandoned (:class:`_OverBudget`) as soon as the
    bytes it allocated pass this many. ``run_op`` runs each op (the parameter-write guard's
    handler, and the shape-only forward's, stand in for their own modes: one Python mode per
    op)."""

    def __init__(self, budget: int | None = None) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.budget = budget
        self.base = 0  # bytes that existed before the pass (parameters, inputs)
        self.run_op: OpCall = plain_call
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
        if self.live > self.peak:
            self.peak = self.live
            if self.budget is not None and self.peak - self.base > self.budget:
                raise _OverBudget(f"the pass holds more than {self.budget} bytes")

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
            out = self.run_op(func, args, kwargs)
        except RuntimeError:
            if func not in _GROUPED_MM or not isinstance(args[0], FakeTensor):
                raise
            out = _fake_grouped_mm(args, kwargs)
        if func is torch.ops.aten.mkldnn_rnn_layer.default:
            self._rnn_workspace(args, out)
        for tensor in _outputs(out):
            if not tensor.is_nested:
                self.track(tensor)
        weight_at = _CONVOLUTIONS.get(func)
        if weight_at is not None and _reorders_weight(args[weight_at]):
            self.peak = max(self.peak, self.live + nbytes(args[weight_at]))
        elif func in _FUSED_ATTENTION:
            self.peak = max(self.peak, self.live + _fused_attention_workspace(func, args))
        elif func in _MATMULS:
            self.peak = max(self.peak, self.live + _expanded_operand_copies(args))
        return out


def _outputs(out: Any) -> Any:
    """The tensors an op returned (aten ops return a tensor, or a tuple or list of them)."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        flat: list[torch.Tensor] = []
        for value in out:
            if isinstance(value, torch.Tensor):
                flat.append(value)
            elif isinstance(value, (tuple, list)):
                flat.extend(v for v in value if isinstance(v, torch.Tensor))
        return flat
    return _nested.tensors(out)


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


_MATMULS = frozenset(
    {
        torch.ops.aten.mm.default,
        torch.ops.aten.addmm.default,
        torch.ops.aten.bmm.default,
        torch.ops.aten.baddbmm.default,
    }
)


def _expanded_operand_copies(args: Any) -> int:
    """A CPU matrix product copies an operand that is expanded (a stride of 0 over a
    dimension of more than one element) into a dense one before the BLAS call, inside the
    kernel: the backward of a ``sum()`` loss hands the last linear layer an expanded
    gradient (``ones.expand``), whose copy the size of the output is alive while its weight
    gradient is computed."""
    total = 0
    for value in args[:3]:
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


def _run(
    model: nn.Module,
    fake: _FakeCopy,
    *,
    train: bool,
    budget: int | None = None,
    shape_only: bool = False,
) -> tuple[int, int, int]:
    """(peak, bytes live after the forward, bytes live before it) of one pass.

    Each pass is instrumented on its own: what one forward leaves on the model (a cache in
    a plain attribute) is undone before the next, so each starts from the model as found.
    ``budget`` and ``shape_only`` are for passes on real tensors: the pass stops once it
    holds more than ``budget`` bytes beyond the parameters and inputs, and skips the
    arithmetic of its heavy ops (``_shape_only``: outputs of the right size, not computed).
    Raises :class:`PassFailed` naming the module call that raised.
    """
    live = _LiveBytes()
    for tensor in [*fake.persistent, *_nested.tensors((fake.args, fake.kwargs))]:
        live.track(tensor)
    before = live.base = live.live
    live.budget = budget
    with instrumented(model, grad=train), _cycles_kept(), _quiet_fake_logs():
        try:
            with fake.mode, parameter_writes_inline() as run_op:
                if shape_only:
                    skipping = ShapeOnly()
                    skipping.run_op = run_op
                    run_op = skipping.call
                live.run_op = run_op
                with live:
                    model.train(train)
                    # a copy of the name table: a forward that rebinds a parameter changes
                    # this pass only
                    state = dict(fake.state)
                    output = torch.func.functional_call(
                        model, state, fake.args, fake.kwargs, strict=False
                    )
                    after_forward = live.live
                    roots = [
                        t
                        for t in _nested.tensors(output)
                        if t.requires_grad and t.grad_fn is not None
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


#: a pass on a CPU model's own tensors is abandoned for one on fake tensors as soon as it
#: holds this many bytes beyond the parameters and inputs
MEASURED_BUDGET = 256 << 20


def run_passes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Passes:
    """The inference pass, then the training pass (see :class:`_Plan` for which tensors).

    A training step that cannot run at all (BatchNorm on a batch of one, a detection model
    asking for targets) leaves the inference peak and says why. An inference pass that
    fails on the real tensors raises ``PassFailed``.
    """
    plan = _Plan(model, args, kwargs)
    # the inference pass first: the training pass's backward leaves .grad on the twins
    inference_peak, _, _ = plan.run(train=False)
    try:
        training_peak, after_forward, before = plan.run(train=True)
    except PassFailed as failed:
        return Passes(inference_peak, None, 0, 0, plan.measured, failed.describe())
    return Passes(inference_peak, training_peak, after_forward, before, plan.measured, "")


class _Plan:
    """Which tensors the passes run on.

    - A model whose parameters, buffers and inputs are plain CPU tensors is **measured**: the
      pass runs on twins that share the real storages, without the arithmetic of its heavy
      ops (``_shape_only``; with real arithmetic where a value is read, or where hooks of
      yours would see the values), and stops as soon as it holds more than
      :data:`MEASURED_BUDGET` bytes: a model too big to run is still sized, on fake tensors.
      About ten times cheaper than fake tensors, whose every op costs Python work.
    - Otherwise (GPU, meta, a pass over budget) on **fake** tensors: nothing is allocated.
    - A pass that fake tensors cannot run (an op whose output shape or value depends on the
      data, such as ``nonzero`` in detection and ``.item()``; a custom op without a fake
      kernel; a fake kernel stricter than the real one) runs again on the real tensors, with
      no budget, and ``measured`` says why.
    """

    def __init__(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs
        self.budgeted = _on_cpu(model, args, kwargs)
        self.shape_only = self.budgeted and shape_only_allowed(
            model, list(model.modules()), isinstance(model, torch.jit.ScriptModule)
        )
        self.fake_runs = True
        self.measured = ""
        self._real: _FakeCopy | None = None
        self._fake: _FakeCopy | None = None

    def run(self, *, train: bool) -> tuple[int, int, int]:
        if self.budgeted:
            try:
                return self._measure(train, MEASURED_BUDGET)
            except PassFailed as failed:
                if not isinstance(failed.error, _OverBudget):
                    raise
                self.budgeted = False  # too big to run here: fake tensors from now on
        reason = ""
        if self.fake_runs:
            if self._fake is None:
                self._fake = _fake_copy(self.model, self.args, self.kwargs)
            try:
                return _run(self.model, self._fake, train=train)
            except PassFailed as failed:
                reason = failed.describe()
        result = self._measure(train, None)  # raises the real failure, if any
        if reason:  # fake tensors failed where real ones did not: the other pass meets it too
            self.fake_runs, self.measured = False, f"measured on the real tensors: {reason}"
        return result

    def _measure(self, train: bool, budget: int | None) -> tuple[int, int, int]:
        if self._real is None:
            self._real = _real_copy(self.model, self.args, self.kwargs)
        if self.shape_only:
            try:
                return _run(self.model, self._real, train=train, budget=budget, shape_only=True)
            except PassFailed as failed:
                if isinstance(failed.error, _OverBudget):
                    raise
                self.shape_only = False  # a value was read: real arithmetic from now on
        return _run(self.model, self._real, train=train, budget=budget)


def _on_cpu(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every parameter, buffer and input is a plain CPU tensor (not meta, not a
    GPU's, not a subclass such as DTensor or a quantised tensor)."""
    tensors = [*model.parameters(), *model.buffers(), *_nested.tensors((args, kwargs))]
    return all(type(t.data) is torch.Tensor and t.device.type == "cpu" for t in tensors)
