"""What the model's structure hides from training: tensors the optimizer cannot see, and
units that stay copies of each other."""

from __future__ import annotations

from collections.abc import Iterator

from torchscope.collect.gradients.evidence import Evidence
from torchscope.collect.gradients.registry import rule
from torchscope.records import Finding


@rule("unregistered_module")
def unregistered_module(ev: Evidence) -> Iterator[Finding]:
    for h in ev.observed.hidden:
        if h.kind != "module" or h.held or not h.received:
            continue  # a teacher run under no_grad, or frozen: outside on purpose
        yield ev.finding(
            "unregistered_module", "warning", h.path, None, float(h.numel), None,
            f"{h.path} holds a module in a plain Python list/dict/tuple: its {h.numel:,} "
            "values get gradients but are not in model.parameters(), state_dict() or an "
            "optimizer built from them, so they never train and are not saved. Use nn.ModuleList / "
            "nn.ModuleDict. If it is meant to stay outside (a frozen teacher), set "
            "requires_grad_(False) on it or name it in frozen=",
        )  # fmt: skip


@rule("unregistered_tensor")
def unregistered_tensor(ev: Evidence) -> Iterator[Finding]:
    for h in ev.observed.hidden:
        if h.kind != "tensor" or h.held or not h.received:
            continue
        yield ev.finding(
            "unregistered_tensor", "warning", h.path, None, float(h.numel), None,
            f"{h.path} is a tensor with requires_grad=True kept as a plain attribute, not an "
            "nn.Parameter: it is not in model.parameters(), state_dict() or the optimizer, so "
            "it never trains (and does not move with .to(device)). Wrap it in nn.Parameter, "
            "or register_buffer it if it is a constant",
        )  # fmt: skip


@rule("symmetric_weights")
def symmetric_weights(ev: Evidence) -> Iterator[Finding]:
    rows = ev.observed.rows_identical or {}
    for e in ev.params:
        before, after = rows.get(e.index, (False, None))
        if not (before and after) or not e.trainable or not e.held:
            continue
        moves = ev.moves.get(e.index, [])
        if not any(m.change > 0 for m in moves):
            continue  # never moved: not_updated or no_grad says why
        yield ev.finding(
            "symmetric_weights", "warning", e.name, None, float(e.shape[0]), None,
            f"all {e.shape[0]} rows (units) of {e.name} started equal and are still equal "
            f"after {ev.observed.steps} steps: with a constant initialisation every unit gets the "
            "same gradient, so the layer acts as one unit. Use a random initialisation "
            "(the layer's default, or nn.init.kaiming_/xavier_); only a last layer may start "
            "at zero",
        )  # fmt: skip
