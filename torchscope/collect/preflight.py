"""Preflight: the checks practitioners run by hand before training a new model (A. Karpathy,
"A Recipe for Training Neural Networks"), run on copies in seconds.

Loss at initialisation against the loss's chance level; a gradient for every trainable
parameter from one batch; samples that do not influence each other; a model that uses its
input; overfitting one batch; and the output/target contract of the loss function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from torchscope._util.inputs import split_inputs
from torchscope.collect.gradients import GradientMonitor
from torchscope.collect.gradients.check import check_training_arguments
from torchscope.collect.gradients.signals import LOSS_FUNCTIONS, chance_level
from torchscope.collect.hooks import iter_modules, preserved_rng
from torchscope.collect.independence import check_batch_independence
from torchscope.errors import TorchscopeError
from torchscope.records import Finding
from torchscope.records.preflight import PreflightCheck, PreflightReport

__all__ = ["INIT_LOSS_FACTOR", "MIN_OVERFIT_STEPS", "OVERFIT_FACTOR", "preflight"]

#: a loss at initialisation this many times its chance level is "far above" it
INIT_LOSS_FACTOR = 2.0
#: overfitting one batch must bring the loss below this fraction of its first value
OVERFIT_FACTOR = 0.5
#: overfitting stops once the loss is below OVERFIT_FACTOR of its first value, after at
#: least this many steps (the loss-contract checks see every one of them)
MIN_OVERFIT_STEPS = 3
#: the gradient monitor's kinds that break the loss function's output/target contract
CONTRACT_KINDS = (
    "probabilities_into_logits_loss",
    "softmax_into_cross_entropy",
    "softmax_wrong_dim",
    "clipped_logits",
    "loss_broadcast",
)


def preflight(
    model: nn.Module,
    inputs: Any,
    target: Any,
    *,
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 100,
) -> PreflightReport:
    """Check a model before training it, on one batch: see :mod:`torchscope.collect.preflight`
    and docs/preflight.md.

    Runs on copies of the model and the optimizer: the originals, their gradients and the
    global RNGs are untouched.

    Args:
        model: the model to check.
        inputs: what the model is called with: a tensor, a tuple of positional arguments or a
            dict of keyword arguments (as in :func:`torchscope.summary`).
        target: what ``loss_fn(output, target)`` takes after the output.
        loss_fn: the loss, ``loss_fn(output, target)``.
        optimizer: the optimizer to copy for the overfitting check; default Adam (lr 1e-2)
            over the trainable parameters.
        steps: optimizer steps of the overfitting check.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"preflight needs the model (an nn.Module) first, got {type(model).__name__}"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    check_training_arguments(steps, optimizer)
    args, kwargs = split_inputs(inputs)
    with preserved_rng():
        try:
            trained, trained_optimizer = copy.deepcopy((model, optimizer))
            probe = copy.deepcopy(model)
        except Exception as e:
            raise TorchscopeError(
                f"preflight could not deep-copy the model ({type(e).__name__}: {e}); it works "
                "on copies so that yours is untouched"
            ) from e
        init, gradients = _first_batch(probe, args, kwargs, target, loss_fn)
        checks = [init, gradients]
        checks.append(_batch_independence(model, inputs))
        checks.append(_input_dependence(probe, args, kwargs, target, loss_fn))
        overfit, findings, done = _overfit(
            trained, trained_optimizer, args, kwargs, target, loss_fn, steps
        )
        checks.append(overfit)
        checks.append(_contract(findings))
    return PreflightReport(checks=tuple(checks), findings=findings, steps=done)


# -- loss at initialisation, and a gradient for every parameter ----------------------------------


