"""``torchscope preflight model.py``: :func:`torchscope.preflight` on a model file.

The input is the file's ``example_input`` (or ``--input-size``), the target its
``example_target`` (a tensor, or a function of no arguments returning one) or, with
``--classes C``, class indices drawn for the input's batch; the loss is ``--loss``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["LOSSES", "TARGET_NAME", "add_parser", "preflight_command"]

TARGET_NAME = "example_target"
#: --loss choices -> torch.nn.functional's function
LOSSES = {
    "cross_entropy": "cross_entropy",
    "nll": "nll_loss",
    "mse": "mse_loss",
    "l1": "l1_loss",
    "smooth_l1": "smooth_l1_loss",
    "huber": "huber_loss",
    "bce": "binary_cross_entropy",
    "bce_logits": "binary_cross_entropy_with_logits",
}


def add_parser(
    commands: Any, debug: argparse.ArgumentParser, add_model_options: Callable[..., None]
) -> None:
    parser = commands.add_parser(
        "preflight",
        parents=[debug],
        help="check a model before training it: loss at init, gradients, batch "
        "independence, input dependence, overfitting one batch",
        description="Run torchscope.preflight on the model in FILE with the file's "
        f"example_input and {TARGET_NAME} (or --classes C to draw class indices), on copies. "
        "Exits with 1 when a check fails or warns.",
    )
    parser.add_argument("file", metavar="FILE", help="model.py (or model.py:NAME)")
    add_model_options(parser, input_default="the file's example_input")
    parser.add_argument(
        "--classes",
        type=int,
        metavar="C",
        help=f"without {TARGET_NAME} in the file: a target of class indices 0..C-1",
    )
    parser.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        help="the loss (default: cross_entropy for class indices, mse for float targets)",
    )
    parser.add_argument(
        "--steps", type=int, default=100, help="steps of the overfitting check (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _target(args: argparse.Namespace, loaded: Any, inputs: Any) -> Any:
    import torch

    from torchscope._util import nested
    from torchscope.cli.loading import ModelLoadError, example_value

    value = example_value(loaded, TARGET_NAME)
    if value is not None:
        if args.classes is not None:
            raise ModelLoadError(
                f"{loaded.source} defines {TARGET_NAME}; --classes would replace it: leave "
                "one of them out"
            )
        return value
    if args.classes is None:
        raise ModelLoadError(
            f"no target known for {loaded.source}: define {TARGET_NAME} in the file (a "
            "tensor, or a function of no arguments returning one), or pass --classes C for "
            "class indices 0..C-1"
        )
    if args.classes < 2:
        raise ModelLoadError(f"--classes must be 2 or more, got {args.classes}")
    first = next(iter(nested.tensors(inputs)), None)
    batch = int(first.shape[0]) if first is not None and first.dim() else 1
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, args.classes, (batch,), generator=generator)


def _inputs(given: dict[str, Any]) -> Any:
    """The input itself: the file's, or tensors drawn for ``--input-size``."""
    import torch

    if given["input"] is not None:
        return given["input"]
    generator = torch.Generator().manual_seed(0)
    dtype = given["dtypes"] or torch.float32
    tensors = [
        torch.randint(0, 2, tuple(shape), generator=generator, dtype=dtype)
        if not dtype.is_floating_point
        else torch.randn(tuple(shape), generator=generator, dtype=dtype)
        for shape in given["input_size"]
    ]
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def preflight_command(args: argparse.Namespace, model_input: Callable[..., Any]) -> int:
    import torch
    import torch.nn.functional as F

    from torchscope.cli.loading import load
    from torchscope.collect.preflight import preflight

    loaded = load(args.file, name=args.model)
    inputs = _inputs(model_input(args, loaded))
    target = _target(args, loaded, inputs)
    name = args.loss or (
        "mse"
        if isinstance(target, torch.Tensor) and target.is_floating_point()
        else "cross_entropy"
    )
    loss_fn = getattr(F, LOSSES[name])
    report = preflight(loaded.model, inputs, target, loss_fn=loss_fn, steps=args.steps)
    print(report.to_json() if args.json else report)
    return 0 if report.ok else 1
