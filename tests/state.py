"""Snapshots of everything a debugging tool must leave untouched, for side-effect assertions."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.nn.parameter import is_lazy


@dataclass
class ModelState:
    state_dict: dict[str, torch.Tensor]
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    devices: dict[str, torch.device]
    hook_counts: dict[str, int]
    global_hooks: tuple[int, ...]
    torch_rng: torch.Tensor
    python_rng: Any
    grad_enabled: bool


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(getattr(module, attr))
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
    )


def snapshot(model: nn.Module) -> ModelState:
    return ModelState(
        state_dict={
            k: v if is_lazy(v) else v.detach().clone()  # lazy: nothing to copy, kept to compare
            for k, v in model.state_dict(keep_vars=True).items()
        },
        training={name: m.training for name, m in model.named_modules(remove_duplicate=False)},
        requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
        grads={
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        devices={name: t.device for name, t in [*model.named_parameters(), *model.named_buffers()]},
        hook_counts={name: _hook_count(m) for name, m in model.named_modules()},
        global_hooks=(
            len(module_globals._global_forward_hooks),
            len(module_globals._global_forward_pre_hooks),
            len(module_globals._global_backward_hooks),
            len(module_globals._global_backward_pre_hooks),
        ),
        torch_rng=torch.random.get_rng_state(),
        python_rng=random.getstate(),
        grad_enabled=torch.is_grad_enabled(),
    )


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    if is_lazy(a) or is_lazy(b):  # still uninitialised, and the very same object
        return a is b
    if a.device.type == "meta" or b.device.type == "meta":
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():  # NaN where NaN was is unchanged
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def assert_unchanged(before: ModelState, model: nn.Module) -> None:
    after = snapshot(model)
    assert before.state_dict.keys() == after.state_dict.keys()
    for key in before.state_dict:
        assert _same_tensor(before.state_dict[key], after.state_dict[key]), (
            f"state_dict[{key!r}] changed"
        )
    assert before.training == after.training, "training flags changed"
    assert before.requires_grad == after.requires_grad, "requires_grad flags changed"
    for name, grad in before.grads.items():
        other = after.grads[name]
        assert (grad is None) == (other is None), f"{name}.grad appeared or vanished"
        if grad is not None and other is not None:
            assert _same_tensor(grad, other), f"{name}.grad changed"
    assert before.devices == after.devices, "the model moved device"
    assert before.hook_counts == after.hook_counts, "hooks left on modules"
    assert before.global_hooks == after.global_hooks, "global module hooks left behind"
    assert torch.equal(before.torch_rng, after.torch_rng), "the global torch RNG was consumed"
    assert before.python_rng == after.python_rng, "Python's RNG was consumed"
    assert before.grad_enabled == after.grad_enabled, "grad mode changed"


# ---------------------------------------------------------------------------------------------
# bit for bit: the module objects, their __dict__ entries and containers by identity, tensor
# values by their bits (NaN payloads and -0.0 included)

_CONTAINERS = (dict, collections.OrderedDict, list, set)


def _bits(tensor: torch.Tensor) -> torch.Tensor | None:
    """A copy of a tensor's bits (None for an uninitialised lazy tensor or a meta tensor)."""
    if is_lazy(tensor) or tensor.device.type == "meta":
        return None
    copy = tensor.detach().clone()
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(
        copy.element_size()
    )
    return copy if integer is None or copy.dtype == torch.bool else copy.view(integer)


