"""``summary(model)`` without an input: read from the module tree; the model never runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchscope._util.inputs import DeviceLike, resolve_device, unwrap
from torchscope.collect._module_tree import index_model, tree_layers
from torchscope.collect._summary_args import (
    FORWARD_COLUMNS,
    MODES,
    PARAMETER_COLUMNS,
    PARAMETER_DEFAULT_COLUMNS,
    check_columns,
    check_depth,
)
from torchscope.collect._torchscript import type_name
from torchscope.records import ModelSummary

__all__ = ["parameter_summary"]


def parameter_summary(
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
    depth = check_depth(depth)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    run_it = (
        "no input was given, so the model is not run: pass one, e.g. summary(model, x) or "
        "summary(model, input_size=(1, 3, 224, 224))"
    )
    if columns is None:
        chosen = PARAMETER_DEFAULT_COLUMNS
    else:
        chosen = check_columns(columns)
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
    index = index_model(model, hookable=False)
    return ModelSummary(
        model_type=type_name(model),
        layers=tree_layers(model, index.modules),
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
