"""Collector behind ``torchscope.summary``: exact parameters, shapes and costs, no side effects.

The entry point and its forward pass live here; the pieces it is built from sit beside it:
``_summary_args`` (modes, column sets, argument checks), ``_module_tree`` (one walk over the
module tree), ``_call_recorder`` (the hooks that record module calls, and the failure
message) and ``_parameter_summary`` (``summary(model)`` without an input).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _python_dispatch

import torchscope._util.nested as _nested
from torchscope._util.inputs import (
    DeviceLike,
    ShapeLike,
    call_arguments,
    model_devices,
    resolve_device,
    unwrap,
)
from torchscope.collect._call_recorder import (
    CallRecorder,
    failure_message,
    inclusive_costs,
    uncalled,
)
from torchscope.collect._module_tree import index_model, tree_layers
from torchscope.collect._parameter_summary import parameter_summary
from torchscope.collect._preserved_state import ParameterWriteGuard, parameter_writes_inline
from torchscope.collect._shape_only import ShapeOnly, shape_only_allowed
from torchscope.collect._summary_args import (
    DEFAULT_COLUMNS,
    MODES,
    Mode,
    check_columns,
    check_depth,
)
from torchscope.collect._summary_args import FORWARD_COLUMNS as FORWARD_COLUMNS
from torchscope.collect._summary_args import PARAMETER_COLUMNS as PARAMETER_COLUMNS
from torchscope.collect._summary_args import (
    PARAMETER_DEFAULT_COLUMNS as PARAMETER_DEFAULT_COLUMNS,
)
from torchscope.collect._torchscript import is_script, plain_execution, type_name
from torchscope.collect.costs import FUSED_RECURRENT, CostCounter, recurrent_macs
from torchscope.collect.hooks import initialised, instrumented
from torchscope.collect.memory import estimate_from_arguments, optimizer_state_bytes
from torchscope.errors import SummaryError, TorchscopeWarning
from torchscope.records import ModelSummary

__all__ = ["DEFAULT_COLUMNS", "summary"]


def summary(
    model: nn.Module,
    input: Any = None,
    *,
    input_size: ShapeLike | Sequence[ShapeLike] | None = None,
    dtypes: torch.dtype | Sequence[torch.dtype] | None = None,
    device: DeviceLike | None = None,
    depth: int = 3,
    columns: Iterable[str] | str | None = None,
    mode: Mode = "eval",
    forward_kwargs: Mapping[str, Any] | None = None,
    all_ops: bool = False,
    memory: bool = False,
    optimizer: torch.optim.Optimizer | str | None = None,
) -> ModelSummary:
    """Return a :class:`~torchscope.records.ModelSummary` of one forward pass of ``model``.

    The model is left exactly as found, whether this returns or raises: ``state_dict``
    (BatchNorm statistics included), every module's ``training`` flag, ``requires_grad``,
    ``.grad``, its device, its hooks and the global RNG streams.

    Without ``input``, ``input_size`` and ``forward_kwargs`` the model is not run: the summary
    is read from the module tree (``parameters_only``): every module with its parameter
    counts, the totals and the trainable split, no shapes or costs. Lazy modules show their
    uninitialised parameters, TorchScript modules their scripted parameters. To run a
    forward that takes no arguments, pass ``input=()``.

    Args:
        model: the module to summarise. DataParallel, DistributedDataParallel and
            ``torch.compile`` wrappers are unwrapped and the inner module summarised.
        input: what to call the model with: a tensor; a tuple or list of positional
            arguments; a dict of keyword arguments; any nesting of these. Non-tensor values
            pass through untouched. To pass one list as the only argument, wrap it:
            ``input=(my_list,)``. A namedtuple is one argument.
        input_size: instead of ``input``, a shape or a list of shapes; random tensors are
            made with a private generator (the global RNG is not consumed).
        dtypes: dtype(s) for the ``input_size`` tensors; default: the model's parameter dtype.
        device: where ``input_size`` tensors are made and ``input`` tensors are moved;
            default: the model's device. torchscope never moves the model: if it is elsewhere,
            this raises ``ValueError``.
        depth: how many levels of nesting the table shows (``layers`` always has every call).
        columns: table columns, from ``torchscope.records.SUMMARY_COLUMNS``;
            default ``("input_shape", "output_shape", "params", "macs")``; without an input
            default ``("params", "subtree_params", "trainable")``, and columns of shapes
            or costs are refused.
        mode: ``"eval"`` (``model.eval()``, no autograd), ``"train"`` (``model.train()``,
            autograd on, backward MACs counted too) or ``"same"`` (flags as they are).
            Flags are restored afterwards.
        forward_kwargs: extra keyword arguments for ``forward``.
        all_ops: also count FLOPs of ops without multiply-accumulates (elementwise,
            reductions, normalisation, softmax, pooling); MACs are unaffected.
        memory: also estimate the peak memory of an inference forward and of a training
            step (``summary.memory``), on fake tensors: nothing is allocated, but it runs the
            model twice more, so it is off by default.
        optimizer: with ``memory=True``, add this optimizer's state to the training peak (an
            optimizer object or a name such as ``"adam"``; see ``torchscope.estimate_memory``).

    Raises:
        SummaryError: the forward pass failed; the message names the failing module, its
            input shapes, and shows the layers that ran.
        TypeError, ValueError: the arguments are wrong; the message says how to fix them.
    """
    if input is None and input_size is None and forward_kwargs is None:
        return parameter_summary(
            model,
            depth=depth,
            columns=columns,
            mode=mode,
            dtypes=dtypes,
            device=device,
            all_ops=all_ops,
            memory=memory,
            optimizer=optimizer,
        )
    model = unwrap(model, caller="summary", allow_script=True)
    # a scripted or traced model takes no hooks: one call, recorded by hand, and its module tree
    scripted_root = is_script(model)
    depth = check_depth(depth)
    columns = check_columns(columns)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    if optimizer is not None and not memory:
        raise ValueError("optimizer= only adds to the memory estimate: pass memory=True too")
    input_device = resolve_device(model_devices(model), device)
    args, kwargs = call_arguments(
        model, input, input_size, dtypes, device, input_device, forward_kwargs
    )
    # a model with lazy modules is summarised as an initialised copy: it stays as found
    model = initialised(model, args, kwargs, call="summary", error=SummaryError)
    optimizer_state = optimizer_state_bytes(model, optimizer) if memory else 0
    index = index_model(model, hookable=not scripted_root)

    def attempt(shape_only: ShapeOnly | None) -> tuple[ModelSummary, CallRecorder]:
        """One instrumented forward (and backward); ``shape_only`` skips heavy arithmetic."""
        modules = index.modules
        recorder = CallRecorder(modules)
        counter = CostCounter(recorder.current_call, all_ops=bool(all_ops))

        def build(
            output_shapes: tuple[_nested.Shape, ...],
            output_bytes: int,
            table_depth: int,
            *,
            complete: bool,
            backward: tuple[int, int] | None = None,
        ) -> ModelSummary:
            inclusive = inclusive_costs(recorder.calls, counter)
            return ModelSummary(
                model_type=type_name(model),
                layers=tuple(
                    call.freeze(modules[call.module_id], counter, inclusive)
                    for call in recorder.calls
                ),
                parameters=index.parameters,
                buffers=index.buffers,
                input_shapes=_nested.shapes((args, kwargs)),
                output_shapes=output_shapes,
                input_bytes=_nested.tensor_bytes((args, kwargs)),
                output_bytes=output_bytes,
                uncalled=uncalled(modules, recorder.calls) if complete else (),
                scripted=index.scripted,
                depth=table_depth,
                columns=columns,
                mode=mode,
                device=str(input_device),
                total_macs=sum(counter.macs.values()),
                total_flops=sum(counter.flops.values()),
                backward_macs=None if backward is None else backward[0],
                backward_flops=None if backward is None else backward[1],
                uncounted_ops=dict(sorted(counter.uncounted.items())),
                all_ops=bool(all_ops),
            )

        grad = model.training if mode == "same" else mode == "train"
        with instrumented(model, grad=grad) as hooks:
            if mode != "same":
                model.train(mode == "train")
            for module in [] if scripted_root else index.module_objects:
                hooks.add(
                    module.register_forward_pre_hook(recorder.enter, with_kwargs=True, prepend=True)
                )
                hooks.add(
                    module.register_forward_hook(recorder.leave, with_kwargs=True, always_call=True)
                )
                if type(module) in FUSED_RECURRENT and not all_ops:
                    hooks.add(_priced_from_weights(module, counter, shape_only))
            try:
                with _counting(counter, shape_only), plain_execution(bool(index.scripted)):
                    output = _call_model(model, args, kwargs, recorder, hooked=not scripted_root)
            except Exception as error:
                if shape_only is not None:
                    raise
                origin = recorder.origin_of(error)
                failed_depth = max([depth, *(c.depth for c in recorder.calls if c.failed)])
                partial = build((), 0, failed_depth, complete=False)
                raise SummaryError(
                    failure_message(
                        error, origin, partial, no_input=input is None and input_size is None
                    ),
                    module_name=origin.name if origin else "",
                    module_type=origin.type if origin else type(model).__name__,
                    input_shapes=origin.input_shapes if origin else (),
                    partial=partial,
                ) from error
            # backward may re-run module forwards (activation checkpointing): those are not calls
            # of the summarised pass, so the hooks come off first
            hooks.remove_all()
            backward = (
                _count_backward(model, output, counter, shape_only) if mode == "train" else None
            )
            result = build(
                _nested.shapes(output),
                _nested.tensor_bytes(output),
                depth,
                complete=True,
                backward=backward,
            )
            if scripted_root:  # the root's call, then the modules inside it (not calls: no hooks)
                tree = tree_layers(model, index.modules)
                result = dataclasses.replace(result, layers=(result.layers[0], *tree[1:]))
            del output
        return result, recorder

    result: ModelSummary | None = None
    if (
        not _needed_values(model)
        and shape_only_allowed(model, index.module_objects, bool(index.scripted))
        and _worth_it(model, (args, kwargs))
    ):
        try:
            result, recorder = attempt(ShapeOnly())
        except Exception:  # values were needed (or garbage upset an op): run them for real
            result = None
            with contextlib.suppress(TypeError):  # a module that cannot be hashed: not kept
                _NEEDED_VALUES[model] = True
    if result is None:
        result, recorder = attempt(None)
    if memory:
        result = _with_memory(result, model, args, kwargs, optimizer_state)
    if recorder.internal_errors:
        first = recorder.internal_errors[0]
        warnings.warn(
            f"torchscope could not record {len(recorder.internal_errors)} module call(s) "
            f"({type(first).__name__}: {first}); the summary may miss layers. Please report this.",
            TorchscopeWarning,
            stacklevel=2,
        )
    return result


class _Restore:
    """A handle whose ``remove()`` takes the summary's ``forward`` off a module again."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _priced_from_weights(
    module: nn.Module, counter: CostCounter, shape_only: ShapeOnly | None
) -> _Restore:
    """Runs a recurrent module's forward with the Python dispatch modes off, and charges its
    MACs from its weights (``costs.recurrent_macs``).

    Under a Python dispatch mode, an RNN runs one aten op per step and gate, each through
    Python (434 ops for a small bidirectional GRU, against one fused kernel): the summary
    then cost five times what the forward does. The modes taken off are the summary's own
    (the cost counter, and the parameter-write guard: ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``
    never write to their parameters); a mode of yours stays on.
    """
    original = module.forward

    def forward(input: Any, *args: Any, **kwargs: Any) -> Any:
        with _modes_off((CostCounter, ShapeOnly, ParameterWriteGuard)):
            output = original(input, *args, **kwargs)
        if shape_only is not None and shape_only.marked(_nested.tensors((input, args, kwargs))):
            shape_only.mark(_nested.tensors(output))  # computed from values that are garbage
        counter.charge(recurrent_macs(module, input))  # type: ignore[arg-type]
        return output

    module.__dict__["forward"] = forward
    return _Restore(module)


