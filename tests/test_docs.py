"""The documentation's own rules; its blocks themselves run through Sybil (tests/docs_blocks.py)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests import docs_blocks
from torchscope.render import dot as render_dot

FENCE = re.compile(r"^(`{3,})(.*)$")


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, language, body) of every fenced block of a page."""
    found, lines, k = [], page.read_text(encoding="utf-8").splitlines(), 0
    while k < len(lines):
        opening = FENCE.match(lines[k])
        if opening:
            end = next(j for j in range(k + 1, len(lines)) if lines[j].startswith(opening.group(1)))
            found.append((k + 1, opening.group(2).strip(), "\n".join(lines[k + 1 : end])))
            k = end
        k += 1
    return found


PAGES = docs_blocks.documents()


def test_the_pages_are_the_readme_and_every_doc():
    names = {p.relative_to(docs_blocks.ROOT).as_posix() for p in PAGES}
    assert "README.md" in names and "docs/summary.md" in names and len(names) >= 12


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_says_what_it_is(page):
    """An untagged or misspelt fence would be skipped silently; every block names a language
    that tests/docs_blocks.py knows."""
    wrong = [(line, lang) for line, lang, _ in blocks(page) if lang not in docs_blocks.LANGUAGES]
    assert not wrong, (
        f"{page.name}: fences without a known language {docs_blocks.LANGUAGES}: {wrong}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_torchscope_command_is_run(page):
    """A command line shown in a text block would never run; the one text block allowed is
    the Graphviz-less note of docs/graphs.md, which test_the_note_without_graphviz runs."""
    shown = []
    for line, lang, body in blocks(page):
        commands = [c for c in body.splitlines() if re.match(r"^\$? ?torchscope \w", c)]
        if commands and lang not in ("sh", "console") and body != NO_DOT_BLOCK:
            shown.append((line, commands))
    assert not shown, f"{page.name}: torchscope commands in blocks that do not run: {shown}"


def _no_dot_block() -> str:
    graphs = docs_blocks.ROOT / "docs" / "graphs.md"
    return next(
        body for _, lang, body in blocks(graphs) if lang == "text" and "$ torchscope graph" in body
    )


NO_DOT_BLOCK = _no_dot_block()


def test_the_note_without_graphviz(tmp_path, monkeypatch):
    """docs/graphs.md shows what `torchscope graph` prints without Graphviz: run it so."""
    folders = os.environ["PATH"].split(os.pathsep)
    path = os.pathsep.join(f for f in folders if f and shutil.which("dot", path=f) is None)
    monkeypatch.setenv("PATH", path or os.devnull)
    monkeypatch.setattr(render_dot, "_noted_own_layout", False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(docs_blocks.ROOT / "examples")
    command, *expected = NO_DOT_BLOCK.splitlines()
    assert command.startswith("$ ")
    status, output = docs_blocks.run_command(command[2:])
    assert status == 0
    assert docs_blocks._same("\n".join(expected), output) is None, output


def test_output_blocks_compare_as_documented():
    same = docs_blocks._same
    assert same("a\n...\nd", "a\nb\nc\nd\n") is None
    assert same("median ... (n=20)", "median 1.2 ms (n=20)") is None
    assert same("a  \nb", "a\nb   ") is None  # trailing spaces do not count
    assert same("a\nb", "a\nc") is not None
    assert same("a", "a\nmore") is not None  # no silent extra lines


def test_install_steps_are_the_only_lines_not_run():
    """make/pip lines are not run; anything unknown is refused rather than skipped."""
    with pytest.raises(AssertionError, match="does not know how to run"):
        docs_blocks.run_command("curl https://example.com")
    for page in PAGES:
        for _, lang, body in blocks(page):
            if lang == "sh":
                for line in docs_blocks._lines(body):
                    program = shlex.split(line, comments=True)[0]
                    assert program in (
                        *docs_blocks.INSTALL_STEPS,
                        "torchscope",
                        "python",
                        "pytest",
                        "torchrun",
                    ), line
