"""The record of the batch-independence check: does one sample's output depend on another
sample's input?"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchIndependenceReport", "Leak"]


@dataclass(frozen=True)
class Leak:
    """Sample ``output``'s output has a gradient of size ``value`` (max-abs) with respect to
    sample ``input``'s input: information crossed the batch."""

    output: int
    input: int
    value: float


@dataclass(frozen=True)
class BatchIndependenceReport:
    """What :func:`torchscope.check_batch_independence` found.

    Attributes:
        batch: the batch size probed (dim 0 of the probed input).
        outputs_checked: the output samples whose gradient was taken.
        leaks: the (output sample, input sample) pairs with a non-zero gradient, largest
            first; empty when the samples are independent.
        note: why a dependence may be expected (a BatchNorm in training mode), or "".
    """

    batch: int
    outputs_checked: tuple[int, ...]
    leaks: tuple[Leak, ...]
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.leaks

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        checked = ", ".join(map(str, self.outputs_checked))
        if self.ok:
            text = (
                f"batch independence: ok; the outputs of samples {checked} (of {self.batch}) "
                "depend on their own input only"
            )
        else:
            worst = self.leaks[0]
            text = (
                f"batch independence: FAILED; {len(self.leaks)} pair(s) of samples leak "
                f"into each other, e.g. the output of sample {worst.output} has a gradient "
                f"of {worst.value:.3g} with respect to the input of sample {worst.input}. "
                "Look for view/reshape where permute or transpose was meant, an RNN or "
                "attention layer without batch_first=True fed (batch, time, ...), or a "
                "reduction over dim 0"
            )
        return text + (f" ({self.note})" if self.note else "")

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"{len(self.leaks)} leaks"
        return f"<BatchIndependenceReport: {state}, batch {self.batch}>"
