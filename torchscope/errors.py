"""The exception hierarchy of torchscope: every error we raise on purpose derives from one base."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchscope.records import GradientReport, ModelSummary

__all__ = [
    "ForwardError",
    "GradientHealthError",
    "GraphError",
    "PreflightError",
    "SummaryError",
    "TorchscopeError",
    "TorchscopeWarning",
]


class TorchscopeError(Exception):
    """Base class of the errors torchscope raises on purpose."""


class ForwardError(TorchscopeError):
    """The model's forward pass failed while torchscope ran it.

    Attributes:
        module_name: qualified name of the innermost module whose forward raised (``""``
            for the root module, or when the failure was outside any module).
        module_type: class name of that module.
        input_shapes: shapes of the tensors that module received.
    """

    def __init__(
        self,
        message: str,
        *,
        module_name: str = "",
        module_type: str = "",
        input_shapes: tuple[tuple[int, ...], ...] = (),
    ) -> None:
        super().__init__(message)
        self.module_name = module_name
        self.module_type = module_type
        self.input_shapes = input_shapes

    def _keywords(self) -> dict[str, Any]:
        return {
            "module_name": self.module_name,
            "module_type": self.module_type,
            "input_shapes": self.input_shapes,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the error picklable (multiprocessing, pytest-xdist) with its keyword arguments
        return (_rebuild, (type(self), str(self), self._keywords()))


def _rebuild(cls: type[ForwardError], message: str, keywords: dict[str, Any]) -> ForwardError:
    return cls(message, **keywords)


class SummaryError(ForwardError):
    """The model's forward pass failed while torchscope.summary ran it.

    Attributes (besides :class:`ForwardError`'s):
        partial: the summary of the layers that ran before the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        module_name: str = "",
        module_type: str = "",
        input_shapes: tuple[tuple[int, ...], ...] = (),
        partial: ModelSummary | None = None,
    ) -> None:
        super().__init__(
            message, module_name=module_name, module_type=module_type, input_shapes=input_shapes
        )
        self.partial = partial

    def _keywords(self) -> dict[str, Any]:
        return {**super()._keywords(), "partial": self.partial}


class GraphError(ForwardError):
    """The model's forward pass failed while a graph was captured (or a step was timed)."""


class GradientHealthError(TorchscopeError, AssertionError):
    """Gradient health checks found errors or warnings; the message is the findings table.

    Also an ``AssertionError``, so pytest reports it as a failed assertion.

    Attributes:
        report: the :class:`~torchscope.records.GradientReport` that failed.
    """

    def __init__(self, message: str, report: GradientReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.report))


class PreflightError(TorchscopeError, AssertionError):
    """A preflight check failed or warned; the message is the checks table.

    Also an ``AssertionError``, so pytest reports it as a failed assertion.

    Attributes:
        report: the :class:`~torchscope.records.PreflightReport` that failed.
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.report))


class TorchscopeWarning(UserWarning):
    """Warnings torchscope emits about the model it inspects."""
