"""Gradient health: watch the user's own training loop and name what goes wrong in it.

:class:`GradientMonitor` wraps an unchanged loop and observes it through hooks only:

- forward: module forward hooks (activations that turn NaN/Inf, BatchNorm fed a batch of one,
  training forwards in eval mode, a bias feeding straight into a normalisation layer) and a
  :class:`~torch.overrides.TorchFunctionMode` that sees functional calls (ReLU units firing,
  softmax outputs handed to ``cross_entropy``, the tensor handed to ``backward``);
- backward: one hook per trainable parameter (did a gradient arrive, was the previous step's
  gradient cleared first) and an engine callback at the end of every backward pass;
- ``optimizer.step``: step pre/post hooks (gradient norms, how far each parameter moved).

Module full-backward hooks are not used: they break on in-place ops such as the residual adds
of torchvision's resnet50. Statistics stay on the device as tensors and are read once, when
:meth:`GradientMonitor.report` builds the :class:`~torchscope.records.GradientReport`, so the
loop gets no host synchronisation per step.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.weak import WeakIdKeyDictionary

import torchscope._util.nested as _nested
from torchscope._util.inputs import unwrap
from torchscope.collect.freezing import frozen_parameters, is_frozen, is_pinned
from torchscope.collect.gradients._state import (
    _NORMALISATION,
    GradKey,
    _Call,
    _Clock,
    _float32,
    _grad_key,
    _Module,
    _norm_rows,
    _Param,
    _ReluSite,
    _resolve_frozen,
    _StepRow,
    l1_norm,
    local,
    measured_step,
)
from torchscope.collect.gradients.compiled import (
    CompiledCalls,
    EagerSampler,
    compiled_model,
    keep_out_of_dynamo,
)
from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.functions import (
    SATURATION_WINDOW,
    FunctionCalls,
    FunctionWatch,
    transforming,
)
from torchscope.collect.gradients.history import Folds, Series, Thinning
from torchscope.collect.gradients.observations import Fixed, observe
from torchscope.collect.gradients.optimizer_hooks import (
    OptimizerHooks,
    checked_copy_budget,
    copy_every,
    sample_stride,
)
from torchscope.collect.gradients.ranks import RankView, merge_ranks, world_size
from torchscope.collect.gradients.rules import judge
from torchscope.collect.gradients.shards import (
    ShardPlan,
    combine_shards,
    fully_sharded,
    shard_plan,
)
from torchscope.collect.gradients.signals import CallSignals
from torchscope.collect.gradients.structure import (
    Hidden,
    gate_blocks,
    hidden_tensors,
    identical_rows,
)
from torchscope.collect.gradients.thresholds import GradientThresholds, resolve_thresholds
from torchscope.collect.graph.walk import sequence_nr
from torchscope.collect.hooks import HookSet, iter_modules
from torchscope.distributed import all_gather_objects
from torchscope.errors import TorchscopeError
from torchscope.records import GradientReport

__all__ = ["GradientMonitor"]

# Off the stride, a module output of at most this many elements is held (by reference, for
# the rest of its forward) rather than reduced on the spot; at most this many per forward.
# Autograd keeps most outputs alive for the backward pass anyway; the bound keeps what the
# monitor adds small whatever the model.
HELD_OUTPUT_NUMEL = 1 << 16
HELD_OUTPUTS = 256


def _row_clock(row: _StepRow) -> _Clock:
    return row.clock


def _output_tensors(output: Any) -> Iterable[torch.Tensor]:
    """A module output's tensors (most outputs are one plain tensor: no walk for it)."""
    return (output,) if type(output) is torch.Tensor else _nested.tensors(output)


