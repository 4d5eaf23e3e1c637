"""The rows of a summary table: moved to :mod:`torchscope._records_table` (the record layer).

Kept so that old imports keep working; records show themselves without importing
:mod:`torchscope.render`.
"""

from __future__ import annotations

from torchscope._records_table import *  # noqa: F403  (the same names, from where they live now)
from torchscope._records_table import __all__ as __all__
