"""The records of :func:`torchscope.summary`: the model's tensors, its module calls, the
summary itself and the peak-memory estimate."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope._util.format import format_bytes, format_count, format_shapes
from torchscope.records._common import SCHEMA_VERSION, Shape, _plural, _pretty, _shapes

__all__ = ["SUMMARY_COLUMNS", "LayerRecord", "MemoryEstimate", "ModelSummary", "TensorRecord"]

#: The columns a summary table can show, in their default order of appearance.
SUMMARY_COLUMNS = (
    "input_shape",
    "output_shape",
    "params",
    "params_percent",
    "subtree_params",
    "trainable",
    "macs",
    "flops",
)


@dataclass(frozen=True)
class TensorRecord:
    """One parameter or buffer tensor of the model, counted once however many names it has.

    Attributes:
        name: the first qualified name under which the model holds it (``layer1.0.conv1.weight``).
        aliases: further qualified names of the same tensor (tied or shared weights).
        shape: its shape.
        dtype: its dtype, as ``str(torch.dtype)`` (``"torch.float32"``).
        numel: number of elements.
        nbytes: bytes of storage (``numel * element_size``).
        trainable: ``requires_grad`` (always False for buffers).
        initialized: False for a lazy module's uninitialised parameter or buffer, whose
            shape the first forward pass sets: then ``shape`` is ``()`` and ``numel`` and
            ``nbytes`` are 0 (the totals leave it out).
    """

    name: str
    aliases: tuple[str, ...]
    shape: Shape
    dtype: str
    numel: int
    nbytes: int
    trainable: bool
    initialized: bool = True

    def __repr__(self) -> str:
        dtype = self.dtype.removeprefix("torch.")
        state = "trainable" if self.trainable else "frozen"
        if not self.initialized:
            return f"<TensorRecord {self.name} uninitialised {dtype}, {state}>"
        return f"<TensorRecord {self.name} {list(self.shape)} {dtype}, {self.numel:,} elements, {state}>"


@dataclass(frozen=True)
class LayerRecord:
    """One call of one module during the summarised forward pass.

    Attributes:
        index: position in call order (the root's call is 0).
        name: qualified module name (``layer1.0.conv1``); ``""`` for the root module.
        type: the module's class name.
        depth: nesting depth of the call (root 0).
        parent: index of the enclosing module call, None for the root.
        input_shapes: shape of every tensor passed in (positional, then keyword arguments).
        output_shapes: shape of every tensor in the output, however nested.
        params: parameters in this module and its submodules, each tensor once.
        trainable_params: the trainable part of ``params``.
        own_parameters: indices into :attr:`ModelSummary.parameters` of the tensors this
            module holds directly.
        subtree_parameters: indices of the tensors held by this module or any submodule.
        is_repeat: this module object was already called earlier in the pass.
        failed: the forward of this module raised (only in a partial summary).
        macs: multiply-accumulates of the forward ops run inside this call, children included.
        flops: floating-point operations of the same ops (2 per MAC, plus non-MAC ops when
            the summary was made with ``all_ops=True``).
        self_macs, self_flops: the part run directly by this module, not by its children.
    """

    index: int
    name: str
    type: str
    depth: int
    parent: int | None
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    params: int
    trainable_params: int
    own_parameters: tuple[int, ...]
    subtree_parameters: tuple[int, ...]
    is_repeat: bool
    failed: bool = False
    macs: int = 0
    flops: int = 0
    self_macs: int = 0
    self_flops: int = 0

    def __repr__(self) -> str:
        where = f"{self.name} ({self.type})" if self.name else self.type
        output = "failed" if self.failed else format_shapes(self.output_shapes)
        repeat = ", repeat" if self.is_repeat else ""
        return (
            f"<LayerRecord {self.index}: {where} {format_shapes(self.input_shapes)} -> {output}, "
            f"{_plural(self.params, 'param')}{repeat}>"
        )


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`torchscope.summary` learnt about a model. ``str()`` gives a table.

    Attributes:
        model_type: class name of the summarised (unwrapped) model.
        layers: one record per module call, in call order. In a ``parameters_only``
            summary, one per module of the tree instead, parents before children; a module
            held under several names has a row under each, its submodules drawn once.
        parameters: every distinct parameter tensor, in registration order.
        buffers: every distinct buffer tensor, in registration order.
        input_shapes: shapes of the tensors passed to the model.
        output_shapes: shapes of the tensors the model returned.
        input_bytes: bytes of the distinct tensors passed to the model.
        output_bytes: bytes of the distinct tensors the model returned.
        uncalled: qualified names of modules that hold parameters but were never called.
        depth: how deep the table is drawn (``layers`` always holds every call).
        columns: the table's columns, in order.
        mode: ``"eval"``, ``"train"`` or ``"same"``: the mode the forward pass ran in.
        device: device of the inputs, as a string.
        scripted: TorchScript submodules, which cannot be hooked: their calls are not
            layers, and their parameters are shown in the enclosing module's row. ``("",)``
            when the model is TorchScript as a whole: the root's layer is its one call, the
            layers after it are its module tree (no shapes or costs of their own).
        total_macs, total_flops: multiply-accumulates and FLOPs of the forward pass.
        backward_macs, backward_flops: the same for the backward pass of one training step
            (counted from the real backward ops with ``mode="train"``), else None.
        uncounted_ops: aten ops that ran but have no formula, with their call counts; when
            not empty, the totals are lower bounds.
        all_ops: whether ops without multiply-accumulates were priced in FLOPs.
        memory: peak memory estimate (``summary(..., memory=True)``), else None.
        memory_error: why the memory estimate could not be made, if it was asked for.
        parameters_only: made without an input (``summary(model)``): read from the module
            tree without running the model, so there are no shapes, costs or memory.
    """

    model_type: str
    layers: tuple[LayerRecord, ...]
    parameters: tuple[TensorRecord, ...]
    buffers: tuple[TensorRecord, ...]
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    input_bytes: int
    output_bytes: int
    uncalled: tuple[str, ...]
    depth: int
    columns: tuple[str, ...]
    mode: str
    device: str
    scripted: tuple[str, ...] = ()
    total_macs: int = 0
    total_flops: int = 0
    backward_macs: int | None = None
    backward_flops: int | None = None
    uncounted_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    all_ops: bool = False
    memory: MemoryEstimate | None = None
    memory_error: str | None = None
    parameters_only: bool = False

    # -- totals (derived, never stored twice) -------------------------------------------
    @property
    def total_params(self) -> int:
        """Elements of every distinct parameter tensor (tied weights and reused modules once)."""
        return sum(p.numel for p in self.parameters)

    @property
    def trainable_params(self) -> int:
        return sum(p.numel for p in self.parameters if p.trainable)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def uninitialized(self) -> tuple[str, ...]:
        """Names of lazy parameters and buffers not yet initialised (left out of the totals)."""
        return tuple(t.name for t in (*self.parameters, *self.buffers) if not t.initialized)

    @property
    def total_buffers(self) -> int:
        """Elements of every distinct buffer tensor (BatchNorm statistics, etc.)."""
        return sum(b.numel for b in self.buffers)

    @property
    def param_bytes(self) -> int:
        """Bytes of parameter storage, per each tensor's own dtype."""
        return sum(p.nbytes for p in self.parameters)

    @property
    def buffer_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def totals(self) -> dict[str, int]:
        """The headline numbers as a dict (the same keys as in :meth:`to_dict`)."""
        return {
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "total_buffers": self.total_buffers,
            "param_bytes": self.param_bytes,
            "buffer_bytes": self.buffer_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "total_macs": self.total_macs,
            "total_flops": self.total_flops,
        }

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, the totals, and a schema version."""
        data = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}
        data["totals"] = self.totals()
        data["memory"] = None if self.memory is None else self.memory.to_dict()
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSummary:
        """Rebuild a summary from :meth:`to_dict` output (or parsed :meth:`to_json`)."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"cannot read a summary with schema_version={version!r}; this torchscope reads "
                f"version {SCHEMA_VERSION}"
            )

        def tensor(d: dict[str, Any]) -> TensorRecord:
            return TensorRecord(**{**d, "aliases": tuple(d["aliases"]), "shape": tuple(d["shape"])})

        def layer(d: dict[str, Any]) -> LayerRecord:
            return LayerRecord(
                **{
                    **d,
                    "input_shapes": _shapes(d["input_shapes"]),
                    "output_shapes": _shapes(d["output_shapes"]),
                    "own_parameters": tuple(d["own_parameters"]),
                    "subtree_parameters": tuple(d["subtree_parameters"]),
                }
            )

        return cls(
            model_type=data["model_type"],
            layers=tuple(layer(d) for d in data["layers"]),
            parameters=tuple(tensor(d) for d in data["parameters"]),
            buffers=tuple(tensor(d) for d in data["buffers"]),
            input_shapes=_shapes(data["input_shapes"]),
            output_shapes=_shapes(data["output_shapes"]),
            input_bytes=data["input_bytes"],
            output_bytes=data["output_bytes"],
            uncalled=tuple(data["uncalled"]),
            depth=data["depth"],
            columns=tuple(data["columns"]),
            mode=data["mode"],
            device=data["device"],
            scripted=tuple(data.get("scripted", ())),
            total_macs=data.get("total_macs", 0),
            total_flops=data.get("total_flops", 0),
            backward_macs=data.get("backward_macs"),
            backward_flops=data.get("backward_flops"),
            uncounted_ops=dict(data.get("uncounted_ops", {})),
            all_ops=data.get("all_ops", False),
            memory=_memory(data.get("memory")),
            memory_error=data.get("memory_error"),
            parameters_only=data.get("parameters_only", False),
        )

    # -- text faces (torchscope.records._text and _records_html) ------------------------------
    def __str__(self) -> str:
        return records_text.render_summary(self)

    def __repr__(self) -> str:
        macs = f", {format_count(self.total_macs)} MACs" if self.total_macs else ""
        calls = (
            "parameters only (no input)"
            if self.parameters_only
            else _plural(len(self.layers), "module call")
        )
        return (
            f"<ModelSummary of {self.model_type}: {_plural(self.total_params, 'param')} "
            f"({self.trainable_params:,} trainable){macs}, {calls}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, totals as a list under it."""
        return records_text.render_summary(self, markdown=True)

    def _repr_html_(self) -> str:
        return records_html.render_summary(self)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of live tensors, found by running the model on fake tensors.

    Attributes:
        inference_peak: peak of an inference forward (``eval()``, no autograd).
        training_peak: peak of one training step: forward and backward with autograd, plus
            ``optimizer_state``.
        parameters, buffers, inputs: bytes of the model's parameters and buffers and of the
            inputs, live throughout.
        activations: bytes alive at the end of the training forward beyond those (tensors
            saved for backward, and the output).
        gradients: bytes of the gradients of the trainable parameters.
        optimizer_state: bytes of the optimizer's per-parameter state (0 without optimizer).
        device: the device the estimate models.
        measured: empty when both passes ran on fake tensors; otherwise why they ran on the
            real tensors (an op whose output shape or value depends on the data, and where).
        training_error: why the training step could not be run (then ``training_peak`` is
            None and only the inference peak is known), naming the module.

    The categories are totals, not a split of the peak: during backward, activations are
    freed while gradients are allocated, so at the peak only part of each is alive.
    """

    inference_peak: int
    training_peak: int | None
    parameters: int
    buffers: int
    inputs: int
    activations: int
    gradients: int
    optimizer_state: int
    device: str
    measured: str = ""
    training_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return records_text.render_memory(self)

    def __repr__(self) -> str:
        return (
            f"<MemoryEstimate ({self.device}): training step peak "
            f"{format_bytes(self.training_peak) if self.training_peak is not None else 'unknown'}, inference peak "
            f"{format_bytes(self.inference_peak)}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_memory(self)


def _memory(data: dict[str, Any] | None) -> MemoryEstimate | None:
    if data is None:
        return None
    fields = {f.name for f in dataclasses.fields(MemoryEstimate)}
    return MemoryEstimate(**{k: v for k, v in data.items() if k in fields})
