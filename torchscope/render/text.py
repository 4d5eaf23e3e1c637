"""Plain-text and Markdown tables: moved to :mod:`torchscope._records_text` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope._records_text import *  # noqa: F403  (the same names, from where they live now)
from torchscope._records_text import __all__ as __all__
