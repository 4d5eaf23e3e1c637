"""The ``torchscope`` command line: ``torchscope demo``, ``torchscope summary TARGET``.

A user mistake ends in a one-line error and exit status 2, never in a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchscope import __version__

__all__ = ["main"]

SUMMARY_FORMATS = ("text", "json", "markdown")
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; write it like 1,3,224,224"
        ) from None
    if not shape or any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; write it like 1,3,224,224")
    return shape


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchscope", description="Model introspection and debugging for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torchscope {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("demo", help="summarise a bundled LeNet and torchvision's resnet18")

    summary = commands.add_parser(
        "summary",
        help="print the summary of a model",
        description="Print the summary of the model TARGET names.",
    )
    summary.add_argument(
        "target",
        metavar="TARGET",
        help="model.py, model.py:NAME or package.module:NAME (an nn.Module, a class or a factory)",
    )
    summary.add_argument(
        "--input-size",
        type=_shape,
        action="append",
        metavar="SHAPE",
        help="input shape such as 1,3,224,224; repeat for several inputs "
        "(default: the target file's EXAMPLE_INPUT_SIZE)",
    )
    summary.add_argument(
        "--dtype",
        choices=DTYPES,
        help="dtype of the --input-size tensors (default: the model's; int64 for token ids)",
    )
    summary.add_argument(
        "--depth", type=int, default=3, help="levels of nesting to show (default 3)"
    )
    summary.add_argument(
        "--columns", help="comma-separated columns, e.g. input_shape,output_shape,params"
    )
    summary.add_argument("--mode", choices=("eval", "train", "same"), default="eval")
    summary.add_argument(
        "--all-ops", action="store_true", help="also count FLOPs of ops without MACs"
    )
    summary.add_argument(
        "--memory",
        action="store_true",
        help="estimate the peak memory of inference and of a training step",
    )
    summary.add_argument(
        "--optimizer",
        help="with --memory, add this optimizer's state (adam, adamw, sgd_momentum, ...)",
    )
    summary.add_argument("--format", choices=SUMMARY_FORMATS, default="text")
    return parser


def _summary_command(args: argparse.Namespace) -> int:
    import torch

    from torchscope.loading import load_model
    from torchscope.summarize import summary

    model, source = load_model(args.target)
    input_size = args.input_size or getattr(source, "EXAMPLE_INPUT_SIZE", None)
    if input_size is None:
        raise ValueError(
            f"{args.target}: give the input shape with --input-size 1,3,224,224 "
            "(or define EXAMPLE_INPUT_SIZE in the model's file)"
        )
    columns = args.columns.split(",") if args.columns else None
    result = summary(
        model,
        input_size=input_size,
        dtypes=getattr(torch, args.dtype) if args.dtype else None,
        depth=args.depth,
        columns=columns,
        mode=args.mode,
        all_ops=args.all_ops,
        memory=args.memory,
        optimizer=args.optimizer,
    )
    if args.format == "json":
        print(result.to_json())
    elif args.format == "markdown":
        print(result.to_markdown())
    else:
        print(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    # imported here so that `torchscope --help` answers without loading torch
    from torchscope.errors import SummaryError, TorchscopeError

    try:
        if args.command == "demo":
            from torchscope.demo import run_demo

            run_demo(sys.stdout)
            return 0
        return _summary_command(args)
    except SummaryError as e:
        print(f"torchscope: {e}", file=sys.stderr)
        return 1
    except (TorchscopeError, ValueError, TypeError) as e:
        print(f"torchscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchscope: interrupted", file=sys.stderr)
        return 130
