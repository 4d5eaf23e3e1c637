"""Makes pytest run the fenced blocks of README.md and docs/*.md (see tests/docs_blocks.py), and
hands pytest-xdist the longest files first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_blocks import collector

pytest_collect_file = collector()

#: the files that take longest (seconds summed over their tests, 2-core machine, two
#: workers), longest first. ``make test`` runs ``--dist loadfile --no-loadscope-reorder``:
#: a worker takes the next file in collection order as it runs short of tests. By default
#: xdist orders files by their number of tests, which put the few but long distributed and
#: documentation tests last, and left one worker running them alone at the end
LONGEST_FIRST = (
    "tests/test_training_zoo.py",  # 214 s
    "tests/test_distributed.py",  # 94 s
    "tests/test_gradients_compiled.py",
    "docs/training.md",
    "tests/test_real_zoo.py",
    "docs/gradients.md",
    "tests/test_cli_run.py",
    "tests/test_memory.py",
    "tests/test_fsdp.py",
    "tests/test_graph.py",
    "tests/test_demo.py",
    "tests/test_package.py",
    "tests/test_costs.py",
    "tests/test_cli.py",
    "tests/test_pytest_plugin.py",
    "tests/test_freezing.py",
    "tests/test_plots.py",
    "tests/test_lightning.py",
    "docs/preflight.md",
    "tests/test_preflight_zoo.py",
)

_ROOT = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}

    def order(item: pytest.Item) -> int:
        try:
            name = item.path.relative_to(_ROOT).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=order)  # stable: the tests of a file (a page's blocks) keep their order