@contextlib.contextmanager
def _counting(counter: CostCounter, shape_only: ShapeOnly | None) -> Iterator[None]:
    """The cost counter on for the block, as the one dispatch mode of the summary's: the
    shape-only forward and the parameter-write guard run inside its handler, in that order
    (as three stacked modes would run them), where stacked Python modes cost a few
    microseconds each per op."""
    with parameter_writes_inline() as run_op:
        if shape_only is not None:
            shape_only.run_op = run_op
            run_op = shape_only.call
        counter.run_op = run_op
        with counter:
            yield


#: models whose shape-only forward had to give way to the real one (detection models read
#: their scores): a later summary of the same model runs the real forward at once
_NEEDED_VALUES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _needed_values(model: nn.Module) -> bool:
    try:
        return model in _NEEDED_VALUES
    except TypeError:  # __eq__ without __hash__: never kept
        return False


#: the shape-only forward costs some bookkeeping on every op once a value is marked; it
#: pays only where some op reaches ``_shape_only.MIN_MACS``, which needs a large weight
#: times a large input: below this product of their element counts it is not tried
WORTH_SKIPPING = 1 << 27


def _worth_it(model: nn.Module, inputs: Any) -> bool:
    weight = max((int(p.numel()) for p in model.parameters()), default=0)
    data = max((int(t.numel()) for t in _nested.tensors(inputs)), default=0)
    return weight * data >= WORTH_SKIPPING


