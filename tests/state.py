"""Snapshots of everything a debugging tool must leave untouched, for side-effect assertions."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals


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
        state_dict={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
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
    if a.device.type == "meta" or b.device.type == "meta":
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


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
