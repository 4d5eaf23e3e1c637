"""The records of :func:`torchscope.training.fit`: one per epoch, and the History of the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope.records._common import SCHEMA_VERSION, _plural, _pretty
from torchscope.records.gradients import GradientReport

__all__ = ["EpochRecord", "History"]


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one epoch of :func:`torchscope.training.fit`.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean training loss over the epoch's samples (before the division by
            ``accumulation_steps``).
        train_accuracy: fraction of correctly classified training samples, None when the
            task is not classification (outputs ``(N, C)`` and integer targets ``(N,)``).
        val_loss: mean validation loss, None without ``val_loader``.
        val_accuracy: validation accuracy, None without it or for non-classification.
        lr: learning rate of the first parameter group at the end of the epoch.
        optimizer_steps: optimizer steps taken so far (all epochs).
        seconds: wall time of the epoch (training and validation).
        samples_per_second: training throughput.
    """

    epoch: int
    train_loss: float
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    optimizer_steps: int
    seconds: float
    samples_per_second: float

    def __repr__(self) -> str:
        return f"<EpochRecord {self.epoch}: {self._metrics()}>"

    def _metrics(self) -> str:
        parts = [f"train loss {self.train_loss:.4g}"]
        if self.train_accuracy is not None:
            parts.append(f"train acc {100 * self.train_accuracy:.2f}%")
        if self.val_loss is not None:
            parts.append(f"val loss {self.val_loss:.4g}")
        if self.val_accuracy is not None:
            parts.append(f"val acc {100 * self.val_accuracy:.2f}%")
        return ", ".join(parts)


@dataclass(frozen=True)
class History:
    """What :func:`torchscope.training.fit` did: one record per epoch, the gradient report and
    where the last checkpoint is.

    Attributes:
        epochs: per-epoch metrics, resumed epochs included.
        gradient_report: the :class:`GradientMonitor` report of the epochs run in this call
            (``monitor=True``), else None.
        checkpoint: path of the last checkpoint written, None without ``checkpoint_dir``.
        resumed_from: the epoch a ``resume=True`` run continued after (0: a fresh start).
    """

    epochs: tuple[EpochRecord, ...]
    gradient_report: GradientReport | None = None
    checkpoint: str | None = None
    resumed_from: int = 0

    @property
    def last(self) -> EpochRecord:
        """The last epoch's record."""
        if not self.epochs:
            raise ValueError("no epoch was run")
        return self.epochs[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def __str__(self) -> str:
        return records_text.render_history(self)

    def __repr__(self) -> str:
        parts = [_plural(len(self.epochs), "epoch")]
        if self.epochs:
            parts.append(f"last: {self.epochs[-1]._metrics()}")
        if self.gradient_report is not None:
            health = self.gradient_report
            parts.append(
                "gradient health ok"
                if health.ok
                else f"gradient problems: {', '.join(sorted(health.kinds))}"
            )
        return f"<History: {'; '.join(parts)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_history(self)
