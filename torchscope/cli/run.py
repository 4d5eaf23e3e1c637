"""``torchscope run [options] train.py [args...]``: an unmodified training script under the
gradient monitor.

The script runs as ``python train.py args...`` would run it: the same ``sys.argv``,
``__name__ == "__main__"``, working directory and ``sys.path[0]`` (the script's folder, or
the working directory with ``-m``), and exit code. While it runs, every optimizer it creates is noticed as it is built (a wrapper
around ``torch.optim.Optimizer.__init__``, removed when the script ends): the outermost
modules holding that optimizer's parameters are found among the live objects, and a
:class:`~torchscope.collect.gradients.GradientMonitor` is started on each (``optimizer=None``:
it observes every optimizer that steps its parameters, so a GAN's two networks and two
optimizers get two monitors). At exit (normal end, exception, ``sys.exit``, Ctrl-C) the
monitors stop and their reports are printed on stderr, findings first; ``--report`` writes
them as JSON, ``--tensorboard`` logs them, ``--fail-on`` turns findings into exit status 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import runpy
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from torchscope.collect.gradients import GradientMonitor
    from torchscope.records import GradientReport

__all__ = ["add_parser", "run_command", "split_argv"]

FAIL_ON = ("error", "warning")


def add_parser(commands: Any, debug: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "run",
        parents=[debug],
        help="run an unmodified training script with gradient health monitoring",
        description="Run SCRIPT (or -m MODULE) as python would, with every optimizer it "
        "creates and the models it trains under the gradient monitor; print the gradient "
        "report when it ends. Options come before the script; what follows the script is "
        "its own command line.",
        usage="torchscope run [options] (SCRIPT | -m MODULE) [args ...]",
    )
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    parser.add_argument("--report", metavar="PATH", help="write the reports as JSON to PATH")
    parser.add_argument("--tensorboard", metavar="DIR", help="log the reports to TensorBoard")
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        help="exit with status 1 when a finding of this severity (or worse) is reported",
    )
    parser.add_argument(
        "--max-copy-bytes",
        type=byte_size,
        metavar="SIZE",
        help="memory each monitor may hold to measure how far a step moves the weights "
        "(bytes, or with a K, M or G suffix; 0: none); default: a copy of the parameters",
    )
    parser.add_argument("script_args", nargs=argparse.REMAINDER, metavar="SCRIPT [args ...]")


#: run's options that take a value
_VALUED = ("--report", "--tensorboard", "--fail-on", "--max-copy-bytes")

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_SIZE = re.compile(r"([0-9]+)\s*(?:([KMG])(?:I?B)?|B)?", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A size in bytes: ``1000``, ``512K``, ``64M``, ``2G`` (binary units; ``B`` or ``iB``
    may follow: ``64MB``, ``64MiB``)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: give bytes as a whole number, optionally with a K, M or "
            "G suffix (512M, 2G), or 0 for no copy"
        )
    return int(match.group(1)) * _UNITS[(match.group(2) or "").upper()]


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``run``'s own options, and the script with its arguments: everything from the first
    token that is not one of run's options (or from after ``-m MODULE``) belongs to the
    script, even when it looks like an option (argparse would take ``--lr`` for its own)."""
    own: list[str] = []
    k = 0
    while k < len(argv):
        token = argv[k]
        if token in _VALUED or token == "-m":
            own += argv[k : k + 2]
            k += 2
            if token == "-m":
                return own, argv[k:]
            continue
        if token.split("=", 1)[0] in _VALUED or token in ("--debug", "-h", "--help"):
            own.append(token)
            k += 1
            continue
        break
    return own, argv[k:]


# -- finding what to watch ------------------------------------------------------------------------


def _roots(optimizer: torch.optim.Optimizer) -> list[nn.Module]:
    """The outermost live modules holding the optimizer's parameters."""
    from torch import nn

    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    holders: list[tuple[nn.Module, frozenset[int]]] = []
    for obj in gc.get_objects():
        # type(), not isinstance(): a lazy module attribute's __class__ can warn or import
        if issubclass(type(obj), nn.Module):
            try:
                held = frozenset(id(p) for p in obj.parameters()) & wanted
            except Exception:  # a half-built module: skip it
                continue
            if held:
                holders.append((obj, held))
    children = {
        id(child) for module, _ in holders for child in module.modules() if child is not module
    }
    roots = [(m, held) for m, held in holders if id(m) not in children]
    roots.sort(key=lambda pair: -len(pair[1]))
    chosen: list[nn.Module] = []
    covered: set[int] = set()
    for module, held in roots:
        if not held <= covered:
            chosen.append(module)
            covered |= held
    return chosen


