"""The record of :func:`torchscope.trainable`: what is frozen, trainable and in eval mode,
module by module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope.records._common import _plural, _pretty

__all__ = ["TrainableReport", "TrainableRow"]


@dataclass(frozen=True)
class TrainableRow:
    """One module (with its subtree) in a :class:`TrainableReport`."""

    name: str  # qualified name, "" for the root
    type: str
    depth: int
    trainable_params: int
    frozen_params: int
    modules: int  # modules in the subtree, itself included
    modules_in_eval: int  # of those, how many have training=False
    pinned_eval: int  # of those, how many torchscope.freeze keeps in eval mode

    def __repr__(self) -> str:
        where = f"{self.name} ({self.type})" if self.name else self.type
        return (
            f"<TrainableRow {where}: {self.trainable_params:,} trainable, "
            f"{self.frozen_params:,} frozen, {self.modules_in_eval} of "
            f"{_plural(self.modules, 'module')} in eval>"
        )


@dataclass(frozen=True)
class TrainableReport:
    """What is frozen, trainable and in eval mode; ``str()`` gives a table. The first row is the model."""

    rows: tuple[TrainableRow, ...]
    depth: int
    # norm layers whose parameters torchscope froze but that are back in training mode
    # without their eval pin: rebuilt after freezing (convert_sync_batchnorm, fusion)
    unpinned_frozen_norms: tuple[str, ...] = ()

    @property
    def trainable_params(self) -> int:
        return self.rows[0].trainable_params

    @property
    def frozen_params(self) -> int:
        return self.rows[0].frozen_params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return records_text.render_trainable_report(self)

    def __repr__(self) -> str:
        root = self.rows[0]
        warning = (
            f", {_plural(len(self.unpinned_frozen_norms), 'unpinned frozen norm')}"
            if self.unpinned_frozen_norms
            else ""
        )
        return (
            f"<TrainableReport of {root.type}: {self.trainable_params:,} trainable, "
            f"{self.frozen_params:,} frozen params, {root.modules_in_eval} of "
            f"{_plural(root.modules, 'module')} in eval{warning}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_trainable_report(self)
