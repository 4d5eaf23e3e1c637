"""The rows of a summary table: moved to :mod:`torchscope.records._table` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope.records._table import *  # noqa: F403  (the same names, from where they live now)
from torchscope.records._table import __all__ as __all__
