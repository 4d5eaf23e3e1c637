"""The one-shot gradient check: a few steps of a standard loop on copies of the model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchscope._util.nested as _nested
from torchscope._util.inputs import split_inputs
from torchscope.collect.gradients._state import local
from torchscope.collect.gradients.monitor import GradientMonitor
from torchscope.collect.hooks import preserved_rng
from torchscope.distributed import is_sharded
from torchscope.errors import TorchscopeError
from torchscope.records import GradientReport


def check_gradients(
    model: nn.Module,
    inputs: Any,
    target: Any = None,
    *,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 3,
) -> GradientReport:
    """Run a few steps of a standard training loop on copies and report gradient health.

    The model and the optimizer are deep-copied together (so the copy's optimizer holds the
    copy's parameters); the originals, their gradients and the global RNGs are untouched.
    A sharded model (FSDP2, which cannot be deep-copied) is trained in place with a fresh
    optimizer of the same class and hyper-parameters, and its parameters' and buffers' values,
    gradients and modes are put back afterwards; call it on every rank, like the loop.

    Args:
        model: the model to check; it runs in training mode.
        inputs: the forward's input: a tensor, a tuple of positional arguments, or a dict of
            keyword arguments.
        target: passed to ``loss_fn`` after the output. Without ``loss_fn``: integer targets
            mean ``cross_entropy``, floating-point targets ``mse_loss``.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` without a target).
            Without it and without a target, the loss is the output's sum weighted by fixed
            random numbers, so every output element gets a gradient.
        optimizer: the optimizer to copy; default SGD with lr=0.01 over trainable parameters.
        steps: training steps to run.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"check_gradients needs the model (an nn.Module) first, got {type(model).__name__}"
        )
    check_training_arguments(steps, optimizer)
    args, kwargs = split_inputs(inputs)
    compute_loss = _loss_function(loss_fn, target)
    with preserved_rng():
        if is_sharded(model):
            # sharded (FSDP2): no deep copy; trained in place and put back
            with _restored(model):
                return _run(model, _fresh(optimizer, model), steps, args, kwargs, compute_loss)
        try:
            model_copy, optimizer_copy = copy.deepcopy((model, optimizer))
        except Exception as e:
            raise TorchscopeError(
                f"check_gradients could not deep-copy the model ({type(e).__name__}: {e}); "
                "it trains a copy so that yours is untouched. Use GradientMonitor around your "
                "own loop instead"
            ) from e
        if optimizer_copy is None:
            optimizer_copy = _fresh(None, model_copy)
        return _run(model_copy, optimizer_copy, steps, args, kwargs, compute_loss)


def check_training_arguments(steps: Any, optimizer: Any) -> None:
    """The ``steps`` and ``optimizer`` of a check that trains a copy: clear errors."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )


def _run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    compute_loss: Callable[[Any], torch.Tensor],
) -> GradientReport:
    model.train()
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            compute_loss(model(*args, **kwargs)).backward()
            optimizer.step()
    return monitor.report()


def _fresh(optimizer: torch.optim.Optimizer | None, model: nn.Module) -> torch.optim.Optimizer:
    """An optimizer of the same class and hyper-parameters over the same parameters, with no
    state (the user's keeps its own); SGD with lr=0.01 over the trainable ones by default."""
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters: nothing to check")
        return torch.optim.SGD(trainable, lr=0.01)
    groups = [dict(group, params=list(group["params"])) for group in optimizer.param_groups]
    kind: Any = type(optimizer)  # its constructor takes the groups with their settings
    fresh: torch.optim.Optimizer = kind(groups)
    return fresh


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Puts back what training a sharded model in place changes: the values of the local
    shards of its parameters and buffers, the ``.grad`` objects, ``requires_grad`` and the
    modules' training flags, also when the check raises."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    with torch.no_grad():
        values = [local(p.detach()).clone() for p in params]
        held = [local(b.detach()).clone() for b in buffers]
    grads = [p.grad for p in params]
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value, grad, flag in zip(params, values, grads, flags, strict=True):
                local(p.detach()).copy_(value)
                p.grad = grad
                p.requires_grad_(flag)
            for b, value in zip(buffers, held, strict=True):
                local(b.detach()).copy_(value)
        for m, training in modes:
            m.training = training


def _loss_function(
    loss_fn: Callable[..., torch.Tensor] | None, target: Any
) -> Callable[[Any], torch.Tensor]:
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        return (lambda out: loss_fn(out)) if target is None else (lambda out: loss_fn(out, target))
    if target is not None:
        if not isinstance(target, torch.Tensor):
            raise TypeError("without loss_fn, target must be a tensor (class indices or values)")
        if target.is_floating_point():
            return lambda out: F.mse_loss(_only_tensor(out), target)
        return lambda out: F.cross_entropy(_only_tensor(out), target)
    weights: dict[tuple[Any, ...], torch.Tensor] = {}

    def projection(out: Any) -> torch.Tensor:
        total: torch.Tensor | None = None
        for k, tensor in enumerate(_nested.tensors(out)):
            if not (tensor.is_floating_point() and tensor.requires_grad):
                continue
            key = (k, tuple(tensor.shape), tensor.dtype, tensor.device)
            if key not in weights:
                generator = torch.Generator().manual_seed(k)
                weights[key] = torch.randn(
                    tensor.shape, generator=generator, dtype=torch.float32
                ).to(tensor.device, tensor.dtype)
            term = (tensor * weights[key]).sum() / max(tensor.numel(), 1)
            total = term if total is None else total + term
        if total is None:
            raise ValueError(
                "the model's output has no floating-point tensor that requires grad; pass "
                "loss_fn= to say how its output becomes a loss"
            )
        return total

    return projection


def _only_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(
        f"the model returned {type(out).__name__}; pass loss_fn= to say how it becomes a loss"
    )
