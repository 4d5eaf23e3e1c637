"""The monitor on ``torch.compile``d models: which steps run eagerly so that the forward can be
observed, without a recompilation.

Inside a compiled forward the monitor's forward hooks and its TorchFunctionMode return at
once (``torch.compiler.is_compiling()`` is a constant to dynamo, so they add nothing to the
graph and no guard on the monitor's state). What lives outside the graph keeps working as in
eager mode: parameter gradients (AccumulateGrad runs the tensor hooks), the optimizer's step
hooks, the loss handed to ``backward``, and loss functions called outside the compiled model.
The forward's own signals (activations, ReLU sites, eval mode, losses inside the model) are
taken on sampled steps that run eagerly (see :class:`EagerSampler`), through
``torch.compiler.set_stance("force_eager")``, restored after that step. An eager step costs
what the uncompiled model costs; nothing is recompiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree
from torch import nn

if TYPE_CHECKING:
    from torch.overrides import TorchFunctionMode

__all__ = ["CompiledCalls", "EagerSampler", "compiled_model", "keep_out_of_dynamo"]

#: optimizer steps between two eagerly observed steps of a compiled model
EAGER_EVERY = 50
#: input shapes of a compiled model, after the first, whose first call is observed eagerly
NEW_SHAPES = 8


def compiled_model(model: nn.Module) -> bool:
    """``torch.compile(model)`` or ``model.compile()`` (on it or on a submodule)."""
    if type(model).__name__ == "OptimizedModule":
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def _current_stance() -> Any:
    try:
        from torch._dynamo import eval_frame

        return eval_frame._stance
    except (ImportError, AttributeError):  # an older or newer torch: assume the default
        return None


class EagerSampler:
    """Forces the next forward and backward to run eagerly, now and then (see the module).

    A sample is one optimizer step: its forward and backward passes (all the micro-batches of
    an accumulation window) run eagerly, and it ends at the step, or after ``window`` backward
    passes in a loop that does not step. Samples are the first step, every ``every``-th, and
    the first call of a compiled model with input shapes not seen before (the first
    ``NEW_SHAPES`` such): the odd batch (the last one of an epoch, a batch of one) is where
    shape bugs live, and it is a call dynamo would compile anew anyway.
    """

    def __init__(self, every: int = EAGER_EVERY, window: int = 1) -> None:
        self.every = every
        self.window = window
        self.active = False  # a compiled forward has been seen (or the model is compiled)
        self.eager_steps = 0  # steps observed eagerly while compiled
        self._previous: Any = None
        self._forcing = False
        self._backwards = 0  # backward passes in the current sample
        self._shapes: set[tuple[Any, ...]] = set()

    @property
    def forcing(self) -> bool:
        """The current step runs eagerly."""
        return self._forcing

    def start(self, compiled: bool) -> None:
        self.active = compiled
        self._shapes = set()
        if compiled:
            self._force()

    def saw_compiled_forward(self) -> None:
        self.active = True

    def before_compiled_call(self, args: Any, kwargs: Any) -> None:
        """A compiled model is about to be called with ``args``: a new shape is sampled."""
        if not torch.is_grad_enabled() or len(self._shapes) > NEW_SHAPES:
            return  # evaluation (nothing to learn about training), or enough shapes sampled
        shapes = tuple(
            (tuple(x.shape), x.dtype)
            for x in pytree.tree_leaves((args, kwargs))
            if isinstance(x, torch.Tensor)
        )
        if shapes in self._shapes:
            return
        self._shapes.add(shapes)
        if len(self._shapes) > 1:  # the first is sampled by start()
            self._force()

    def after_backward(self) -> None:
        if self._forcing:
            self._backwards += 1
            if self._backwards >= self.window:
                self._end_sample()

    def after_step(self, steps_done: int) -> None:
        if self._forcing:
            self._end_sample()
        if self.active and steps_done % self.every == 0:
            self._force()

    def stop(self) -> None:
        self._release()

    def _end_sample(self) -> None:
        self.eager_steps += 1
        self._release()

    def _force(self) -> None:
        if self._forcing or not hasattr(torch.compiler, "set_stance"):
            return
        self._previous = _current_stance()
        torch.compiler.set_stance("force_eager")
        self._forcing = True

    def _release(self) -> None:
        if not self._forcing:
            return
        self._forcing = False
        self._backwards = 0
        previous, self._previous = self._previous, None
        if previous is None:
            torch.compiler.set_stance("default")
        else:
            torch.compiler.set_stance(
                previous.stance,
                skip_guard_eval_unsafe=previous.skip_guard_eval_unsafe,
                force_backend=previous.backend,
            )


def keep_out_of_dynamo(*owners: Any) -> None:
    """Dynamo must never compile the monitor's own code as frames of their own.

    In a compiled *training-step function*, ``backward()`` and the optimizer's step run the
    monitor's hooks, and dynamo (whose frame callback stays set there) would compile each
    hook as a frame, specialise it on its arguments and recompile it until its cache limit:
    graphs the user did not write. Marked here, those frames (and what they call) run
    eagerly. Inlined into a traced forward, the same code is still traced, and returns at
    once under ``is_compiling()``. Uses dynamo's per-code execution strategy (private, so
    a torch without it just leaves the frames as they are).
    """
    try:
        from torch._C._dynamo.eval_frame import set_code_exec_strategy
        from torch._dynamo.types import FrameAction, FrameExecStrategy
    except ImportError:
        return
    strategy = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
    todo = [
        value.__code__
        for owner in owners
        for value in vars(owner).values()
        if hasattr(value, "__code__")
    ]
    while todo:
        code = todo.pop()
        set_code_exec_strategy(code, strategy)
        todo.extend(c for c in code.co_consts if hasattr(c, "co_code"))  # lambdas inside


class CompiledCalls:
    """Takes the monitor's TorchFunctionMode off the mode stack around a compiled model's
    call, except on eager samples, so dynamo traces the model as it would without the monitor
    (no guard on the mode stack, no NumPy tracing through the mode). A mixin of
    :class:`~torchscope.collect.gradients.monitor.GradientMonitor`."""

    if TYPE_CHECKING:
        _mode: TorchFunctionMode | None
        _mode_left: bool
        _left_at: int  # the depth of the mode stack where the mode was taken off
        _resting: bool
        _sampler: EagerSampler

    def _around_compiled(self, compiled: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._before_compiled(None, args, kwargs)
            try:
                return compiled(*args, **kwargs)
            finally:
                self._after_compiled(None, args, None)

        return call

    def _before_compiled(self, module: nn.Module | None, args: Any, kwargs: Any) -> None:
        self._wake()
        self._sampler.before_compiled_call(args, kwargs)
        if self._sampler.forcing or not torch.is_grad_enabled():
            return
        self._mode_off()

    def _after_compiled(self, module: nn.Module | None, args: Any, output: Any) -> None:
        self._mode_on()

    def _mode_off(self) -> None:
        """Take the monitor's mode off the stack, if it is on top (a user's mode entered
        inside the monitor's block stays where it is, and so does ours)."""
        mode = self._mode
        if mode is not None and torch.overrides._get_current_function_mode() is mode:
            mode.__exit__(None, None, None)
            self._mode_left = True
            self._left_at = torch._C._len_torch_function_stack()

    def _mode_on(self) -> None:
        """Put the mode back after :meth:`_mode_off`, where it was: below any mode the user
        entered since (a user's ``with`` block that began while it was off pops its own
        mode when it ends, whichever mode is on top)."""
        if self._mode_left and self._mode is not None:
            self._mode_left = False
            above = [
                torch._C._pop_torch_function_stack()
                for _ in range(max(torch._C._len_torch_function_stack() - self._left_at, 0))
            ]
            self._mode.__enter__()
            for mode in reversed(above):
                torch._C._push_on_torch_function_stack(mode)

    def _rest(self) -> None:
        """Leave the mode off after an optimizer step, until a watched module is next called
        (:meth:`_wake`). Between the two a loop clears gradients, steps a scheduler, logs and
        loads the next batch (a DataLoader indexes and stacks every sample): torch calls the
        mode has nothing to see in, each of which it would turn into a Python call."""
        if self._mode_left:
            self._resting = True

    def _wake(self) -> None:
        if self._resting:
            self._resting = False
            self._mode_on()