class _LossCall(TorchFunctionMode):
    """Notes the first loss function called: its name, family and chance level."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: tuple[str, str, float | None] | None = None

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        known = LOSS_FUNCTIONS.get(func)
        if known is not None and self.seen is None and len(args) >= 2:
            scores, target = args[0], args[1]
            chance = None
            if isinstance(scores, torch.Tensor) and isinstance(target, torch.Tensor):
                with torch.no_grad():
                    level = chance_level(
                        known[1], scores.detach(), target.detach(), known[0], kwargs
                    )
                chance = float(level) if level is not None else None
            self.seen = (known[0], known[1], chance)
        return func(*args, **kwargs)


def _loss(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: Callable[..., torch.Tensor],
) -> torch.Tensor:
    output = model(*args, **kwargs)
    try:
        loss = loss_fn(output, target)
    except Exception as e:
        raise TorchscopeError(
            f"loss_fn(output, target) failed ({type(e).__name__}: {e}) with an output of "
            f"{_describe(output)} and a target of {_describe(target)}: is it the loss for this "
            "target (class indices for cross_entropy, values shaped like the output for mse)?"
        ) from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TorchscopeError(
            "loss_fn(output, target) must return a single-number tensor (a mean or a sum), "
            f"got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
        )
    return loss.reshape(())


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    return type(value).__name__


def _first_batch(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: Callable[..., torch.Tensor],
) -> tuple[PreflightCheck, PreflightCheck]:
    ran: set[str] = set()
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: ran.add(name))
        for name, module in iter_modules(model)
    ]
    model.train()
    try:
        with _LossCall() as watch:
            loss = _loss(model, args, kwargs, target, loss_fn)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return _init_check(float(loss.detach()), watch.seen), _gradient_check(model, ran)


def _init_check(value: float, seen: tuple[str, str, float | None] | None) -> PreflightCheck:
    if seen is None or seen[2] is None or not seen[2] > 0:
        what = f"{seen[0]} has" if seen is not None else "the loss function has"
        return PreflightCheck(
            "init_loss", "skip", value, "a chance level",
            f"{what} no chance level defined here (known: cross_entropy/nll_loss ln C, "
            "binary cross-entropy the labels' entropy, mse/l1/huber the target's spread)",
        )  # fmt: skip
    name, family, chance = seen[0], seen[1], float(seen[2])
    expected = f"about {chance:.4g} ({name}'s chance level)"
    if not math.isfinite(value):
        return PreflightCheck(
            "init_loss", "fail", value, expected,
            "the loss at initialisation is not finite: look for log(0), a division by zero "
            "or an overflow in the forward",
        )  # fmt: skip
    ratio = value / chance
    if ratio < INIT_LOSS_FACTOR:
        return PreflightCheck(
            "init_loss", "pass", value, expected,
            f"{ratio:.2f} times the loss of a prediction that ignores the input",
        )  # fmt: skip
    if family == "regression":
        return PreflightCheck(
            "init_loss", "warn", value, expected,
            f"{ratio:.3g} times the loss of predicting the targets' mean: the outputs start far "
            "from the targets. Standardise the targets, or initialise the last layer's bias "
            "to their mean",
        )  # fmt: skip
    return PreflightCheck(
        "init_loss", "fail", value, expected,
        f"{ratio:.3g} times the loss of a uniform prediction: the initial logits are far from "
        "uniform (scaled logits, a last layer with a large init or bias). Initialise the last "
        "layer small (zero bias, small weights) so the first predictions are near uniform",
    )  # fmt: skip


def _gradient_check(model: nn.Module, ran: set[str]) -> PreflightCheck:
    owner = {
        id(p): name for name, module in iter_modules(model) for p in module._parameters.values()
        if p is not None
    }  # fmt: skip
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    missing: list[str] = []
    for name, p in trainable:
        module = owner.get(id(p), "")
        if p.grad is None:
            why = (
                "its module never ran"
                if module not in ran and not any(r.startswith(module + ".") for r in ran)
                else "its output does not reach the loss (.detach(), .item(), no_grad, "
                "a tensor rebuilt from values)"
            )
            missing.append(f"{name} (no gradient: {why})")
        elif not bool(p.grad.detach().ne(0).any()):
            missing.append(
                f"{name} (a gradient of exactly zero: argmax/round/a comparison in the path, or "
                "units dead on the whole batch)"
            )
    expected = f"all {len(trainable)} trainable tensors" + (
        f" ({frozen} frozen ones are not checked)" if frozen else ""
    )
    if not missing:
        return PreflightCheck(
            "gradients", "pass", float(len(trainable)), expected,
            "every trainable parameter got a non-zero gradient from one batch",
        )  # fmt: skip
    return PreflightCheck(
        "gradients", "fail", float(len(trainable) - len(missing)), expected,
        f"{len(missing)} trainable tensor(s) got no gradient from one batch: "
        + "; ".join(missing[:6]) + (f"; and {len(missing) - 6} more" if len(missing) > 6 else ""),
    )  # fmt: skip


# -- batch independence, input dependence -------------------------------------------------------


def _batch_independence(model: nn.Module, inputs: Any) -> PreflightCheck:
    expected = "zero gradient from sample j's input to sample i's output"
    try:
        report = check_batch_independence(model, inputs, samples=2)  # the first and last
    except (TorchscopeError, ValueError, TypeError) as e:  # no float input with a batch dim
        return PreflightCheck("batch_independence", "skip", None, expected, str(e))
    if report.ok:
        return PreflightCheck(
            "batch_independence", "pass", 0.0, expected,
            f"the outputs of samples {', '.join(map(str, report.outputs_checked))} depend on "
            "their own input only" + (f" ({report.note})" if report.note else ""),
        )  # fmt: skip
    worst = report.leaks[0]
    return PreflightCheck("batch_independence", "fail", worst.value, expected, str(report))


def _shuffled(value: Any, order: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == order.numel():
        return value[order.to(value.device)]
    return value


def _input_dependence(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: Callable[..., torch.Tensor],
) -> PreflightCheck:
    expected = "the loss changes when the inputs are zeroed or shuffled"
    model.eval()  # dropout would make two passes differ on its own
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    if not tensors:
        return PreflightCheck("input_dependence", "skip", None, expected, "no tensor input")
    with torch.no_grad():
        real = float(_loss(model, args, kwargs, target, loss_fn))

        def zeroed(v: Any) -> Any:
            return torch.zeros_like(v) if isinstance(v, torch.Tensor) else v

        zero = float(
            _loss(model, tuple(map(zeroed, args)), {k: zeroed(v) for k, v in kwargs.items()},
                  target, loss_fn)
        )  # fmt: skip
        batch = tensors[0].shape[0] if tensors[0].dim() else 1
        shuffled = real
        if batch > 1:
            order = torch.roll(torch.arange(batch), 1)  # every sample gets another's input
            shuffled = float(
                _loss(model, tuple(_shuffled(a, order) for a in args),
                      {k: _shuffled(v, order) for k, v in kwargs.items()}, target, loss_fn)
            )  # fmt: skip
    scale = max(abs(real), 1e-12)
    change = max(abs(zero - real), abs(shuffled - real)) / scale
    if change > 1e-6 or not math.isfinite(change):
        return PreflightCheck(
            "input_dependence", "pass", change, expected,
            f"zeroed inputs give a loss of {zero:.4g}, shuffled ones {shuffled:.4g}, "
            f"against {real:.4g}",
        )  # fmt: skip
    return PreflightCheck(
        "input_dependence", "fail", change, expected,
        f"the loss is {real:.4g} with the real inputs, with zeroed inputs and with inputs "
        "shuffled across the batch: the model's output does not depend on its input (an "
        "input multiplied by zero, a forward that returns a parameter, a path that uses only "
        "the input's shape)",
    )  # fmt: skip


# -- overfitting one batch, and the loss contract ------------------------------------------------


def _overfit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    target: Any,
    loss_fn: Callable[..., torch.Tensor],
    steps: int,
) -> tuple[PreflightCheck, tuple[Finding, ...], int]:
    if optimizer is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters: nothing to check")
        optimizer = torch.optim.Adam(trainable, lr=1e-2)
    model.train()
    losses: list[float] = []
    with GradientMonitor(model, optimizer) as monitor:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model, args, kwargs, target, loss_fn)
            loss.backward()
            losses.append(float(loss.detach()))
            if losses[-1] <= OVERFIT_FACTOR * losses[0] and len(losses) >= MIN_OVERFIT_STEPS:
                break  # fitted: more steps only cost time (and drive the CPU into denormals)
            optimizer.step()
    findings = monitor.report(gather=False).findings
    first = losses[0]
    best_late = min(losses[-max(len(losses) // 10, 1) :])
    expected = f"below {OVERFIT_FACTOR:g} x the first loss within {steps} steps"
    if not all(math.isfinite(v) for v in losses):
        verdict, message = "fail", "the loss became non-finite while overfitting one batch"
    elif first <= 1e-8 or best_late <= OVERFIT_FACTOR * first:
        verdict, message = "pass", f"the loss fell from {first:.4g} to {best_late:.4g}"
    else:
        verdict = "fail" if best_late >= first * 0.99 else "warn"
        severe = [f"{f.kind} at {f.where}" for f in findings if f.severity != "info"]
        message = (
            f"{steps} steps on one batch took the loss from {first:.4g} only to {best_late:.4g} "
            f"({best_late / first:.0%} of it): a model that cannot fit one batch will not fit "
            "the data. "
            + (
                f"Meanwhile the gradient monitor found: {', '.join(severe)}"
                if severe
                else "Check the learning rate and that the parameters are in the optimizer"
            )
        )
    return PreflightCheck("overfit", verdict, best_late, expected, message), findings, len(losses)


def _contract(findings: tuple[Finding, ...]) -> PreflightCheck:
    expected = "logits into logits losses, one class dim, matching regression shapes"
    broken = [f for f in findings if f.kind in CONTRACT_KINDS and f.severity != "info"]
    if not broken:
        return PreflightCheck(
            "loss_contract", "pass", None, expected,
            "what reaches the loss is what the loss expects",
        )  # fmt: skip
    return PreflightCheck(
        "loss_contract", "fail", float(len(broken)), expected,
        " ".join(f"{f.kind} ({f.where}): {f.message}." for f in broken),
    )  # fmt: skip
