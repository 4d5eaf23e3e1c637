"""The ``torchscope`` command line.

``torchscope demo``, ``torchscope summary TARGET``, ``torchscope graph FILE`` and
``torchscope diff A.py B.py``. TARGET and FILE are ``model.py``, ``model.py:NAME`` or
``package.module:NAME``; how a file's model and input are found is
:func:`torchscope.cli.loading.find_model` and :func:`torchscope.cli.loading.example_input`.

A user mistake ends in a short message on stderr, never in a traceback (``--debug`` adds it).
Exit status: 0 done; 1 the model's forward failed (``summary``, ``graph``) or the graphs
differ (``diff``); 2 any other error (for ``diff``, every error); 130 interrupted.

Without Graphviz's ``dot`` on PATH, ``graph -o x.svg`` (and the default FILE's stem.svg)
is drawn by torchscope's own layout, with one note on stderr that Graphviz gives a tighter
layout for small graphs; ``-o x.png`` and ``-o x.pdf`` need Graphviz and say how to install it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchscope import __version__

if TYPE_CHECKING:
    from torchscope.cli.loading import LoadedModel
    from torchscope.records import Graph

__all__ = ["main"]

SUMMARY_FORMATS = ("text", "json", "markdown")
GRAPH_FORMATS = (".svg", ".png", ".pdf", ".dot", ".html", ".json")
GRAPH_KINDS = ("module", "autograd")
#: Loggers whose notes (INFO and up) the command line prints on stderr.
NOTE_LOGGERS = ("torchscope.render.dot",)
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")

_SHAPE_EXAMPLE = "write it like 1,3,224,224, several inputs like '1,3,224,224;1,10'"


def _shapes(text: str) -> list[tuple[int, ...]]:
    """``1,3,224,224`` or ``1x3x224x224``; several separated by ``;``."""
    shapes = []
    for part in text.split(";"):
        if not part.strip():
            continue
        try:
            shape = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a shape; {_SHAPE_EXAMPLE}") from None
        if not shape or any(d < 0 for d in shape):
            raise argparse.ArgumentTypeError(f"{text!r} is not a shape; {_SHAPE_EXAMPLE}")
        shapes.append(shape)
    if not shapes:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; {_SHAPE_EXAMPLE}")
    return shapes


def _add_model_options(parser: argparse.ArgumentParser, *, input_default: str) -> None:
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="which model when the file defines several: an instance, a class or a function",
    )
    parser.add_argument(
        "--input-size",
        type=_shapes,
        action="append",
        metavar="SHAPE",
        help="input shape such as 1,3,224,224; several inputs: '1,3,224,224;1,10' or repeat "
        f"the option (default: {input_default})",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="dtype of the --input-size tensors (default: the model's)",
    )


def _parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the command; SUPPRESS keeps the subcommand's
    # default from overwriting `torchscope --debug COMMAND`
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the Python traceback of an error",
    )
    parser = argparse.ArgumentParser(
        prog="torchscope", description="Model introspection and debugging for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torchscope {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[debug],
        help="train a LeNet on bundled digits and run every tool on it",
        description="Train a LeNet on scikit-learn's bundled 8x8 digits (no download), "
        "fine-tune its head with the rest frozen, and write the summary, graph, gradient "
        "health, gradient-flow chart, per-layer timing, TensorBoard events and checkpoints.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    demo.add_argument(
        "--inject-bug",
        choices=("detach", "softmax", "nan"),
        help="plant a classic bug to see the gradient monitor find it",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument(
        "--nproc",
        type=_process_count,
        default=1,
        metavar="N",
        help="train in N CPU processes under DistributedDataParallel (gloo), launched like "
        "torchrun; rank 0 prints and writes the files (default 1)",
    )

    summary = commands.add_parser(
        "summary",
        parents=[debug],
        help="print the summary table of a model",
        description="Print the summary of the model TARGET names.",
    )
    summary.add_argument(
        "target",
        metavar="TARGET",
        help="model.py, model.py:NAME or package.module:NAME (an nn.Module, a class or a factory)",
    )
    _add_model_options(
        summary, input_default="the file's example_input, else its EXAMPLE_INPUT_SIZE"
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
    summary.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )

    graph = commands.add_parser(
        "graph",
        parents=[debug],
        help="draw the graph of a model (svg, png, pdf, dot, html, json)",
        description="Draw the module graph (or the autograd graph) of the model in FILE.",
    )
    graph.add_argument("file", metavar="FILE", help="model.py (or model.py:NAME)")
    _add_model_options(graph, input_default="the file's example_input")
    graph.add_argument(
        "--kind",
        choices=GRAPH_KINDS,
        default="module",
        help="module: data flow between modules (default); autograd: what backward() runs",
    )
    graph.add_argument(
        "--depth",
        type=int,
        help="show modules down to this nesting level, deeper ones drawn as one box "
        "(1: only the model's children; default: no limit)",
    )
    graph.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help=f"output file; its suffix picks the format: {', '.join(GRAPH_FORMATS)} "
        "(default: FILE's stem.svg in the working directory); png and pdf need Graphviz",
    )

    diff = commands.add_parser(
        "diff",
        parents=[debug],
        help="compare the graphs of two models",
        description="Print what changed between the graphs of the models in A and B. "
        "Exit status 0: identical; 1: they differ; 2: an error.",
    )
    diff.add_argument("a", metavar="A", help="model.py (or model.py:NAME)")
    diff.add_argument("b", metavar="B", help="model.py (or model.py:NAME)")
    _add_model_options(diff, input_default="each file's example_input")
    diff.add_argument("--kind", choices=GRAPH_KINDS, default="module")
    diff.add_argument(
        "--depth", type=int, help="compare modules down to this nesting level (default: all)"
    )

    from torchscope.cli.preflight import add_parser as add_preflight
    from torchscope.cli.run import add_parser as add_run

    add_preflight(commands, debug, _add_model_options)
    add_run(commands, debug)

    timing = commands.add_parser(
        "time",
        parents=[debug],
        help="time every module's forward and backward",
        description="Time the forward and backward pass of every module of the model in FILE "
        "(CUDA events on a GPU, perf_counter on the CPU), most expensive first.",
    )
    timing.add_argument("file", metavar="FILE", help="model.py (or model.py:NAME)")
    _add_model_options(timing, input_default="the file's example_input")
    timing.add_argument("--no-backward", action="store_true", help="time the forward only")
    timing.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    timing.add_argument("--repeat", type=int, default=20, help="timed steps (default 20)")
    timing.add_argument("--device", help="run on this device (cpu, cuda, cuda:1)")
    timing.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


# -- shared steps -------------------------------------------------------------------------------


def _model_input(args: argparse.Namespace, loaded: LoadedModel) -> dict[str, Any]:
    """``input``, ``input_size`` and ``dtypes`` for a collector: the options', else the file's."""
    from torchscope.cli.loading import ModelLoadError

    given = _known_input(args, loaded)
    if given is None:
        raise ModelLoadError(_no_input_message(loaded))
    return given


def _known_input(args: argparse.Namespace, loaded: LoadedModel) -> dict[str, Any] | None:
    """What :func:`_model_input` returns, or None when neither the options nor the file give
    an input."""
    import torch

    from torchscope.cli.loading import example_input

    dtypes = getattr(torch, args.dtype) if args.dtype else None
    if args.input_size:
        shapes = [shape for group in args.input_size for shape in group]
        return {"input": None, "input_size": shapes, "dtypes": dtypes}
    value = example_input(loaded)
    if value is not None:
        return {"input": value, "input_size": None, "dtypes": None}
    legacy = getattr(loaded.module, "EXAMPLE_INPUT_SIZE", None)
    if legacy is not None:
        return {"input": None, "input_size": legacy, "dtypes": dtypes}
    return None


def _no_input_message(loaded: LoadedModel, *, what: str = "") -> str:
    from torchscope.cli.loading import input_hint

    hint = input_hint(loaded.model)
    return (
        f"no input known for the model ({loaded.name}) in {loaded.source}{what}: give the "
        "input shape with --input-size 1,3,224,224 (several inputs: '1,3,224,224;1,10'), or "
        "define example_input in the file (a tensor, a tuple, a dict, or a function returning "
        "one)" + (f"; {hint}" if hint else "")
    )


def _graph_of(args: argparse.Namespace, target: str) -> tuple[Graph, LoadedModel]:
    from torchscope.cli.loading import load
    from torchscope.collect.graph import autograd_graph_of, module_graph

    loaded = load(target, name=args.model)
    given = _model_input(args, loaded)
    if args.kind == "autograd":
        return autograd_graph_of(loaded.model, **given), loaded
    return module_graph(loaded.model, **given, depth=args.depth), loaded


def _check_output(output: str) -> None:
    from torchscope.errors import TorchscopeError

    suffix = Path(output).suffix.lower()
    if suffix not in GRAPH_FORMATS:
        raise TorchscopeError(
            f"cannot write {output}: unknown format {suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(GRAPH_FORMATS)}"
        )
    folder = Path(output).parent
    if not folder.is_dir():
        raise TorchscopeError(f"cannot write {output}: no folder {folder}")
    if suffix in (".png", ".pdf"):  # these need Graphviz to draw: say so before the model runs
        from torchscope.render.dot import require_dot

        require_dot(suffix[1:])


# -- commands -----------------------------------------------------------------------------------


def _summary_command(args: argparse.Namespace) -> int:
    from torchscope.cli.loading import load
    from torchscope.collect.summary import FORWARD_COLUMNS, summary

    loaded = load(args.target, name=args.model)
    columns = args.columns.split(",") if args.columns else None
    # without an input the table has the parameters only, unless asked for what needs one
    needs_forward = bool(
        args.all_ops
        or args.dtype
        or args.memory
        or args.optimizer
        or any(column in FORWARD_COLUMNS for column in columns or ())
    )
    given = _model_input(args, loaded) if needs_forward else _known_input(args, loaded)
    if given is None:
        result = summary(loaded.model, depth=args.depth, columns=columns, mode=args.mode)
        what = ", so only its parameters are shown (shapes and costs need one)"
        print(f"torchscope: note: {_no_input_message(loaded, what=what)}", file=sys.stderr)
    else:
        result = summary(
            loaded.model,
            given["input"],
            input_size=given["input_size"],
            dtypes=given["dtypes"],
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


def _graph_command(args: argparse.Namespace) -> int:
    if args.output is not None:
        _check_output(args.output)  # before the model runs: a typo costs nothing
    graph, loaded = _graph_of(args, args.file)
    output = args.output if args.output is not None else f"{loaded.stem}.svg"
    print(graph.render(output, depth=args.depth))
    return 0


def _diff_command(args: argparse.Namespace) -> int:
    from torchscope.collect.graph import graph_diff

    before, _ = _graph_of(args, args.a)
    after, _ = _graph_of(args, args.b)
    difference = graph_diff(before, after)
    if not difference:
        print(f"no structural difference between {args.a} and {args.b} ({args.kind} graphs)")
        return 0
    print(difference)
    return 1


def _time_command(args: argparse.Namespace) -> int:
    from torchscope.cli.loading import load
    from torchscope.collect.timing import time_layers

    loaded = load(args.file, name=args.model)
    given = _model_input(args, loaded)
    report = time_layers(
        loaded.model,
        given["input"],
        input_size=given["input_size"],
        dtypes=given["dtypes"],
        backward=not args.no_backward,
        warmup=args.warmup,
        repeat=args.repeat,
        device=args.device,
    )
    print(report.to_json() if args.json else report)
    return 0


def _process_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a process count: give a whole number >= 1"
        )
    return count


def _demo_command(args: argparse.Namespace) -> int:
    import torchscope.distributed as distributed
    from torchscope.cli.demo import run_demo

    worker = distributed.launched_by_torchrun()  # one of N processes: train under DDP
    if args.nproc > 1 and not worker:  # start them; each runs this command as a worker
        worker_args = ["demo", "--out", str(args.out), "--epochs", str(args.epochs)]
        if args.inject_bug:
            worker_args += ["--inject-bug", args.inject_bug]
        if args.no_progress:
            worker_args.append("--no-progress")
        if getattr(args, "debug", False):
            worker_args.append("--debug")
        status = distributed.launch("torchscope", args.nproc, worker_args)
        if status != 0:
            print(
                f"torchscope: error: the demo failed in a worker process (exit status "
                f"{status}); its message is above",
                file=sys.stderr,
            )
            return 2
        return 0
    group: contextlib.AbstractContextManager[Any] = (
        distributed.process_group(backend="gloo")  # the demo trains on the CPU
        if worker
        else contextlib.nullcontext()
    )
    with group:
        run_demo(
            sys.stdout,
            out=args.out,
            epochs=args.epochs,
            inject_bug=args.inject_bug,
            progress=not args.no_progress,
        )
    return 0


def _run_command(args: argparse.Namespace) -> int:
    from torchscope.cli.run import run_command

    return run_command(args)


def _preflight_command(args: argparse.Namespace) -> int:
    from torchscope.cli.preflight import preflight_command

    return preflight_command(args, _model_input)


_COMMANDS = {
    "summary": _summary_command,
    "graph": _graph_command,
    "diff": _diff_command,
    "time": _time_command,
    "preflight": _preflight_command,
    "run": _run_command,
}


def _report(error: BaseException, args: argparse.Namespace) -> int:
    """Print ``error`` as torchscope's short message; the exit status for it."""
    from torchscope.errors import GraphError, SummaryError, TorchscopeError

    if getattr(args, "debug", False):
        traceback.print_exception(error, file=sys.stderr)
    if isinstance(error, (SummaryError, GraphError)):
        print(f"torchscope: {error}", file=sys.stderr)
        return 2 if args.command == "diff" else 1
    if isinstance(error, (TorchscopeError, ValueError, TypeError)):
        print(f"torchscope: error: {error}", file=sys.stderr)
    else:  # not a mistake we know: still no traceback unless asked
        hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
        print(f"torchscope: error: {type(error).__name__}: {error}{hint}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _notes_on_stderr() -> Iterator[None]:
    """Print the library's notes (such as "Graphviz gives a tighter layout") on stderr as
    ``torchscope: note: ...`` while a command runs; the loggers are restored afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("torchscope: note: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in NOTE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script: list[str] | None = None
    command = next((k for k, token in enumerate(argv) if token != "--debug"), None)
    if command is not None and argv[command] == "run":
        # the script's own arguments are not argparse's to read (see cli/run.py)
        from torchscope.cli.run import split_argv

        own, script = split_argv(argv[command + 1 :])
        argv = [*argv[: command + 1], *own]
    args = _parser().parse_args(argv)
    if script is not None:
        args.script_args = script
    # torch is imported only below, so that `torchscope --help` answers at once
    try:
        with _notes_on_stderr():
            if args.command == "demo":
                return _demo_command(args)
            return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("torchscope: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return _report(e, args)
