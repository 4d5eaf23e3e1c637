"""Runs the fenced blocks of README.md and docs/*.md, in order, one namespace per file.

Sybil (https://sybil.readthedocs.io) finds the blocks and makes each one a pytest item; this
module only says what each kind of block means:

- ``python``: executed as written. What it prints is kept for the next ``output`` block. A
  block whose first line is a comment ``# file: NAME.py`` is also saved under that name, so
  that a later ``sh`` line can run it (``pytest test_model.py``). A warning from torchscope
  fails the block; other libraries' warnings are shown, as a user would see them.
- ``output``: what the Python block just before it printed. Compared line by line (trailing
  spaces ignored); ``...`` stands for any text, whole lines included (doctest's ELLIPSIS).
- ``sh``: every line runs, in a scratch directory where ``examples/`` is this repository's,
  and must exit 0. ``torchscope ...`` lines run the command line in this process (the entry
  point the console script calls); ``python``, ``pytest`` and ``torchrun`` lines run in a
  subprocess with this interpreter. Install steps (``make``, ``pip``, ``sudo``, ``brew``, ``conda``) are not
  run: the test environment is what they produce.
- ``console``: ``$ command`` lines, each followed by the output it must print (stdout and
  stderr together, compared as ``output`` blocks are). Its exit status is not checked, so
  a command that ends with 1 (``torchscope diff`` on two different files) shows its output.
- ``text``: not run (signatures, layouts, pictures in characters).

Any other language is an error (``tests/test_docs.py`` checks this), so no block is skipped
by a typo in its fence.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES = ("python", "output", "sh", "console", "text")
#: Programs of install steps, which the docs show but the tests do not run.
INSTALL_STEPS = ("make", "pip", "sudo", "brew", "conda", "apt-get")
PRINTED = "__printed__"
_CHECKER = doctest.OutputChecker()


def _same(expected: str, got: str) -> str | None:
    """None when ``got`` matches ``expected`` (ELLIPSIS); otherwise the difference."""
    want = "\n".join(line.rstrip() for line in expected.strip("\n").splitlines()) + "\n"
    have = "\n".join(line.rstrip() for line in got.strip("\n").splitlines()) + "\n"
    if _CHECKER.check_output(want, have, doctest.ELLIPSIS):
        return None
    return "expected:\n" + want + "got:\n" + have


def run_python(example: Example) -> str | None:
    source = str(example.parsed)
    first = source.splitlines()[0] if source.strip() else ""
    if first.startswith("# file: "):
        Path(first[len("# file: ") :].strip()).write_text(source, encoding="utf-8")
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.redirect_stdout(printed):
                PythonEvaluator()(example)
    finally:
        sys.stdout.write(printed.getvalue())
        example.namespace[PRINTED] = printed.getvalue()
    ours = []
    for warning in caught:
        sys.stderr.write(
            warnings.formatwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        )
        if (
            "torchscope" in warning.category.__module__
            or f"{os.sep}torchscope{os.sep}" in warning.filename
        ):
            ours.append(f"{warning.category.__name__}: {warning.message}")
    return "torchscope warned:\n" + "\n".join(ours) if ours else None


def check_output(example: Example) -> str | None:
    if PRINTED not in example.namespace:
        return "an output block must follow a python block"
    return _same(str(example.parsed), example.namespace.pop(PRINTED))


def run_command(line: str) -> tuple[int, str]:
    """Runs one shell line as the docs show it; returns its exit status and its output."""
    argv = shlex.split(line, comments=True)
    program = argv[0]
    if program == "torchscope":
        from torchscope.cli.main import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                status = main(argv[1:])
            except SystemExit as exit:  # argparse's usage errors
                status = exit.code if isinstance(exit.code, int) else 2
        return status, out.getvalue()
    if program in ("python", "pytest", "torchrun"):
        command = [
            sys.executable,
            *{"pytest": ["-m", "pytest"], "torchrun": ["-m", "torch.distributed.run"]}.get(
                program, []
            ),
        ]
        env = dict(
            os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        done = subprocess.run(
            command + argv[1:], capture_output=True, text=True, timeout=300, env=env
        )
        return done.returncode, done.stdout + done.stderr
    raise AssertionError(
        f"the docs run {program!r}, which tests/docs_blocks.py does not know how to run: "
        "teach it, or show the line in a text block"
    )


def _lines(source: str) -> list[str]:
    return [
        line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def run_sh(example: Example) -> str | None:
    for line in _lines(str(example.parsed)):
        if shlex.split(line, comments=True)[0] in INSTALL_STEPS:
            continue
        status, output = run_command(line)
        sys.stdout.write(output)
        if status != 0:
            return f"`{line}` exited with {status}:\n{output}"
    return None


def run_console(example: Example) -> str | None:
    command, expected = None, []
    problems = []
    for line in [*str(example.parsed).splitlines(), "$ "]:
        if line.startswith("$ "):
            if command:
                _, output = run_command(command)
                sys.stdout.write(output)
                problem = _same("\n".join(expected), output)
                if problem:
                    problems.append(f"`{command}`: {problem}")
            command, expected = line[2:].strip(), []
        else:
            expected.append(line)
    return "\n".join(problems) or None


def _setup(namespace: dict[str, Any]) -> None:
    """Each file runs in its own scratch directory, with the caller's RNGs put back after."""
    scratch = Path(tempfile.mkdtemp(prefix="torchscope-docs-"))
    (scratch / "examples").symlink_to(ROOT / "examples")
    namespace["__scratch__"] = (
        scratch,
        os.getcwd(),
        torch.random.get_rng_state(),
        random.getstate(),
    )
    os.chdir(scratch)


def _teardown(namespace: dict[str, Any]) -> None:
    scratch, cwd, torch_rng, python_rng = namespace["__scratch__"]
    os.chdir(cwd)
    torch.random.set_rng_state(torch_rng)
    random.setstate(python_rng)
    shutil.rmtree(scratch, ignore_errors=True)


def sybil() -> Sybil:
    return Sybil(
        parsers=[
            CodeBlockParser("python", run_python),
            CodeBlockParser("output", check_output),
            CodeBlockParser("sh", run_sh),
            CodeBlockParser("console", run_console),
        ],
        path=str(ROOT),
        patterns=["*.md"],
        setup=_setup,
        teardown=_teardown,
    )


def documents() -> list[Path]:
    """The pages whose blocks run: the README and docs/*.md (not the READMEs of test data)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def collector() -> Any:
    """``pytest_collect_file`` for the root conftest: Sybil's, limited to :func:`documents`."""
    collect = sybil().pytest()
    pages = set(documents())

    def pytest_collect_file(file_path: Path, parent: Any) -> Any:
        if file_path.resolve() in pages:
            return collect(file_path, parent)
        return None

    return pytest_collect_file
