"""Layer freezing that really freezes: parameters, normalisation statistics and optimizer state.

``requires_grad_(False)`` alone is a trap: BatchNorm running statistics keep drifting, the
next ``model.train()`` undoes a ``bn.eval()``, and an optimizer that still holds the tensors
moves them through momentum and weight decay when gradients are zeroed instead of set to
``None``. The helpers here make "frozen" mean bit-identical:

- the parameters get ``requires_grad=False`` and ``grad=None`` (optimizers skip parameters
  whose gradient is ``None``: no momentum, no weight decay);
- with ``bn="eval"``, normalisation layers with running statistics inside a frozen target
  are put in eval mode and *stay* there through later ``model.train()`` calls;
- with ``optimizer=``, its per-parameter state (momentum, Adam moments) for the frozen
  parameters is dropped and a step pre-hook keeps their gradients ``None`` before every step.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import is_lazy
from torch.utils.weak import WeakIdKeyDictionary

from torchscope.records import TrainableReport, TrainableRow

__all__ = [
    "freeze",
    "freeze_until",
    "frozen",
    "frozen_parameters",
    "is_frozen",
    "is_pinned",
    "trainable_report",
    "unfreeze",
]

Target = nn.Module | str | type[nn.Module]
NormMode = Literal["eval", "train"]
_GLOB_CHARS = frozenset("*?[")

# Parameters frozen through these helpers (weak: a deleted model takes its entries along).
# GradientMonitor reads it through is_frozen() to treat such parameters as intentional.
_FROZEN: WeakIdKeyDictionary = WeakIdKeyDictionary()
# Optimizers that already carry our step pre-hook.
_HOOKED_OPTIMIZERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, Any] = (
    weakref.WeakKeyDictionary()
)


def is_frozen(param: torch.Tensor) -> bool:
    """True if ``param`` was frozen by :func:`freeze` (or friends) and is still frozen."""
    return param in _FROZEN and not param.requires_grad


# -- resolving targets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str  # qualified name
    param: nn.Parameter
    owner: nn.Module  # the module whose _parameters holds it
    local: str  # its name there


@dataclass(frozen=True)
class _Selection:
    modules: list[tuple[str, nn.Module]]  # matched modules, each with its whole subtree
    parameters: list[_Param]  # every parameter to change, once


def close_names(target: str, names: Sequence[str]) -> str:
    """A "; did you mean ..." hint for a name that matched nothing (shared by error messages)."""
    close = difflib.get_close_matches(target, names, n=5, cutoff=0.5)
    if close:
        return "; did you mean " + ", ".join(repr(n) for n in close) + "?"
    shown = ", ".join(repr(n) for n in names[:8])
    return f"; module names look like {shown}{', ...' if len(names) > 8 else ''}"


def _match(
    model: nn.Module, target: Target, named: list[tuple[str, nn.Module]]
) -> list[tuple[str, nn.Module]]:
    names = [name for name, _ in named if name]
    if isinstance(target, nn.Module):
        found = [(name, module) for name, module in named if module is target]
        if not found:
            raise ValueError(
                f"the {type(target).__name__} module given as a target is not part of the model; "
                "pass a submodule of the model (or its qualified name)"
            )
        return found
    if isinstance(target, type) and issubclass(target, nn.Module):
        found = [(name, module) for name, module in named if isinstance(module, target)]
        if not found:
            present = sorted({type(module).__name__ for _, module in named})
            raise ValueError(
                f"no module of type {target.__name__} in the model; types present: {', '.join(present)}"
            )
        return found
    if isinstance(target, str):
        if _GLOB_CHARS & set(target):
            found = [
                (name, module)
                for name, module in named
                if name and fnmatch.fnmatchcase(name, target)
            ]
        else:
            found = [(name, module) for name, module in named if name == target]
        if not found:
            raise ValueError(f"no module matches {target!r}{close_names(target, names)}")
        return found
    raise TypeError(
        f"a target must be a module, a qualified name, a glob pattern or a module type; "
        f"got {type(target).__name__}"
    )


def _select(model: nn.Module, targets: Sequence[Target]) -> _Selection:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"the first argument must be the model (an nn.Module), got {type(model).__name__}"
        )
    named = list(model.named_modules())
    matched = (
        [("", model)] if not targets else [m for t in targets for m in _match(model, t, named)]
    )
    modules: dict[int, tuple[str, nn.Module]] = {}
    for name, module in matched:
        for sub_name, sub in module.named_modules(prefix=name):
            modules.setdefault(id(sub), (sub_name, sub))
    return _Selection(list(modules.values()), _parameters_of(list(modules.values())))


def _parameters_of(modules: list[tuple[str, nn.Module]]) -> list[_Param]:
    """The parameters held directly by ``modules``, each once, in registration order.

    Refuses uninitialised lazy parameters before anything is changed: their
    ``requires_grad`` cannot be set and their size is unknown.
    """
    found: dict[int, _Param] = {}
    lazy = []
    for name, module in modules:
        for local, param in module._parameters.items():
            if param is None or id(param) in found:
                continue
            qualified = f"{name}.{local}" if name else local
            if is_lazy(param):
                lazy.append(qualified)
            found[id(param)] = _Param(qualified, param, module, local)
        lazy += [
            f"{name}.{local}" if name else local
            for local, b in module._buffers.items()
            if b is not None and is_lazy(b)
        ]
    if lazy:
        raise ValueError(
            f"cannot freeze uninitialised lazy parameters ({', '.join(lazy[:3])}); run one forward "
            "pass first so that their shapes exist"
        )
    return list(found.values())


# -- normalisation layers pinned in eval mode ----------------------------------------------------


class _EvalPin:
    """Stands in for a frozen module's ``train`` method: any mode request means eval.

    An instance attribute (not a patched class), so only that module is affected; a plain
    object (not a bound function) so the model still deep-copies and pickles with the pin.
    It refers to its module weakly, so the module is freed by reference counting as usual.
    """

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)

    def __call__(self, mode: bool = True) -> nn.Module:
        module = self.module()
        if module is None:  # pragma: no cover - the module holds the pin, so it is alive
            raise ReferenceError("the pinned module no longer exists")
        return type(module).train(module, False)

    def __getstate__(self) -> nn.Module | None:
        return self.module()  # copies and pickles carry the module itself...

    def __setstate__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)  # ...and point weakly at their own copy again


def is_pinned(module: nn.Module) -> bool:
    """True if :func:`freeze` keeps ``module`` in eval mode (a frozen normalisation layer)."""
    return isinstance(module.__dict__.get("train"), _EvalPin)


def _pin_eval(module: nn.Module) -> None:
    module.__dict__["train"] = _EvalPin(module)
    module.training = False


def _unpin(module: nn.Module, training: bool) -> None:
    if is_pinned(module):
        del module.__dict__["train"]
    module.training = training


def _has_running_stats(module: nn.Module) -> bool:
    return isinstance(module, _NormBase) and module.track_running_stats


def _updates_buffers_in_training(module: nn.Module) -> bool:
    """A leaf that holds floating-point buffers: in training mode it may update them
    (spectral norm's power iteration, timm's EvoNorm running variance, an EMA)."""
    return not module._modules and any(
        b is not None and b.is_floating_point() for b in module._buffers.values()
    )


# Names of the parameters each module holds that torchscope froze. Kept on the module
# (``module.__dict__``), so deep copies, pickles and ``load_state_dict(assign=True)`` keep it.
_MARK = "_torchscope_frozen"


def frozen_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` frozen through these helpers and still frozen, by name."""
    found: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        for local in sorted(module.__dict__.get(_MARK, ())):
            param = module._parameters.get(local)
            if param is not None and not param.requires_grad:
                found[f"{name}.{local}" if name else local] = param
    return found


