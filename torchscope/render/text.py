"""Plain-text and Markdown tables: moved to :mod:`torchscope.records._text` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope.records._text import *  # noqa: F403  (the same names, from where they live now)
from torchscope.records._text import __all__ as __all__
