"""What the model's structure says before any step: tensors the optimizer cannot see, and
weight matrices whose rows are all the same."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchscope.collect.hooks import iter_modules

__all__ = ["Hidden", "gate_blocks", "hidden_tensors", "identical_rows"]


@dataclass(frozen=True)
class Hidden:
    """Trainable tensors held where ``parameters()`` does not look."""

    path: str  # attribute path from the model, e.g. "blocks[1]" or "log_scale"
    kind: str  # "module" (a module in a plain list/dict/tuple) or "tensor"
    tensors: tuple[torch.Tensor, ...]  # the ones that require grad


def _modules_in(value: object, path: str) -> list[tuple[str, nn.Module]]:
    """Modules inside plain containers (lists of lists included), with their paths."""
    found: list[tuple[str, nn.Module]] = []
    todo: list[tuple[str, object]] = [(path, value)]
    while todo:
        where, item = todo.pop()
        if isinstance(item, nn.Module):
            found.append((where, item))
        elif isinstance(item, (list, tuple)):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
        elif isinstance(item, dict):
            todo.extend((f"{where}[{k!r}]", v) for k, v in item.items())
    return found


def hidden_tensors(model: nn.Module) -> list[Hidden]:
    """Modules kept in plain Python containers and ``requires_grad`` tensors kept as plain
    attributes: ``model.parameters()``, ``state_dict()`` and an optimizer built from them all
    miss these. Only tensors that require grad and are not parameters of the model count."""
    registered = {id(p) for p in model.parameters()}
    hidden: list[Hidden] = []
    for prefix, module in iter_modules(model):
        for name, value in vars(module).items():
            if name.startswith("__") or name in ("_parameters", "_buffers", "_modules"):
                continue
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, torch.Tensor):
                if (
                    value.requires_grad
                    and value.is_leaf
                    and not isinstance(value, nn.Parameter)
                    and id(value) not in registered
                ):
                    hidden.append(Hidden(path, "tensor", (value,)))
                continue
            if not isinstance(value, (list, tuple, dict)):
                continue
            for where, inner in _modules_in(value, path):
                tensors = tuple(
                    p for p in inner.parameters() if p.requires_grad and id(p) not in registered
                )
                if tensors:
                    hidden.append(Hidden(where, "module", tensors))
    return hidden


def gate_blocks(module: nn.Module, local_name: str) -> int:
    """How many gates a recurrent layer's input and hidden weights stack by rows (GRU 3, LSTM
    4), each a block of one row per hidden unit; 1 for any other weight."""
    if not local_name.startswith(("weight_ih", "weight_hh")):
        return 1
    if isinstance(module, (nn.LSTM, nn.LSTMCell)):
        return 4
    if isinstance(module, (nn.GRU, nn.GRUCell)):
        return 3
    return 1


def identical_rows(weight: torch.Tensor, blocks: int = 1) -> torch.Tensor | None:
    """A device bool: every row (output unit) of ``weight`` equals the first of its block
    (``blocks`` stacked gates of a recurrent layer, each one row per hidden unit); None where
    the question does not apply (fewer than two rows a block, or not a matrix or filter
    bank)."""
    if weight.dim() < 2 or not weight.is_floating_point() or weight.shape[0] % blocks:
        return None
    if hasattr(weight, "placements"):
        blocks = 1  # a sharded weight (DTensor): whole rows, as below
    if weight.shape[0] // blocks < 2:
        return None
    with torch.no_grad():
        w = weight.detach()
        w = w.reshape(blocks, w.shape[0] // blocks, -1) if blocks > 1 else w
        same = (w == w[:, :1]).all() if blocks > 1 else (w == w[:1]).all()
        # a sharded weight (DTensor): the verdict of all its shards, a small collective at
        # the monitor's entry and exit, which every rank of an SPMD loop goes through
        full = getattr(same, "full_tensor", None)
        return full() if full is not None else same