@dataclass
class _TensorFacts:
    tensor: torch.Tensor
    cls: type
    layout: tuple[Any, ...]
    requires_grad: bool
    bits: torch.Tensor | None
    grad: torch.Tensor | None
    grad_bits: torch.Tensor | None

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _TensorFacts:
        lazy = is_lazy(tensor)
        layout = (tensor.dtype, tensor.device) + (
            () if lazy else (tuple(tensor.shape), tensor.stride(), tensor.storage_offset())
        )
        grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
        return cls(
            tensor,
            type(tensor),
            layout,
            tensor.requires_grad,
            _bits(tensor),
            grad,
            None if grad is None else _bits(grad),
        )

    def check(self, where: str) -> None:
        again = _TensorFacts.of(self.tensor)
        assert again.cls is self.cls, f"{where}: became a {again.cls.__name__}"
        assert again.layout == self.layout, f"{where}: dtype, device, shape or strides changed"
        assert again.requires_grad == self.requires_grad, f"{where}: requires_grad changed"
        assert (again.bits is None) == (self.bits is None), f"{where}: values appeared or vanished"
        if self.bits is not None and again.bits is not None:
            assert torch.equal(again.bits, self.bits), f"{where}: values changed"
        assert again.grad is self.grad, f"{where}: .grad rebound"
        if self.grad_bits is not None and again.grad_bits is not None:
            assert torch.equal(again.grad_bits, self.grad_bits), f"{where}: .grad values changed"


@dataclass
class ExactState:
    """References to every module object and what it held, to compare by identity after."""

    modules: list[tuple[str, nn.Module, type, list[tuple[str, Any]], dict[str, list[Any]]]]
    tensors: dict[int, tuple[str, _TensorFacts]]
    outer: ModelState


def _entries(container: Any) -> list[Any]:
    return list(container.items()) if isinstance(container, dict) else list(container)


def exact_snapshot(model: nn.Module) -> ExactState:
    modules = []
    tensors: dict[int, tuple[str, _TensorFacts]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        attributes = list(vars(module).items())
        contents = {k: _entries(v) for k, v in attributes if type(v) in _CONTAINERS}
        modules.append((name, module, type(module), attributes, contents))
        prefix = f"{name}." if name else ""
        values = [
            *module._parameters.items(),
            *module._buffers.items(),
            *((k, v) for k, v in attributes if isinstance(v, torch.Tensor)),
        ]
        for key, value in values:
            if isinstance(value, torch.Tensor) and id(value) not in tensors:
                tensors[id(value)] = (prefix + key, _TensorFacts.of(value))
    return ExactState(modules, tensors, snapshot(model))


def _same_entries(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, tuple) and isinstance(y, tuple):
            if x[0] != y[0] or x[1] is not y[1]:
                return False
        elif x is not y:
            return False
    return True


def assert_identical(before: ExactState, model: nn.Module) -> None:
    """The model is as it was, bit for bit: same module objects, classes, ``__dict__`` keys in
    order with the same objects, the same contents in its lists, dicts and sets, the same
    tensor objects with the same bits, flags and grads; and :func:`assert_unchanged` holds."""
    after = [(n, m) for n, m in model.named_modules(remove_duplicate=False)]
    assert [n for n, _ in after] == [m[0] for m in before.modules], "modules added or removed"
    for (name, module, cls, attributes, contents), (_, live) in zip(
        before.modules, after, strict=True
    ):
        where = f"module {name or '<root>'!r}"
        assert live is module, f"{where}: another module object"
        assert type(module) is cls, f"{where}: became a {type(module).__name__}"
        now = list(vars(module).items())
        keys, old_keys = [k for k, _ in now], [k for k, _ in attributes]
        assert keys == old_keys, f"{where}: attributes changed: {old_keys} -> {keys}"
        for (key, value), (_, old) in zip(now, attributes, strict=True):
            assert value is old, f"{where}: attribute {key!r} rebound"
        for key, entries in contents.items():
            if isinstance(vars(module)[key], set):
                same = {id(x) for x in vars(module)[key]} == {id(x) for x in entries}
            else:
                same = _same_entries(_entries(vars(module)[key]), entries)
            assert same, f"{where}: the contents of {key!r} changed"
    for name, facts in before.tensors.values():
        facts.check(name)
    assert_unchanged(before.outer, model)