class Watcher:
    """Starts a monitor on the models behind each optimizer the script builds; takes the
    reports before the script destroys its process group (so that they can be gathered)."""

    def __init__(self, max_copy_bytes: int | None = None) -> None:
        self.max_copy_bytes = max_copy_bytes
        self.watched: list[tuple[nn.Module, GradientMonitor, list[str]]] = []
        self.reports: list[tuple[str, list[str], GradientReport]] | None = None
        self.rank = 0  # this process's rank when the reports were taken

    @contextmanager
    def installed(self) -> Iterator[Watcher]:
        import functools

        import torch

        original = torch.optim.Optimizer.__init__
        watcher = self

        @functools.wraps(original)
        def init(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            try:
                watcher.saw(optimizer)
            except Exception as e:  # the script must not die of the monitor
                print(f"torchscope run: note: not monitoring {type(optimizer).__name__}: {e}",
                      file=sys.stderr)  # fmt: skip

        import torch.distributed as dist

        destroy = dist.destroy_process_group

        @functools.wraps(destroy)
        def destroy_after_reports(*args: Any, **kwargs: Any) -> None:
            # every rank calls it, the group is still up: the reports can be gathered now
            if self.reports is None and dist.is_initialized() and not args and not kwargs:
                self.take_reports()
            destroy(*args, **kwargs)

        torch.optim.Optimizer.__init__ = init  # type: ignore[method-assign,assignment]
        dist.destroy_process_group = destroy_after_reports
        try:
            yield self
        finally:
            torch.optim.Optimizer.__init__ = original  # type: ignore[method-assign]
            dist.destroy_process_group = destroy
            for _, monitor, _ in self.watched:
                if monitor._active:
                    monitor.__exit__(None, None, None)

    def take_reports(self) -> list[tuple[str, list[str], GradientReport]]:
        """Stop the monitors and take their reports (gathered across ranks when a process
        group is up: a collective), once."""
        if self.reports is None:
            import torch.distributed as dist

            self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            for _, monitor, _ in self.watched:
                if monitor._active:
                    monitor.__exit__(None, None, None)
            self.reports = [
                (type(monitor._model).__name__, names, monitor.report())  # DDP looked through
                for _, monitor, names in self.watched
            ]
        return self.reports

    def saw(self, optimizer: torch.optim.Optimizer) -> None:
        from torchscope.collect.gradients import GradientMonitor

        name = type(optimizer).__name__
        for root in _roots(optimizer):
            known = next((w for w in self.watched if root is w[0] or _inside(root, w[0])), None)
            if known is not None:
                known[2].append(name)
                continue
            monitor = GradientMonitor(root, max_copy_bytes=self.max_copy_bytes)
            monitor.__enter__()
            self.watched.append((root, monitor, [name]))


def _inside(module: nn.Module, root: nn.Module) -> bool:
    return any(module is m for m in root.modules())


# -- running the script -------------------------------------------------------------------------


def _run_script(args: argparse.Namespace) -> int:
    """Run the script or module as python would; its exit status."""
    if args.module:
        target, argv = args.module, args.script_args
        sys.argv = [target, *argv]
        sys.path.insert(0, os.getcwd())  # as python -m does: modules are found from here
        runner: Callable[[], Any] = lambda: runpy.run_module(  # noqa: E731
            target, run_name="__main__", alter_sys=True
        )
    else:
        script, argv = args.script_args[0], args.script_args[1:]
        path = Path(script)
        sys.argv = [script, *argv]
        sys.path.insert(0, str(path.resolve().parent))
        runner = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    try:
        runner()
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("KeyboardInterrupt", file=sys.stderr)
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _severe(report: GradientReport, fail_on: str) -> bool:
    levels = ("error",) if fail_on == "error" else ("error", "warning")
    return any(f.severity in levels for f in report.findings)


def run_command(args: argparse.Namespace) -> int:
    from torchscope.distributed import is_main_process
    from torchscope.errors import TorchscopeError

    if not args.module and not args.script_args:
        raise TorchscopeError("no script to run: torchscope run [options] train.py [args ...]")
    if not args.module and not Path(args.script_args[0]).is_file():
        raise TorchscopeError(f"no such script: {args.script_args[0]}")
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    watcher = Watcher(args.max_copy_bytes)
    try:
        with watcher.installed():
            code = _run_script(args)
            reports = watcher.take_reports()
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
    if watcher.rank != 0 or not is_main_process():
        return code  # rank 0 prints the merged report
    script = args.module or args.script_args[0]
    if not reports:
        print(f"torchscope run: {script} created no optimizer: nothing was monitored",
              file=sys.stderr)  # fmt: skip
        return code
    for model, optimizers, report in reports:
        print(f"\ntorchscope run: gradient report for {model} (stepped by "
              f"{', '.join(optimizers)})", file=sys.stderr)  # fmt: skip
        print(report, file=sys.stderr)
    if args.report:
        document = {
            "script": script,
            "exit_code": code,
            "models": [{"model": m, "optimizers": o, "report": r.to_dict()} for m, o, r in reports],
        }
        Path(args.report).write_text(json.dumps(document, indent=2, allow_nan=True))
    if args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        for model, _, report in reports:
            with SummaryWriter(os.path.join(args.tensorboard, model)) as writer:
                report.log_to(writer)
    if code == 0 and args.fail_on and any(_severe(r, args.fail_on) for _, _, r in reports):
        return 1
    return code
