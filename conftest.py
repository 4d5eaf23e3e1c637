"""Makes pytest run the fenced blocks of README.md and docs/*.md (see tests/docs_blocks.py)."""

from tests.docs_blocks import collector

pytest_collect_file = collector()