class GradientMonitor(OptimizerHooks, FunctionCalls, CompiledCalls):
    """Watches the user's own training loop and reports gradient health.

    Example::

        with torchscope.GradientMonitor(model, optimizer=opt) as mon:
            for x, y in loader:
                opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step()
        print(mon.report())

    Args:
        model: the module being trained (DataParallel/DDP/``torch.compile`` wrappers are
            looked through; an FSDP2 model's sharded parameters are measured shard by shard
            and combined in ``report()``, see docs/distributed.md).
        optimizer: the optimizer whose ``step()`` ends a training step. If None, every
            optimizer that steps one of the model's parameters while the monitor is active is
            observed; if none does, each backward pass counts as a step.
        accumulation_steps: backward passes per optimizer step the loop intends; gradients
            must then be cleared after each step and only then.
        frozen: parts that are meant not to train: modules, module types, qualified module or
            parameter names (globs allowed) or parameter tensors. Parameters frozen with
            :func:`torchscope.freeze` are known without this.
        thresholds: a :class:`GradientThresholds` or a dict overriding some of its fields.
        max_copy_bytes: the memory the monitor may hold to measure how far an optimizer step
            moves the weights. None (the default): a copy of the parameters, taken before
            each measured step. A smaller budget copies an evenly spaced sample of each
            parameter's elements instead (every k-th in memory order, k about the
            parameters' size over the budget: a prime that divides none of the parameter's
            dims, so the sample takes every column of its rows; at least 64 elements of
            each, all of a smaller one),
            and the sample's change, scaled to the parameter's size, stands for the
            parameter's. 0: no copy, and the kinds that read
            how far the weights moved (``frozen_but_updated``, ``tiny_updates``,
            ``lr_collapsed``, ``clipped_to_nothing``, ``weight_decay_collapse``,
            ``symmetric_weights``, ``not_updated`` where a gradient arrived but the weights
            stayed put) are not judged; a sampled parameter's sample that did not change is
            not taken for the parameter (``not_updated`` does not judge it). Under FSDP2 the
            budget is each rank's, for its shards.

    Everything attached is removed on exit, also on exception. Costs: hooks per module and
    parameter call, a few norms per step, and one copy of the optimizer's parameters (kept to
    measure how far each step moved them; see ``max_copy_bytes``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        accumulation_steps: int = 1,
        frozen: Iterable[Any] | None = None,
        thresholds: GradientThresholds | Mapping[str, float] | None = None,
        max_copy_bytes: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GradientMonitor needs the model (an nn.Module) as its first argument, "
                f"got {type(model).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
            )
        if (
            not isinstance(accumulation_steps, int)
            or isinstance(accumulation_steps, bool)
            or accumulation_steps < 1
        ):
            raise ValueError(
                f"accumulation_steps must be a positive integer, got {accumulation_steps!r}"
            )
        self._max_copy_bytes = checked_copy_budget(max_copy_bytes)
        self._copy_every = 1
        if isinstance(frozen, (str, nn.Module, torch.Tensor, type)):
            frozen = [frozen]
        self._model = unwrap(model, caller="GradientMonitor")
        self._wrapper = model if type(model).__name__ == "OptimizedModule" else None
        self._mode_left = False  # the mode is off the stack during a compiled call
        self._resting = False  # off since an optimizer step, until a module is called
        self._left_at = 0
        self._compiled_calls: list[tuple[nn.Module, Any]] = []  # model.compile()d modules
        self._optimizer = optimizer
        self._accumulation_steps = accumulation_steps
        self._frozen_targets = list(frozen or ())
        self.thresholds = resolve_thresholds(thresholds)
        self._hooks = HookSet()
        self._compiled = compiled_model(model)
        self._sampler = EagerSampler(window=accumulation_steps)
        self._mode: FunctionWatch | None = None
        self._shards: ShardPlan = {}  # sharded parameters (FSDP2): combined at report time
        self._active = False
        self._reset()

    # -- lifecycle -------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._params: list[_Param] = []
        self._by_id: dict[int, _Param] = {}
        self._modules: list[_Module] = []
        self._called: set[str] = set()
        self._eager_forwards = 0  # module forwards observed since the last backward pass
        self._stack: list[_Call] = []
        self._occurrences: dict[str, int] = {}  # module calls so far in the current forward
        self._last_finished: str | None = None
        self._steps = 0
        self._round = 0  # the round of optimizer steps the clock carries (_Clock.round)
        self._last_clock = _Clock(0, 0, 0)
        self._backwards = 0
        self._backward_calls = 0
        self._backwards_since_step = 0
        self._retained = False  # the last backward() kept its graph for another one
        # the autograd nodes of the tensors the last backward() was called on (held until
        # its pass ends), and the sequence number of the newest op the last eager forward of
        # the model produced: that forward's nodes are numbered at or below it, a compiled
        # forward's since are all above
        self._backward_roots: list[Any] = []
        self._eager_below: int | None = None
        # every list that grows with the run is a bounded, evenly thinned series (history.py);
        # the folds keep what the dropped entries carried that no sample stands for
        t = self._thinning = Thinning()
        self._folds = Folds()
        self._windows: Series[tuple[_Clock, int]] = t.new()  # backward passes per step
        self._callback_queued = False
        self._optimizers: dict[int, weakref.ref[torch.optim.Optimizer]] = {}
        self._held_indices: set[int] = set()  # parameters some observed optimizer stepped
        self._fixed: Fixed | None = None  # host state when the `with` block ended
        self._rows: Series[_StepRow] = t.new(clock_of=_row_clock, dropped=self._folds.row)
        self._pending: tuple[Any, ...] | None = None
        self._snapshots: dict[int, torch.Tensor] = {}
        # (the module, its output's max or the output itself, held off the stride with the
        # version it had when its module returned; -1 for a max)
        self._forward_checks: list[tuple[_Module, torch.Tensor, int]] = []
        self._forward_measured = True  # the running forward takes the stride's statistics
        self._loss_in_forward = False  # a loss function was called inside a module's forward
        self._produced: dict[int, tuple[weakref.ref[torch.Tensor], _Module]] = {}
        self._output_l1: dict[int, torch.Tensor] = {}  # bias index -> sum of |output grad|
        self._eval_pending: list[str] | None = None
        # the model's own forward returned since the last backward pass: what runs outside
        # every forward now works on its output (the loss), not inside a model the loop writes
        self._model_returned = False
        self._eval_root_forwards: Series[tuple[_Clock, tuple[str, ...]]] = t.events(
            "eval_root_forwards"
        )
        self._eval_sub_forwards: Series[tuple[_Clock, tuple[str, ...]]] = t.events(
            "eval_sub_forwards"
        )
        self._forward_eval: set[str] = set()
        self._forward_root_eval = False
        self._losses: Series[tuple[_Clock, torch.Tensor]] = t.new(dropped=self._folds.loss)
        self._relu_sites: dict[tuple[str, int], _ReluSite] = {}
        self._softmax_outputs: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._probability_inputs: Series[tuple[_Clock, str, torch.Tensor | None]] = t.new()
        self._batch_of_one: Series[tuple[_Clock, str, tuple[int, ...]]] = t.events("batch_of_one")
        self._stale: Series[tuple[_Clock, int, torch.Tensor]] = t.events("stale")
        self._cleared_in_window: Series[tuple[_Clock, int]] = t.events("cleared_in_window")
        self._zero_lr: dict[int, _Clock] = {}
        self._group_of: dict[int, int] = {}  # parameter index -> id of its param group
        self._lr_of_group: dict[int, float | None] = {}  # param group id -> its last lr
        self._plans: dict[int, Any] = {}  # id(optimizer) -> its parameters (optimizer_hooks)
        # per optimizer step: {param group id: (lr, weight_decay)}; plain floats, no device read
        self._lr_trace: Series[tuple[_Clock, dict[int, tuple[float | None, float, bool]]]] = t.new()
        self._optimizer_kind: dict[int, str] = {}  # param group id -> its optimizer's class
        self._last_step_backwards: dict[int, int] = {}  # optimizer id -> backwards at its step
        self._written_grads = False  # gradients assigned by hand since the last step
        # per optimizer: max |grad| of what its last step applied (index, device values)
        self._step_tops: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}
        self._steps_of: dict[int, int] = {}  # optimizer id -> its steps (for the stride)
        # steps whose gradients a backward pass filled and something set to None before
        # step() ran (zero_grad() between them, set_to_none=True): (when, parameters)
        self._cleared_before_step: Series[tuple[_Clock, int]] = t.events("cleared_before_step")
        self._steps_without_backward: Series[tuple[_Clock, str]] = t.events(
            "steps_without_backward"
        )
        self._signals = CallSignals(t)
        # (module, input shape, when): inputs of layers that read (time, batch, ...)
        self._sequence_inputs: list[tuple[str, tuple[int, ...], _Clock]] = []
        self._input_scale: torch.Tensor | None = None  # max |x| of the first training input
        self._rows_identical: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._gates: dict[int, int] = {}  # recurrent weights: the gates they stack by rows
        self._hidden: list[Hidden] = []
        self._hidden_keys: list[list[GradKey | None]] = []
        # per step: the parameters held that did not require grad (when there are any)
        self._frozen_at_step: Series[tuple[_Clock, frozenset[int]]] = t.new()
        self._clip_coefficients: Series[tuple[_Clock, torch.Tensor]] = t.new()

    def __enter__(self) -> GradientMonitor:
        if self._active:
            raise TorchscopeError(
                "this GradientMonitor is already active; leave its `with` block before "
                "entering it again, or create a second monitor"
            )
        self._reset()
        try:
            self._index_parameters()
            self._shards = shard_plan([(e.index, e.tensor) for e in self._params])
            every = self._copy_every = copy_every(
                [(x := local(e.tensor)).numel() * x.element_size() for e in self._params],
                self._max_copy_bytes,
            )
            for e in self._params:
                e.copy_stride = sample_stride(tuple(local(e.tensor).shape), every)
            self._hidden = hidden_tensors(self._model)
            # gradients they already hold (a teacher trained before) are not this loop's
            self._hidden_keys = [[_grad_key(x) for x in h.tensors] for h in self._hidden]
            self._gates = {
                self._by_id[id(param)].index: blocks
                for _, module in iter_modules(self._model)
                for local_name, param in module._parameters.items()
                if param is not None
                and id(param) in self._by_id
                and (blocks := gate_blocks(module, local_name)) > 1
            }
            self._rows_identical = {
                e.index: (same, None)
                for e in self._params
                if e.tensor.requires_grad
                and (same := identical_rows(e.tensor, self._gates.get(e.index, 1))) is not None
            }
            self._attach_module_hooks()
            self._attach_parameter_hooks()
            self._attach_optimizer_hooks()
            self._mode = FunctionWatch(self)
            self._mode.__enter__()
            self._sampler.start(self._compiled)
        except BaseException:
            self._detach()
            raise
        self._active = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._flush_forward_checks()  # outputs a forward that raised left held
        except Exception:  # (a device error after a failed forward): those checks are lost
            self._forward_checks = []
        finally:
            self._detach()
        # What the loop did is fixed now: a report taken later must not depend on objects the
        # loop has dropped since (its optimizer) or on later changes to the model. Only host
        # state is copied here; the device statistics are read once, by report().
        self._fixed = Fixed(
            held=frozenset(self._held_now()),
            requires_grad=tuple(e.tensor.requires_grad for e in self._params),
            hidden_held=tuple(self._hidden_held_now()),
            hidden_received=tuple(self._hidden_received_now()),
        )
        for index, (before, _) in list(self._rows_identical.items()):
            self._rows_identical[index] = (
                before,
                identical_rows(self._params[index].tensor, self._gates.get(index, 1)),
            )

    def _detach(self) -> None:
        mode, self._mode = self._mode, None
        self._sampler.stop()
        for module, compiled in self._compiled_calls:
            module._compiled_call_impl = compiled
        self._compiled_calls = []
        try:
            if mode is not None and not self._mode_left:
                mode.__exit__(None, None, None)
        finally:
            self._mode_left = False
            self._resting = False
            self._active = False
            self._snapshots.clear()
            self._plans.clear()  # they hold the optimizers' param groups
            self._stack.clear()
            self._backward_roots = []
            self._produced.clear()
            self._hooks.remove_all()

    # -- attaching -------------------------------------------------------------------------------

    def _index_parameters(self) -> None:
        names: dict[int, list[str]] = {}
        for name, param in self._model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        owners: dict[int, str] = {}
        for path, module in iter_modules(self._model):
            for held in module._parameters.values():
                if held is not None:
                    owners.setdefault(id(held), path)
        for param in self._model.parameters():
            if not (param.is_floating_point() or param.is_complex()):
                continue
            aliases = names[id(param)]
            entry = _Param(
                len(self._params), aliases[0], tuple(aliases[1:]), param, owners[id(param)]
            )
            self._params.append(entry)
            self._by_id[id(param)] = entry
        intended = _resolve_frozen(self._model, self._frozen_targets, self._params)
        intended |= {id(p) for p in frozen_parameters(self._model).values()}
        for entry in self._params:
            entry.intended_frozen = id(entry.tensor) in intended or is_frozen(entry.tensor)

    def _attach_module_hooks(self) -> None:
        if self._wrapper is not None:
            # torch.compile(model): the wrapper's hooks run outside the compiled frame; the
            # monitor's mode steps off the stack for the compiled call (dynamo then traces
            # the model as it would without the monitor) except on eager samples
            self._hooks.add(
                self._wrapper.register_forward_pre_hook(self._before_compiled, with_kwargs=True)
            )
            self._hooks.add(
                self._wrapper.register_forward_hook(self._after_compiled, always_call=True)
            )
        for module in self._model.modules():  # model.compile(): the same around its call
            compiled = getattr(module, "_compiled_call_impl", None)
            if compiled is not None:
                self._compiled_calls.append((module, compiled))
                module._compiled_call_impl = self._around_compiled(compiled)
        for path, module in iter_modules(self._model):
            biases = [
                self._by_id[id(p)]
                for local, p in module._parameters.items()
                if local == "bias" and p is not None and id(p) in self._by_id
            ]
            info = _Module(path, module, biases)
            self._modules.append(info)
            self._hooks.add(
                module.register_forward_pre_hook(
                    lambda m, args, info=info: self._on_forward_pre(info, args), prepend=True
                )
            )
            self._hooks.add(
                module.register_forward_hook(
                    lambda m, args, out, info=info: self._on_forward(info, out)
                )
            )

    def _attach_parameter_hooks(self) -> None:
        fsdp = fully_sharded(self._model)
        for entry in self._params:
            if not entry.tensor.requires_grad:
                continue
            if fsdp and hasattr(entry.tensor, "device_mesh"):
                # FSDP2 computes with unsharded copies and assigns the reduced shard to
                # .grad, so autograd never runs a tensor hook on a sharded parameter; it runs
                # its post-accumulate hooks. FSDP2 adds into the local shard of an existing
                # .grad, leaving the DTensor's own version alone, so the key read there is
                # still the one before this backward pass. (Other DTensor parameters, tensor
                # parallelism's, get their gradients from autograd: tensor hooks, below.)
                self._hooks.add(
                    entry.tensor.register_post_accumulate_grad_hook(
                        lambda param, entry=entry: self._on_gradient(entry, param.grad)
                    )
                )
                continue
            self._hooks.add(
                entry.tensor.register_hook(lambda grad, entry=entry: self._on_gradient(entry, grad))
            )

    def _attach_optimizer_hooks(self) -> None:
        # in a compiled training step, dynamo traces optimizer.step(): a disabled hook makes
        # it break the graph there and run the hook eagerly, so the step is observed
        pre = torch.compiler.disable(self._on_step_pre)
        post = torch.compiler.disable(self._on_step_post)
        if self._optimizer is not None:
            self._hooks.add(self._optimizer.register_step_pre_hook(pre))
            self._hooks.add(self._optimizer.register_step_post_hook(post))
        else:  # observe any optimizer that steps one of our parameters
            self._hooks.add(register_optimizer_step_pre_hook(pre))
            self._hooks.add(register_optimizer_step_post_hook(post))

    # -- forward ---------------------------------------------------------------------------------

    def _clock(self) -> _Clock:
        clock = self._last_clock  # read several times a step: made once per change
        if (
            clock.step != self._steps
            or clock.backward != self._backwards
            or clock.round != self._round
        ):
            clock = self._last_clock = _Clock(self._steps, self._backwards, self._round)
        return clock

    def _measuring(self) -> bool:
        """Whether this step's tensor statistics are taken (``_state.measured_step``): a step
        is an optimizer step, or a backward pass while no optimizer has stepped."""
        return measured_step(self._steps if self._optimizers else self._backwards)

    def _on_forward_pre(self, info: _Module, args: tuple[Any, ...]) -> None:
        if torch.compiler.is_compiling():
            return  # nothing in the graph, no guard on this state (see compiled.py)
        if torch._C._current_graph_task_id() != -1:
            return  # a forward recomputed inside a backward pass (activation checkpointing)
        if transforming():
            return  # torch.func.grad/vmap through the model (functional_call): not .grad's
        if self._resting and (self._loss_in_forward or self._measuring()):
            # the mode rests between an optimizer step and the next forward; on a step
            # whose statistics are not taken it rests through the forward too (what it
            # sees there is read on measured steps only) and wakes when the forward ends,
            # unless the model calls its loss function in its forward (the loss-side kinds
            # count every call)
            self._wake()
        self._eager_forwards += 1
        # a new outermost call starts a forward: the root's, or a submodule's called directly
        # (Lightning's training_step calling self.net(x)); per-forward counters restart
        stack = self._stack
        if stack and info.module is not self._model:
            # a module already on the stack is called again: a forward of it raised half
            # way and left its entries (the post-hooks are not always_call: under
            # torch.compile that would guard on each hook's id and recompile at every
            # monitor entry), or it calls itself; either way a forward starts here
            for depth, call in enumerate(stack):
                if call.info is info:
                    del stack[depth:]
                    break
        if info.module is self._model or not stack:
            # and the outputs a forward that raised held: read now
            stack.clear()
            self._flush_forward_checks()
            self._occurrences = {}
            self._last_finished = None
            self._forward_measured = self._measuring()
        occurrence = self._occurrences.get(info.path, 0)
        self._occurrences[info.path] = occurrence + 1
        self._stack.append(_Call(info, occurrence, self._last_finished))
        if not torch.is_grad_enabled():
            return
        module = info.module
        self._called.add(info.path)
        if module is self._model:
            # an eval-mode forward with no backward pass before this one (a validation loss
            # computed without torch.no_grad, only logged) trained nothing
            self._eval_pending = None
            self._forward_root_eval = not module.training
            self._forward_eval = set()
            if self._input_scale is None:
                first = next((x for x in _nested.tensors(args) if x.is_floating_point()), None)
                if first is not None and first.numel():
                    self._input_scale = first.detach().abs().amax().float()
        if info.batch_dims and args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
            if len(self._sequence_inputs) < 1000:
                self._sequence_inputs.append((info.path, tuple(args[0].shape), self._clock()))
        if info.sensitive and not module.training and not self._meant_to_be_eval(module):
            self._forward_eval.add(info.path)
        if isinstance(module, _NORMALISATION) and args and isinstance(args[0], torch.Tensor):
            self._check_normalisation_input(info, args[0])
        if (
            self._signals.outside_squashes
            and self._backwards < SATURATION_WINDOW
            and args
            and isinstance(args[0], torch.Tensor)
        ):
            self._signals.on_module_input(args[0])

    def _meant_to_be_eval(self, module: nn.Module) -> bool:
        """Frozen normalisation layers are kept in eval mode on purpose."""
        if is_pinned(module):
            return True
        own = [p for p in module.parameters(recurse=False)]
        return bool(own) and all(
            not p.requires_grad or self._by_id[id(p)].intended_frozen
            for p in own
            if id(p) in self._by_id
        )

    def _check_normalisation_input(self, info: _Module, x: torch.Tensor) -> None:
        module = info.module
        batch_statistics = module.training or not getattr(module, "track_running_stats", True)
        if not batch_statistics:
            return
        if isinstance(module, _BatchNorm) and module.training and x.dim() >= 2 and x.shape[0] == 1:
            self._batch_of_one.append((self._clock(), info.path, tuple(x.shape)))
        producer = self._produced.get(id(x))
        if producer is not None and producer[0]() is x:
            for bias in producer[1].biases:
                bias.cancelled_by = info.path

    def _on_forward(self, info: _Module, output: Any) -> None:
        if (
            torch.compiler.is_compiling()
            or torch._C._current_graph_task_id() != -1
            or transforming()
        ):
            return
        # the statistics below are the monitor's own torch calls: off the mode, each would be
        # a Python call through FunctionWatch (popped only when it is on top of the stack;
        # a resting mode is off the stack already)
        mode = self._mode
        popped = False
        if not self._resting:
            depth = torch._C._len_torch_function_stack()
            popped = bool(depth) and torch._C._get_function_stack_at(depth - 1) is mode
            if popped:
                torch._C._pop_torch_function_stack()
        try:
            self._after_forward(info, output)
        finally:
            if popped:
                torch._C._push_on_torch_function_stack(mode)
        if not self._stack:  # the outermost call is done: the loss and backward() are seen
            self._wake()

    def _after_forward(self, info: _Module, output: Any) -> None:
        stack = self._stack
        if stack and stack[-1].info is info:
            stack.pop()
        self._last_finished = info.path
        if not torch.is_grad_enabled():
            return
        # every step: the first non-finite value of a run is named by when it arose
        if info.checks_output:
            checks = self._forward_checks
            for tensor in _output_tensors(output):
                if not tensor.is_floating_point():
                    continue
                if type(tensor) is not torch.Tensor or tensor.layout != torch.strided:
                    # a sparse, jagged or distributed tensor: summed as it is
                    kind = None if tensor.dtype == torch.float64 else torch.float32
                    checks.append((info, tensor.detach().sum(dtype=kind), -1))
                    continue
                if tensor.is_nested:
                    continue  # a strided nested tensor: no reduction of it works
                numel = tensor.numel()
                if numel == 0:
                    continue
                if (
                    not self._forward_measured
                    and numel <= HELD_OUTPUT_NUMEL
                    and len(checks) < HELD_OUTPUTS
                    and not info.read_on_return
                    and not tensor.is_inference()  # (no version counter)
                ):
                    # off the stride a small output is held, and the maxima of all are taken
                    # in one fused call when the forward ends (_flush_forward_checks)
                    checks.append((info, tensor, tensor._version))
                else:
                    # max, not sum: exact for NaN and +Inf (a sum also overflows), blind to
                    # -Inf (a mask value). A container's output is checked again though it
                    # may be its last child's very tensor: a write through .data (or a NumPy
                    # view) changes the values without a new version, and a NaN planted so
                    # is named where it was
                    checks.append((info, tensor.detach().amax(), -1))
        if info.biases and self._forward_measured and isinstance(output, torch.Tensor):
            self._produced[id(output)] = (weakref.ref(output), info)
            if output.requires_grad and output.is_floating_point():
                output.register_hook(lambda grad, info=info: self._on_output_gradient(info, grad))
        if info.module is self._model:
            self._model_returned = True
            for tensor in _output_tensors(output):
                if tensor.grad_fn is not None:
                    newest = sequence_nr(tensor.grad_fn)
                    if self._eager_below is None or newest > self._eager_below:
                        self._eager_below = newest
            self._end_forward()

    def _end_forward(self) -> None:
        self._flush_forward_checks()
        self._produced.clear()
        if self._forward_eval:
            names = tuple(sorted(self._forward_eval))
            if self._forward_root_eval:
                self._eval_pending = list(names)
            else:
                self._eval_sub_forwards.append((self._clock(), names))
            self._forward_eval = set()

    def _flush_forward_checks(self) -> None:
        """Hand this forward's output maxima, in call order, to the folds (stacked there a
        few hundred forwards at a time). An output held off the stride is read now. One
        changed in place since its module returned (an in-place ReLU, ``x += y``,
        ``masked_fill_``) was not read as it was: its module is read when it returns from
        then on, and this once it is marked, for the folds to judge (``history._carried``)."""
        checks, self._forward_checks = self._forward_checks, []
        if not checks:
            return
        paths = [info.path for info, _, _ in checks]
        values = [value for _, value, _ in checks]
        held = [k for k, (_, _, version) in enumerate(checks) if version >= 0]
        changed = tuple(k for k in held if values[k]._version != checks[k][2])
        for k in changed:
            checks[k][0].read_on_return = True
        if held:
            enabled = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)  # torch.no_grad() costs more than the call
            try:
                maxima = torch._foreach_max([values[k] for k in held])
            finally:
                torch._C._set_grad_enabled(enabled)
            for k, top in zip(held, maxima, strict=True):
                values[k] = top
        self._folds.forward((self._clock(), paths, values, changed))

    # -- backward --------------------------------------------------------------------------------

    def _on_output_gradient(self, info: _Module, grad: torch.Tensor) -> None:
        # A bias gradient is a sum of the module's output gradients; when a normalisation
        # cancels the bias that sum is zero up to rounding, whose size is set by this scale,
        # not by the other parameters' gradients (see Evidence.rounding_zero).
        if not self._active:
            return
        # half precision sums in float32
        wide = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else None
        scale = _float32(l1_norm(grad.detach(), wide))
        for bias in info.biases:
            previous = self._output_l1.get(bias.index)
            self._output_l1[bias.index] = scale if previous is None else previous + scale

    def _on_gradient(self, entry: _Param, grad: torch.Tensor | None = None) -> None:
        # called before the incoming gradient is added to .grad, so .grad is still last step's
        if grad is None:
            # a compiled backward (AOTAutograd) calls the hooks of the parameters it has no
            # gradient for with None: nothing arrived (eager autograd never does)
            return
        entry.received += 1
        key = _grad_key(entry.tensor)
        if entry.key_after_backward is not None and key != entry.key_after_backward:
            entry.pending_stale = None  # cleared (or replaced) since the last backward pass
        if entry.key_after_step is not None:  # first backward since its optimizer stepped
            grad = entry.tensor.grad
            if key == entry.key_after_step and grad is not None:
                # untouched since that step: what it applied is still in .grad, and the
                # optimizer applies it again at its next step unless it is cleared before
                leftover = torch.linalg.vector_norm(local(grad.detach()), ord=math.inf)
                entry.pending_stale = (self._clock(), leftover)
            entry.key_after_step = None
        elif (
            self._accumulation_steps > 1
            # a clear at a window boundary is right even when no step was seen: a GradScaler
            # skips optimizer.step() on inf/NaN gradients and the loop still clears them
            and self._backwards_since_step % self._accumulation_steps != 0
            and entry.key_after_backward is not None
            and key != entry.key_after_backward
        ):
            self._cleared_in_window.append((self._clock(), entry.index))
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._callback_queued = False
        self._model_returned = False
        roots, self._backward_roots = self._backward_roots, []
        if (
            self._eager_forwards == 0
            and not self._sampler.active
            and not _reaches_below(roots, self._eager_below)
        ):
            # a backward with no forward seen since the last one, whose graph reaches no node
            # of an eager forward (as a second loss of one forward does, or the backward after
            # an autograd.grad penalty): the forward ran compiled
            self._sampler.saw_compiled_forward()
        self._eager_forwards = 0
        self._sampler.after_backward()
        self._flush_forward_checks()
        if self._eval_pending is not None:
            self._eval_root_forwards.append((self._clock(), tuple(self._eval_pending)))
            self._eval_pending = None
        for entry in self._params:
            entry.key_after_backward = _grad_key(entry.tensor)
        if not self._optimizers:  # no optimizer seen yet: every backward pass is a step
            row = self._gradient_row(from_step=False, measured=measured_step(self._backwards))
            if row is not None:
                self._rows.append(row)
        self._backwards += 1
        self._backwards_since_step += 1
        if not self._optimizers:
            self._thinning.advance(self._backwards)

    def _gradient_row(
        self,
        *,
        from_step: bool,
        weights: tuple[tuple[int, ...], torch.Tensor] | None = None,
        measured: bool = True,
    ) -> _StepRow | None:
        """The gradients' L1, L2 and max-abs norms; on a step that is not ``measured`` the
        max-abs norm only (one pass instead of three: NaN, Inf and exact zeros are still seen
        at the step they happen), whose L1 and L2 read as NaN."""
        with_grad = [e for e in self._params if e.tensor.grad is not None]
        if not with_grad:
            return None
        index, stats = _norm_rows(
            [e.tensor.grad for e in with_grad],  # type: ignore[misc]
            [e.index for e in with_grad],
            (1.0, 2.0, math.inf) if measured else (math.inf,),
        )
        weight_index, weight_stats = weights if weights is not None else ((), None)
        output_index, output_l1 = self._take_output_l1()
        return _StepRow(
            self._clock(), from_step, index, stats, weight_index, weight_stats,
            output_index, output_l1, measured,
        )  # fmt: skip

    def _take_output_l1(self) -> tuple[tuple[int, ...], torch.Tensor | None]:
        scales, self._output_l1 = self._output_l1, {}
        if not scales:
            return (), None
        device = next(iter(scales.values())).device
        return tuple(scales), torch.stack([v.to(device) for v in scales.values()])

    # -- the report ------------------------------------------------------------------------------

    def report(self, *, gather: bool | None = None) -> GradientReport:
        """Read the statistics gathered so far back from the device and judge them.

        Under ``torch.distributed`` with more than one process this is a collective: every
        rank must call it, and every rank gets the same report. Findings seen on several
        ranks are listed once, their message saying on which ranks; a parameter that got
        gradients on some ranks and none on others is named (``no_grad``) with the ranks that
        left it out. Histories, steps and backward passes are rank 0's (DDP averages the
        gradients, so the ranks agree); the losses are the mean over ranks.

        DistributedDataParallel with ``find_unused_parameters=False`` (its default) cannot
        get that far: the rank that leaves a parameter out never finishes the all-reduce of
        its backward pass, the other ranks wait inside theirs, and its next forward raises
        "Expected to have finished reduction in the prior iteration before starting a new
        one", naming no parameter. What the monitor saw up to then is on that rank alone:
        call ``report(gather=False)`` in its error handler (a collective would hang on ranks
        out of step) and the local report names the parameter (``no_grad``).

        Args:
            gather: merge the findings of every rank; default: when ``torch.distributed`` is
                initialised with more than one process. False gives this rank's own report.
        """
        world = world_size()
        if gather is None:
            gather = world > 1
        observed = observe(self)
        if gather and world > 1 and self._shards:
            observed = combine_shards(observed, self._shards)
        evidence = Evidence(observed)
        history = evidence.history
        local = GradientReport(
            findings=judge(evidence),
            parameters=tuple(history[e.index] for e in observed.params),
            steps=observed.steps if observed.stepped else observed.backwards,
            backward_passes=max(observed.backwards, observed.backward_calls),
            losses=tuple(value for _, value in observed.losses),
            step_unit="optimizer step" if observed.stepped else "backward pass",
            loss_steps=tuple(observed.step_of(clock) for clock, _ in observed.losses),
        )
        if not gather:
            return local
        if world == 0:
            raise TorchscopeError(
                "report(gather=True) needs torch.distributed: call "
                "torch.distributed.init_process_group (or torchscope.distributed.init_from_env "
                "under torchrun) first, or leave gather out"
            )
        view = RankView(
            # the histories are rank 0's (the all-reduce makes them agree): only it sends them
            report=local if dist.get_rank() == 0 else replace(local, parameters=()),
            backward_passes=max(observed.backwards, observed.backward_calls),
            received={e.name: e.received for e in observed.params if e.trainable},
            module_ran={e.name: evidence.ran(e.module) for e in observed.params if e.trainable},
        )
        return merge_ranks(all_gather_objects(view))


keep_out_of_dynamo(GradientMonitor, OptimizerHooks, FunctionCalls, CompiledCalls, FunctionWatch)


#: Nodes searched from a backward's roots for one of an eager forward's (a second loss reaches
#: its forward's nodes within a few ops; past this the backward is taken for a compiled one's)
KEPT_GRAPH_SEARCH = 256


def _reaches_below(roots: list[Any], mark: int | None) -> bool:
    """Whether the graph behind ``roots`` reaches, within ``KEPT_GRAPH_SEARCH`` nodes, an op
    numbered at or below ``mark`` (one of an eager forward's; a compiled forward's since are
    all newer). AccumulateGrad nodes are not numbered."""
    if mark is None or not roots:
        return False
    seen = set(roots)
    pending = list(roots)
    for _ in range(KEPT_GRAPH_SEARCH):
        if not pending:
            return False
        node = pending.pop()
        if 0 <= sequence_nr(node) <= mark:
            return True
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                pending.append(child)
    return False