# -- optimizers ----------------------------------------------------------------------------------


def _held_by(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _null_frozen_grads(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            if is_frozen(param):
                param.grad = None


def _attach(optimizer: torch.optim.Optimizer) -> None:
    if optimizer not in _HOOKED_OPTIMIZERS:
        _HOOKED_OPTIMIZERS[optimizer] = optimizer.register_step_pre_hook(_null_frozen_grads)


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )


# -- public API ----------------------------------------------------------------------------------


def freeze(
    model: nn.Module,
    *targets: Target,
    bn: NormMode = "eval",
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[str, ...]:
    """Freeze ``targets`` (the whole model if none) and return the names of the frozen parameters.

    Args:
        model: the model the targets belong to.
        *targets: submodules, qualified names (``"layer1.0"``), glob patterns over module names
            (``"layer[12].*"``), or module types (``nn.BatchNorm2d``). A target that matches
            nothing raises ``ValueError`` naming close matches.
        bn: ``"eval"`` puts normalisation layers with running statistics inside the targets in
            eval mode and keeps them there through later ``model.train()`` calls, so their
            statistics stay unchanged. ``"train"`` leaves such layers fully trainable (their
            parameters too), like Lightning's ``train_bn=True``.
        optimizer: also drop this optimizer's state for the frozen parameters and keep their
            gradients ``None`` before each of its steps.
    """
    _check_freeze_options(bn, optimizer)
    return _freeze(_select(model, targets), bn, optimizer)


def _check_freeze_options(bn: str, optimizer: Any) -> None:
    if bn not in ("eval", "train"):
        raise ValueError(f"bn must be 'eval' or 'train', got {bn!r}")
    _check_optimizer(optimizer)


def _freeze(
    selection: _Selection, bn: str, optimizer: torch.optim.Optimizer | None
) -> tuple[str, ...]:
    kept_trainable: set[int] = set()
    for _, module in selection.modules:
        if _has_running_stats(module):
            if bn == "eval":
                _pin_eval(module)
            else:
                kept_trainable.update(id(p) for p in module.parameters())
        elif _updates_buffers_in_training(module):
            _pin_eval(module)
    names = []
    for entry in selection.parameters:
        param = entry.param
        if id(param) in kept_trainable:
            continue
        param.requires_grad_(False)
        param.grad = None  # a zeroed gradient still feeds momentum and weight decay
        _FROZEN[param] = True
        entry.owner.__dict__.setdefault(_MARK, set()).add(entry.local)
        names.append(entry.name)
        if optimizer is not None:
            optimizer.state.pop(param, None)
    if optimizer is not None:
        _attach(optimizer)
    return tuple(names)


def unfreeze(
    model: nn.Module,
    *targets: Target,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
) -> tuple[str, ...]:
    """Make ``targets`` (the whole model if none) trainable again; return the parameter names.

    Normalisation layers pinned in eval mode follow the model's mode again. With
    ``optimizer=``, parameters it does not hold (compared by identity) are added to it as a
    new param group, with learning rate ``lr`` (default: the optimizer's default ``lr``).
    """
    _check_optimizer(optimizer)
    if lr is not None and optimizer is None:
        raise ValueError("lr= sets the learning rate of a new param group: pass optimizer= too")
    selection = _select(model, targets)
    for _, module in selection.modules:
        if is_pinned(module):
            _unpin(module, model.training)
    names = []
    for entry in selection.parameters:
        entry.param.requires_grad_(True)
        _FROZEN.pop(entry.param, None)
        entry.owner.__dict__.get(_MARK, set()).discard(entry.local)
        names.append(entry.name)
    if optimizer is not None:
        held = _held_by(optimizer)
        new = [entry.param for entry in selection.parameters if id(entry.param) not in held]
        if new:
            group: dict[str, Any] = {"params": new}
            if lr is not None:
                group["lr"] = lr
            optimizer.add_param_group(group)
    return tuple(names)


def freeze_until(
    model: nn.Module,
    name: str,
    *,
    bn: NormMode = "eval",
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[str, ...]:
    """Freeze every parameter registered before module ``name``; it and what follows stay trainable.

    The usual "fine-tune the last block and the head" recipe:
    ``freeze_until(resnet, "layer4")`` freezes ``conv1``, ``bn1`` and ``layer1``-``layer3``.
    The order is registration order, the order of ``model.named_parameters()``: parameters
    held directly by an enclosing module (a ViT's ``class_token``) come before. ``bn`` and
    ``optimizer`` are as for :func:`freeze`.
    """
    _check_freeze_options(bn, optimizer)
    named = list(model.named_modules())
    position = next((i for i, (module_name, _) in enumerate(named) if module_name == name), None)
    if position is None:
        raise ValueError(f"no module named {name!r}{close_names(name, [n for n, _ in named if n])}")
    boundary = {id(p) for p in named[position][1].parameters()}
    modules = named[:position]
    parameters = [entry for entry in _parameters_of(modules) if id(entry.param) not in boundary]
    return _freeze(_Selection(modules, parameters), bn, optimizer)


@contextlib.contextmanager
def frozen(
    model: nn.Module,
    *targets: Target,
    bn: NormMode = "eval",
    optimizer: torch.optim.Optimizer | None = None,
) -> Iterator[tuple[str, ...]]:
    """Freeze ``targets`` for the ``with`` block; on exit restore every flag and mode exactly.

    Restored: each parameter's ``requires_grad`` and ``grad`` reference, each module's
    ``training`` flag and eval pinning, which parameters count as frozen, and the optimizer
    state that freezing dropped. Also on exceptions.
    """
    modules = list(model.modules())
    params = list(model.parameters())
    saved_modules = [
        (m, m.training, m.__dict__.get("train"), set(m.__dict__.get(_MARK, ()))) for m in modules
    ]
    saved_params = [(p, p.requires_grad, p.grad, p in _FROZEN) for p in params]
    saved_state = (
        {} if optimizer is None else {p: optimizer.state[p] for p in params if p in optimizer.state}
    )
    _check_freeze_options(bn, optimizer)
    selection = _select(model, targets)  # a bad target raises before anything changes
    try:
        yield _freeze(selection, bn, optimizer)
    finally:
        for module, training, override, marks in saved_modules:
            if override is None:
                module.__dict__.pop("train", None)
            else:
                module.__dict__["train"] = override
            module.training = training
            if marks:
                module.__dict__[_MARK] = marks
            else:
                module.__dict__.pop(_MARK, None)
        for param, requires_grad, grad, was_frozen in saved_params:
            param.requires_grad_(requires_grad)
            param.grad = grad
            if was_frozen:
                _FROZEN[param] = True
            else:
                _FROZEN.pop(param, None)
        if optimizer is not None:
            for param, state in saved_state.items():
                optimizer.state.setdefault(param, state)


def trainable_report(model: nn.Module, *, depth: int = 1) -> TrainableReport:
    """What is frozen, trainable and in eval mode, per module down to ``depth``, with totals."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth must be an int >= 0, got {depth!r}")
    rows = []
    for name, module in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if level > depth:
            continue
        params = [p for p in {id(p): p for p in module.parameters()}.values() if not is_lazy(p)]
        submodules = list(module.modules())
        rows.append(
            TrainableRow(
                name=name,
                type=type(module).__name__,
                depth=level,
                trainable_params=sum(p.numel() for p in params if p.requires_grad),
                frozen_params=sum(p.numel() for p in params if not p.requires_grad),
                modules=len(submodules),
                modules_in_eval=sum(not m.training for m in submodules),
                pinned_eval=sum(is_pinned(m) for m in submodules),
            )
        )
    unpinned = tuple(
        name
        for name, module in model.named_modules()
        if _has_running_stats(module)
        and module.training
        and not is_pinned(module)
        # frozen by us: marked, or (a rebuilt layer that reuses the parameters) registered
        and (
            module.__dict__.get(_MARK)
            or any(is_frozen(p) for p in module.parameters(recurse=False))
        )
    )
    return TrainableReport(rows=tuple(rows), depth=depth, unpinned_frozen_norms=unpinned)