@contextlib.contextmanager
def _modes_off(kinds: tuple[type, ...]) -> Iterator[None]:
    """The dispatch modes of these kinds at the top of the stack, off for the block."""
    with contextlib.ExitStack() as stack:
        while isinstance(_python_dispatch._get_current_dispatch_mode(), kinds):
            stack.enter_context(_python_dispatch._pop_mode_temporarily())
        yield


def _call_model(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    recorder: CallRecorder,
    *,
    hooked: bool,
) -> Any:
    """``model(*args, **kwargs)``; a model without hooks (TorchScript) is recorded as one call."""
    if hooked:
        return model(*args, **kwargs)
    recorder.enter(model, args, kwargs)
    try:
        output = model(*args, **kwargs)
    except BaseException:
        recorder.leave_unhooked(model, args, kwargs, None, raising=True)
        raise
    recorder.leave_unhooked(model, args, kwargs, output, raising=False)
    return output


def _with_memory(
    result: ModelSummary,
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    optimizer_state: int,
) -> ModelSummary:
    """The summary with its memory estimate, or the reason there is none."""
    try:
        estimate = estimate_from_arguments(model, args, kwargs, optimizer_state=optimizer_state)
    except Exception as e:  # an op fake tensors cannot run (data-dependent shapes, custom kernels)
        return dataclasses.replace(result, memory_error=f"{type(e).__name__}: {e}")
    return dataclasses.replace(result, memory=estimate)


def _count_backward(
    model: nn.Module, output: Any, counter: CostCounter, shape_only: ShapeOnly | None = None
) -> tuple[int, int]:
    """MACs and FLOPs of the backward pass a training step would run from ``output``.

    Uses ``torch.autograd.grad`` with the trainable parameters as inputs, so the real backward
    ops run but no ``.grad`` is written. The seed gradients are made before counting starts.
    """
    roots = [t for t in _nested.tensors(output) if t.requires_grad and t.grad_fn is not None]
    params = [p for p in model.parameters() if p.requires_grad]
    if not roots or not params:
        return 0, 0
    seeds = [torch.ones_like(t) for t in roots]
    counter.backward = True
    try:
        with _counting(counter, shape_only):
            torch.autograd.grad(roots, params, grad_outputs=seeds, allow_unused=True)
    except Exception as e:
        if shape_only is not None:
            raise
        raise SummaryError(
            f"the backward pass of mode='train' failed: {type(e).__name__}: {e}"
        ) from e
    finally:
        counter.backward = False
    return counter.backward_macs, counter.backward_flops
