"""Collector behind ``torchscope.summary``: exact parameters, shapes and costs, no side effects."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parameter import is_lazy

import torchscope._util.nested as _nested
from torchscope._util.format import format_shapes
from torchscope._util.inputs import (
    DeviceLike,
    ShapeLike,
    call_arguments,
    model_devices,
    resolve_device,
    unwrap,
)
from torchscope.collect._torchscript import is_script, plain_execution, type_name
from torchscope.collect.costs import CostCounter
from torchscope.collect.hooks import initialised, instrumented
from torchscope.collect.memory import estimate_from_arguments, optimizer_state_bytes
from torchscope.errors import SummaryError, TorchscopeWarning
from torchscope.records import SUMMARY_COLUMNS, LayerRecord, ModelSummary, TensorRecord

__all__ = ["DEFAULT_COLUMNS", "summary"]

Mode = Literal["eval", "train", "same"]
MODES: tuple[str, ...] = ("eval", "train", "same")
DEFAULT_COLUMNS: tuple[str, ...] = ("input_shape", "output_shape", "params", "macs")
#: The columns of a summary made without an input (``summary(model)``), and its default.
PARAMETER_COLUMNS: tuple[str, ...] = ("params", "params_percent", "subtree_params", "trainable")
PARAMETER_DEFAULT_COLUMNS: tuple[str, ...] = ("params", "subtree_params", "trainable")


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
        return _parameter_summary(
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
    depth = _check_depth(depth)
    columns = _check_columns(columns)
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
    index = _index_model(model, hookable=not scripted_root)

    modules = index.modules
    recorder = _CallRecorder(modules)
    counter = CostCounter(recorder.current_call, all_ops=bool(all_ops))

    def build(
        output_shapes: tuple[_nested.Shape, ...],
        output_bytes: int,
        table_depth: int,
        *,
        complete: bool,
        backward: tuple[int, int] | None = None,
    ) -> ModelSummary:
        inclusive = _inclusive_costs(recorder.calls, counter)
        return ModelSummary(
            model_type=type_name(model),
            layers=tuple(
                call.freeze(modules[call.module_id], counter, inclusive) for call in recorder.calls
            ),
            parameters=index.parameters,
            buffers=index.buffers,
            input_shapes=_nested.shapes((args, kwargs)),
            output_shapes=output_shapes,
            input_bytes=_nested.tensor_bytes((args, kwargs)),
            output_bytes=output_bytes,
            uncalled=_uncalled(modules, recorder.calls) if complete else (),
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
        try:
            with counter, plain_execution(bool(index.scripted)):
                output = _call_model(model, args, kwargs, recorder, hooked=not scripted_root)
        except Exception as error:
            origin = recorder.origin_of(error)
            failed_depth = max([depth, *(c.depth for c in recorder.calls if c.failed)])
            partial = build((), 0, failed_depth, complete=False)
            raise SummaryError(
                _failure_message(
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
        backward = _count_backward(model, output, counter) if mode == "train" else None
        result = build(
            _nested.shapes(output),
            _nested.tensor_bytes(output),
            depth,
            complete=True,
            backward=backward,
        )
        if scripted_root:  # the root's call, then the modules inside it (not calls: no hooks)
            tree = _tree_layers(model, index.modules)
            result = dataclasses.replace(result, layers=(result.layers[0], *tree[1:]))
        del output
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


def _call_model(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    recorder: _CallRecorder,
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


def _count_backward(model: nn.Module, output: Any, counter: CostCounter) -> tuple[int, int]:
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
        with counter:
            torch.autograd.grad(roots, params, grad_outputs=seeds, allow_unused=True)
    except Exception as e:
        raise SummaryError(
            f"the backward pass of mode='train' failed: {type(e).__name__}: {e}"
        ) from e
    finally:
        counter.backward = False
    return counter.backward_macs, counter.backward_flops


def _inclusive_costs(calls: list[_Call], counter: CostCounter) -> dict[int, tuple[int, int]]:
    """Per call index: MACs and FLOPs of the call and everything it called."""
    totals = {call.index: [counter.macs[call.index], counter.flops[call.index]] for call in calls}
    for call in reversed(calls):  # children come after their parent
        if call.parent is not None:
            totals[call.parent][0] += totals[call.index][0]
            totals[call.parent][1] += totals[call.index][1]
    return {index: (macs, flops) for index, (macs, flops) in totals.items()}


# -- without an input: the module tree ----------------------------------------------------------

#: Columns that need a forward pass: refused in a summary without an input.
FORWARD_COLUMNS = ("input_shape", "output_shape", "macs", "flops")


def _parameter_summary(
    model: nn.Module,
    *,
    depth: int,
    columns: Iterable[str] | str | None,
    mode: str,
    dtypes: Any,
    device: DeviceLike | None,
    all_ops: bool,
    memory: bool,
    optimizer: Any,
) -> ModelSummary:
    """The summary of ``summary(model)``: read from the module tree, the model never runs."""
    if not isinstance(model, torch.jit.ScriptModule):  # its parameters are readable: no unwrap
        model = unwrap(model)
    depth = _check_depth(depth)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    run_it = (
        "no input was given, so the model is not run: pass one, e.g. summary(model, x) or "
        "summary(model, input_size=(1, 3, 224, 224))"
    )
    if columns is None:
        chosen = PARAMETER_DEFAULT_COLUMNS
    else:
        chosen = _check_columns(columns)
        needing = [c for c in chosen if c in FORWARD_COLUMNS]
        if needing:
            raise ValueError(
                f"column(s) {', '.join(map(repr, needing))} need a forward pass, and {run_it}; "
                f"or choose from {', '.join(map(repr, PARAMETER_COLUMNS))}"
            )
    for option, given in (
        ("dtypes=", dtypes is not None),
        ("all_ops=True", bool(all_ops)),
        ("memory=True", bool(memory)),
        ("optimizer=", optimizer is not None),
    ):
        if given:
            raise ValueError(f"{option} applies to the forward pass, and {run_it}")
    index = _index_model(model, hookable=False)
    return ModelSummary(
        model_type=type_name(model),
        layers=_tree_layers(model, index.modules),
        parameters=index.parameters,
        buffers=index.buffers,
        input_shapes=(),
        output_shapes=(),
        input_bytes=0,
        output_bytes=0,
        uncalled=(),
        scripted=index.scripted,
        depth=depth,
        columns=chosen,
        mode=mode,
        device=str(resolve_device(index.devices, device)),
        parameters_only=True,
    )


def _tree_layers(model: nn.Module, modules: dict[int, _ModuleInfo]) -> tuple[LayerRecord, ...]:
    """One row per module of the tree, parents before children, iteratively.

    A module held under several names gets a row under each, but its submodules are drawn
    only under the first: the rows stay as many as the tree's edges however modules share.
    """
    layers: list[LayerRecord] = []
    drawn: set[int] = set()
    stack: list[tuple[str, nn.Module, int, int | None]] = [("", model, 0, None)]
    while stack:
        name, module, depth, parent = stack.pop()
        info = modules[id(module)]
        layers.append(
            LayerRecord(
                index=len(layers),
                name=name,
                type=info.type,
                depth=depth,
                parent=parent,
                input_shapes=(),
                output_shapes=(),
                params=info.params,
                trainable_params=info.trainable,
                own_parameters=info.own,
                subtree_parameters=info.subtree,
                is_repeat=False,
            )
        )
        if id(module) in drawn:
            continue
        drawn.add(id(module))
        prefix = f"{name}." if name else ""
        children = [(k, c) for k, c in module._modules.items() if c is not None]
        parent_index = len(layers) - 1
        stack.extend(
            (prefix + local, child, depth + 1, parent_index) for local, child in reversed(children)
        )
    return tuple(layers)


# -- arguments ---------------------------------------------------------------------------------


def _check_depth(depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(
            f"depth must be an int (levels of nesting to show), got {type(depth).__name__}"
        )
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return depth


def _check_columns(columns: Iterable[str] | str | None) -> tuple[str, ...]:
    if columns is None:
        return DEFAULT_COLUMNS
    names = (columns,) if isinstance(columns, str) else tuple(columns)
    unknown = [c for c in names if c not in SUMMARY_COLUMNS]
    if unknown:
        raise ValueError(
            f"unknown column(s) {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(map(repr, SUMMARY_COLUMNS))}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"columns must not repeat a name, got {names}")
    return names


# -- the model's tensors and modules -----------------------------------------------------------


@dataclass
class _ModuleInfo:
    name: str
    type: str
    own: tuple[int, ...] = ()
    subtree: tuple[int, ...] = ()
    params: int = 0
    trainable: int = 0


@dataclass
class _ModelIndex:
    """What one walk over the module tree learns: tensors (with all their names) and modules."""

    parameters: tuple[TensorRecord, ...]
    buffers: tuple[TensorRecord, ...]
    modules: dict[int, _ModuleInfo]  # by id(module), parents before children
    module_objects: list[nn.Module]  # the same order
    devices: list[torch.device]  # where parameters and buffers live, in order of appearance
    scripted: tuple[str, ...]  # TorchScript submodules, which cannot be hooked


def _tensor_records(
    names: dict[int, list[str]], tensors: dict[int, torch.Tensor], *, parameters: bool
) -> list[TensorRecord]:
    records = []
    for key, tensor_names in names.items():
        tensor = tensors[key]
        if is_lazy(tensor):  # no shape to read until the first forward
            records.append(
                TensorRecord(
                    name=tensor_names[0],
                    aliases=tuple(tensor_names[1:]),
                    shape=(),
                    dtype=str(tensor.dtype),
                    numel=0,
                    nbytes=0,
                    trainable=parameters and tensor.requires_grad,
                    initialized=False,
                )
            )
            continue
        numel = tensor.numel()
        records.append(
            TensorRecord(
                name=tensor_names[0],
                aliases=tuple(tensor_names[1:]),
                shape=tuple(tensor.shape),
                dtype=str(tensor.dtype),
                numel=numel,
                nbytes=numel * tensor.element_size(),
                trainable=parameters and tensor.requires_grad,
            )
        )
    return records


def _index_model(model: nn.Module, *, hookable: bool = True) -> _ModelIndex:
    """Walk the module tree once, iteratively, visiting shared modules under each of their names.

    Every name under which a parameter or buffer is reachable is kept (the first is its
    name, the others its aliases), in ``named_parameters(remove_duplicate=False)`` order.
    With ``hookable=False`` (the tree is only read, for a summary without an input),
    TorchScript modules are walked like the others and lazy tensors are not refused.
    """
    param_names: dict[int, list[str]] = {}
    buffer_names: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    order: list[tuple[str, nn.Module]] = []
    first_seen: set[int] = set()
    opaque: dict[int, str] = {}  # TorchScript submodules: no hooks, counted in their parent's row
    scripts: list[str] = []  # with hookable=False: TorchScript modules, walked like the others
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) not in first_seen:
            first_seen.add(id(module))
            order.append((name, module))
        prefix = f"{name}." if name else ""
        if not hookable and isinstance(module, torch.jit.ScriptModule):
            if not any(name.startswith(f"{outer}.") or not outer for outer in scripts):
                scripts.append(name)  # outermost only: the footer names whole scripts
        elif isinstance(module, torch.jit.ScriptModule):
            opaque.setdefault(id(module), name)
            for named, names in (
                (module.named_parameters(prefix=name), param_names),
                (module.named_buffers(prefix=name), buffer_names),
            ):
                for full_name, tensor in named:
                    names.setdefault(id(tensor), []).append(full_name)
                    tensors[id(tensor)] = tensor
            continue  # its submodules cannot be hooked either
        tables: tuple[tuple[dict[str, Any], dict[int, list[str]]], ...] = (
            (module._parameters, param_names),
            (module._buffers, buffer_names),
        )
        for table, names in tables:
            for local, tensor in table.items():
                if tensor is not None:
                    names.setdefault(id(tensor), []).append(prefix + local)
                    tensors[id(tensor)] = tensor
        stack.extend(
            reversed(
                [
                    (prefix + local, child)
                    for local, child in module._modules.items()
                    if child is not None
                ]
            )
        )

    lazy = [
        names[key][0]
        for names in (param_names, buffer_names)
        for key in names
        if is_lazy(tensors[key])
    ]
    if lazy and hookable:  # their shapes cannot even be read
        raise ValueError(
            f"the model has uninitialised lazy parameters ({', '.join(lazy[:3])}); summary "
            "never initialises them, since that would change the model: run one forward pass first"
        )
    parameters = tuple(_tensor_records(param_names, tensors, parameters=True))
    numels = [p.numel for p in parameters]
    trainable = [p.trainable for p in parameters]
    position = {key: i for i, key in enumerate(param_names)}
    infos: dict[int, _ModuleInfo] = {}
    for name, module in order:
        if id(module) in opaque:
            own = dict.fromkeys(position[id(p)] for p in module.parameters())
        else:
            own = dict.fromkeys(
                position[id(p)] for p in module._parameters.values() if p is not None
            )
            for child in module._modules.values():  # what unhookable children hold shows here
                if child is not None and id(child) in opaque:
                    own.update(dict.fromkeys(position[id(p)] for p in child.parameters()))
        infos[id(module)] = _ModuleInfo(
            name=name,
            type=type(module).__name__ if hookable else type_name(module),
            own=tuple(own),
        )
    for _, module in reversed(order):  # children before parents
        info = infos[id(module)]
        subtree = dict.fromkeys(info.own)
        if id(module) not in opaque:
            for child in module._modules.values():
                if child is not None:
                    subtree.update(dict.fromkeys(infos[id(child)].subtree))
        info.subtree = tuple(subtree)
        info.params = sum(numels[i] for i in info.subtree)
        info.trainable = sum(numels[i] for i in info.subtree if trainable[i])
    devices = list(dict.fromkeys(t.device for t in tensors.values()))
    return _ModelIndex(
        parameters=parameters,
        buffers=tuple(_tensor_records(buffer_names, tensors, parameters=False)),
        modules=infos,
        module_objects=[module for _, module in order if id(module) not in opaque],
        devices=devices,
        scripted=tuple(opaque.values()) if hookable else tuple(scripts),
    )


def _uncalled(modules: dict[int, _ModuleInfo], calls: list[_Call]) -> tuple[str, ...]:
    """Outermost modules whose parameters no call of the forward pass accounts for.

    A call accounts for the parameters its module holds directly and, when none of its
    submodules was called (a leaf call, or a fused fast path), for its whole subtree.
    """
    parents = {call.parent for call in calls}
    covered: set[int] = set()
    for call in calls:
        info = modules[call.module_id]
        covered.update(info.own if call.index in parents else info.subtree)
    names: list[str] = []
    for info in modules.values():  # parents before children
        if not info.subtree or any(info.name.startswith(outer + ".") for outer in names):
            continue
        if covered.isdisjoint(info.subtree):
            names.append(info.name)  # never the root: its call covers what it holds
    return tuple(names)


# -- recording calls ----------------------------------------------------------------------------


@dataclass
class _Call:
    index: int
    module_id: int
    depth: int
    parent: int | None
    is_repeat: bool
    input_shapes: tuple[_nested.Shape, ...] = ()
    output_shapes: tuple[_nested.Shape, ...] = ()
    failed: bool = False

    def freeze(
        self, info: _ModuleInfo, counter: CostCounter, inclusive: dict[int, tuple[int, int]]
    ) -> LayerRecord:
        return LayerRecord(
            index=self.index,
            name=info.name,
            type=info.type,
            depth=self.depth,
            parent=self.parent,
            input_shapes=self.input_shapes,
            output_shapes=self.output_shapes,
            params=info.params,
            trainable_params=info.trainable,
            own_parameters=info.own,
            subtree_parameters=info.subtree,
            is_repeat=self.is_repeat,
            failed=self.failed,
            macs=inclusive[self.index][0],
            flops=inclusive[self.index][1],
            self_macs=counter.macs[self.index],
            self_flops=counter.flops[self.index],
        )


@dataclass
class _CallRecorder:
    """Forward hooks that turn module calls into :class:`_Call` entries.

    ``enter`` is a pre-hook registered first (``prepend=True``), so a call is on the stack
    before any user pre-hook runs; ``leave`` is a forward hook registered last with
    ``always_call=True``, so it sees the arguments ``forward`` received and the output the
    caller receives, and runs also when the forward or a hook raised. Neither lets an error
    of its own reach the model: those are kept in ``internal_errors``.
    """

    modules: dict[int, _ModuleInfo]
    calls: list[_Call] = field(default_factory=list)
    stack: list[_Call] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    failures: list[tuple[BaseException, _Call]] = field(default_factory=list)
    internal_errors: list[Exception] = field(default_factory=list)

    def _push(self, module: nn.Module) -> _Call:
        key = id(module)
        call = _Call(
            index=len(self.calls),
            module_id=key,
            depth=len(self.stack),
            parent=self.stack[-1].index if self.stack else None,
            is_repeat=key in self.seen,
        )
        self.seen.add(key)
        self.calls.append(call)
        self.stack.append(call)
        return call

    def current_call(self) -> int | None:
        """Index of the innermost module call running now (what the cost counter charges)."""
        return self.stack[-1].index if self.stack else None

    def enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            self._push(module)
        except Exception as e:  # never break the user's forward
            self.internal_errors.append(e)

    def leave(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        self.leave_unhooked(module, args, kwargs, output, raising=_in_exception_path(output))

    def leave_unhooked(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        *,
        raising: bool,
    ) -> None:
        """Record the end of a call whose raising state is known: a hooked call's (``leave``)
        or one no hook sees (a TorchScript model's)."""
        try:
            self._pop(module, args, kwargs, output, raising)
        except Exception as e:  # never break the user's forward
            self.internal_errors.append(e)

    def _pop(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        raising: bool,
    ) -> None:
        key = id(module)
        depth = next(
            (i for i in range(len(self.stack) - 1, -1, -1) if self.stack[i].module_id == key), None
        )
        if depth is None:  # a global pre-hook raised before our enter ran
            self._push(module)
            depth = len(self.stack) - 1
        call = self.stack[depth]
        del self.stack[depth:]
        call.input_shapes = _nested.shapes((args, kwargs) if kwargs else args)
        if raising:
            call.failed = True
            error = sys.exc_info()[1]
            if error is not None and not any(seen is error for seen, _ in self.failures):
                self.failures.append((error, call))  # the first to see an error is the innermost
        else:
            call.output_shapes = _nested.shapes(output)

    def origin_of(self, error: BaseException) -> _Origin | None:
        """The innermost module call whose forward raised ``error`` (or what caused it)."""
        chain: list[BaseException] = []
        cursor: BaseException | None = error
        while cursor is not None and cursor not in chain:
            chain.append(cursor)
            cursor = cursor.__cause__ or cursor.__context__
        for candidate in chain:
            for seen, call in self.failures:
                if seen is candidate:
                    info = self.modules[call.module_id]
                    return _Origin(info.name, info.type, call.input_shapes)
        return None


def _in_exception_path(output: Any) -> bool:
    """Whether torch is calling our ``always_call`` forward hook because the call raised.

    torch runs forward hooks from the ``inner`` closure of ``Module._call_impl`` normally,
    and from ``_call_impl``'s own ``except`` block after an exception. The frame tells the
    two apart even when a user hook raised after ``forward`` returned an output; should a
    future torch call hooks from elsewhere, fall back to "an exception is being handled and
    there is no output".
    """
    caller = sys._getframe(2).f_code.co_name  # 0: here, 1: leave, 2: torch
    if caller == "_call_impl":
        return True
    if caller == "inner":
        return False
    return sys.exc_info()[1] is not None and output is None


@dataclass(frozen=True)
class _Origin:
    name: str
    type: str
    input_shapes: tuple[_nested.Shape, ...]


def _failure_message(
    error: BaseException, origin: _Origin | None, partial: ModelSummary, *, no_input: bool
) -> str:
    where = (
        f"module {origin.name or '(root)'!r} ({origin.type})" if origin else "the model's forward"
    )
    shapes = f" with input shapes {format_shapes(origin.input_shapes)}" if origin else ""
    hint = ""
    if no_input and isinstance(error, TypeError) and "argument" in str(error):
        hint = "\nHint: no input was given; pass input=... or input_size=(...) to summary()."
    return (
        f"forward pass failed in {where}{shapes}: {type(error).__name__}: {error}{hint}\n\n"
        f"Layers that ran before the failure:\n{partial}"
    )
