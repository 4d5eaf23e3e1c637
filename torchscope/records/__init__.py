"""Plain-data records produced by torchscope's collectors.

Frozen dataclasses that know nothing about terminals or Jupyter: they compare in tests,
round-trip through JSON, and show themselves as text, Markdown and HTML tables through the
record layer's own :mod:`torchscope.records._text` and :mod:`torchscope.records._html`. They
import no exporter: the drawing methods (``Graph.render``, ``GradientReport.plot``, ...) find
theirs by name at call time in :mod:`torchscope.records._exporters`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torchscope.records._html as records_html
import torchscope.records._text as records_text
from torchscope._util.format import format_bytes, format_count, format_duration, format_shapes
from torchscope.errors import GradientHealthError
from torchscope.records._exporters import exporter

__all__ = [
    "FINDING_KINDS",
    "GRAD_STATUSES",
    "NODE_KINDS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "SUMMARY_COLUMNS",
    "AutogradGraph",
    "EpochRecord",
    "Finding",
    "GradInfo",
    "GradientReport",
    "Graph",
    "GraphCluster",
    "GraphDiff",
    "GraphEdge",
    "GraphFold",
    "GraphNode",
    "History",
    "LayerRecord",
    "LayerTiming",
    "Measurement",
    "MemoryEstimate",
    "ModelSummary",
    "ModuleGraph",
    "ParameterHistory",
    "TensorRecord",
    "TimingReport",
    "TrainableReport",
    "TrainableRow",
    "finding_kinds",
    "graph_json",
]

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

#: Version of the layout of :meth:`ModelSummary.to_dict`; bumped on incompatible changes.
SCHEMA_VERSION = 1

Shape = tuple[int, ...]


# Display: every record has a one-line ``repr()`` (what it is and its headline, never its
# fields: a report's fields run to megabytes); records with a table show it through IPython's
# pretty printer (``_repr_pretty_``, terminal IPython) and as HTML (``_repr_html_``, Jupyter).


def _pretty(record: object, printer: Any, cycle: bool) -> None:
    """IPython's ``_repr_pretty_``: the record's text table (its ``str()``)."""
    printer.text(repr(record) if cycle else str(record))


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else plural or word + 's'}"


def _short(text: str, width: int = 60) -> str:
    """``text`` on one line, cut to ``width`` characters with ``...``."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


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

    The categories are totals, not a split of the peak: during backward, activations are
    freed while gradients are allocated, so at the peak only part of each is alive.
    """

    inference_peak: int
    training_peak: int
    parameters: int
    buffers: int
    inputs: int
    activations: int
    gradients: int
    optimizer_state: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return records_text.render_memory(self)

    def __repr__(self) -> str:
        return (
            f"<MemoryEstimate ({self.device}): training step peak "
            f"{format_bytes(self.training_peak)}, inference peak "
            f"{format_bytes(self.inference_peak)}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_memory(self)


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


#: The kinds of gradient-health finding, as stable strings (see docs/gradients.md).
FINDING_KINDS = (
    "nan_grad",
    "inf_grad",
    "nonfinite_loss",
    "nonfinite_activation",
    "no_grad",
    "zero_grad",
    "vanishing",
    "exploding",
    "dead_activation",
    "not_updated",
    "frozen_but_updated",
    "grad_accumulation",
    "eval_mode",
    "softmax_into_cross_entropy",
    "batchnorm_batch_of_one",
)
#: Finding severities, most severe first; ``error`` and ``warning`` make a report unhealthy.
SEVERITIES = ("error", "warning", "info")


def finding_kinds(allow: Iterable[str], *, source: str = "allow") -> tuple[str, ...]:
    """``allow`` as a tuple, or a TypeError/ValueError if it is not a collection of known
    finding kinds; ``source`` names the argument in the messages (the pytest plugin passes
    the marker)."""
    # a bare string would otherwise be read as its characters: "no_grad" -> "n", "o", ...
    if isinstance(allow, str):
        raise TypeError(
            f"{source} must be a list of finding kinds, not a string; write [{allow!r}]"
        )
    kinds = tuple(allow)
    not_strings = [kind for kind in kinds if not isinstance(kind, str)]
    if not_strings:
        raise TypeError(f"{source} must hold finding kinds as strings, got {not_strings!r}")
    unknown = sorted(set(kinds) - set(FINDING_KINDS))
    if unknown:
        raise ValueError(
            f"{source} names unknown finding kinds {unknown}; known kinds: {list(FINDING_KINDS)}"
        )
    return kinds


@dataclass(frozen=True)
class Finding:
    """One thing the gradient monitor found.

    Attributes:
        kind: one of :data:`FINDING_KINDS`.
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        where: the parameter or module path it concerns (``"loss"``, ``"optimizer"`` or
            ``"<model>"`` when it concerns no single one).
        step: the step it was first seen in (0-based), None when it concerns the whole run.
        value: the measured value that crossed the threshold, if there is one.
        threshold: the threshold it crossed, if there is one.
        message: what was seen and its likely cause.
    """

    kind: str
    severity: str
    where: str
    step: int | None
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _headline(self) -> str:
        step = "" if self.step is None else f", step {self.step}"
        return f"{self.severity} {self.kind} at {self.where}{step}"

    def __str__(self) -> str:
        return f"{self._headline()}: {self.message}"

    def __repr__(self) -> str:
        return f"<Finding {self._headline()}: {_short(self.message)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)


@dataclass(frozen=True)
class ParameterHistory:
    """Per-step gradient statistics of one parameter (for plots and TensorBoard).

    ``steps[k]`` is the step of the k-th entry of every series; steps where the parameter had
    no gradient are absent. ``update_ratio`` is ``||change|| / ||weight||`` of the optimizer
    step (None when no optimizer step was observed for it).
    """

    name: str
    shape: Shape
    numel: int
    trainable: bool
    steps: tuple[int, ...]
    grad_norm: tuple[float, ...]
    grad_mean_abs: tuple[float, ...]
    grad_max_abs: tuple[float, ...]
    update_ratio: tuple[float | None, ...]

    def __repr__(self) -> str:
        last = f", last grad norm {self.grad_norm[-1]:.3g}" if self.grad_norm else ""
        return (
            f"<ParameterHistory {self.name} {list(self.shape)}: "
            f"{_plural(len(self.steps), 'step')} with a gradient{last}>"
        )


@dataclass(frozen=True)
class GradientReport:
    """What a :class:`~torchscope.collect.gradients.GradientMonitor` saw; ``str()`` gives a table.

    Attributes:
        findings: most severe first, then by step.
        parameters: the history of every parameter, in the model's order.
        steps: optimizer steps observed (backward passes, when no optimizer stepped).
        backward_passes: backward passes observed.
        losses: the loss of every backward pass, in order.
        step_unit: what a step is: ``"optimizer step"`` or ``"backward pass"``.
    """

    findings: tuple[Finding, ...]
    parameters: tuple[ParameterHistory, ...]
    steps: int
    backward_passes: int
    losses: tuple[float, ...] = ()
    step_unit: str = "optimizer step"

    @property
    def ok(self) -> bool:
        """True when there is no error and no warning (``info`` findings do not count)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def kinds(self) -> set[str]:
        """The kinds of the errors and warnings found."""
        return {f.kind for f in self.findings if f.severity in ("error", "warning")}

    @property
    def history(self) -> dict[str, ParameterHistory]:
        """Per-parameter history by qualified name."""
        return {p.name: p for p in self.parameters}

    def filtered(self, allow: Sequence[str] = ()) -> GradientReport:
        """The same report without findings of the kinds in ``allow``."""
        allowed = set(finding_kinds(allow))
        kept = tuple(f for f in self.findings if f.kind not in allowed)
        return dataclasses.replace(self, findings=kept)

    def raise_if_unhealthy(self) -> None:
        """Raise :class:`~torchscope.errors.GradientHealthError` (the findings table) unless ok."""
        # a failing test shows the user's line and the findings table, not this frame (pytest)
        __tracebackhide__ = True
        if not self.ok:
            raise GradientHealthError(records_text.render_gradient_report(self), self)

    def assert_healthy(self, allow: Sequence[str] = ()) -> None:
        """Like :meth:`raise_if_unhealthy`, ignoring the finding kinds in ``allow``."""
        __tracebackhide__ = True
        self.filtered(allow).raise_if_unhealthy()

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradientReport:
        def history(d: dict[str, Any]) -> ParameterHistory:
            values: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            }
            return ParameterHistory(**values)

        return cls(
            findings=tuple(Finding(**f) for f in data["findings"]),
            parameters=tuple(history(p) for p in data["parameters"]),
            steps=data["steps"],
            backward_passes=data["backward_passes"],
            losses=tuple(data.get("losses", ())),
            step_unit=data.get("step_unit", "optimizer step"),
        )

    def __str__(self) -> str:
        return records_text.render_gradient_report(self)

    def __repr__(self) -> str:
        counts = [
            _plural(n, severity)
            for severity, n in (
                ("error", sum(f.severity == "error" for f in self.findings)),
                ("warning", sum(f.severity == "warning" for f in self.findings)),
                ("note", sum(f.severity == "info" for f in self.findings)),
            )
            if n
        ]
        verdict = "healthy" if self.ok else ", ".join(c for c in counts if "note" not in c)
        notes = [c for c in counts if "note" in c]
        verdict = ", ".join([verdict, *notes])
        span = (
            _plural(self.backward_passes, "backward pass", "backward passes")
            if self.step_unit == "backward pass"
            else _plural(self.steps, "step")
        )
        return f"<GradientReport: {verdict} over {span}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_gradient_report(self)

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Draw the gradient-flow chart (per-layer mean and max |grad|) to ``path``; needs
        matplotlib. The format follows the suffix (png, svg, pdf). Returns the path."""
        # matplotlib is optional: the exporter (and matplotlib) load only when asked
        plot: Callable[..., str] = exporter("gradients.plot")
        return plot(self, path)

    def log_to(self, writer: Any) -> None:
        """Write per-parameter scalars, histograms and the findings to a TensorBoard
        ``SummaryWriter`` (or anything with ``add_scalar``/``add_histogram``/``add_text``)."""
        exporter("gradients.tensorboard")(self, writer)  # tensorboard is optional


def _memory(data: dict[str, Any] | None) -> MemoryEstimate | None:
    if data is None:
        return None
    fields = {f.name for f in dataclasses.fields(MemoryEstimate)}
    return MemoryEstimate(**{k: v for k, v in data.items() if k in fields})


def _shapes(items: Any) -> tuple[Shape, ...]:
    return tuple(tuple(int(d) for d in s) for s in items)


# --------------------------------------------------------------------------------------------
# Graphs: autograd_graph() and module_graph() produce a Graph; render/ draws it.

#: What a graph node stands for.
NODE_KINDS = ("op", "parameter", "input", "output", "module")

#: The state of the gradient a node received, after ``backward()``.
GRAD_STATUSES = ("ok", "none", "zero", "nan", "inf")


@dataclass(frozen=True, slots=True)
class GradInfo:
    """The gradient a graph node received in the last backward pass.

    Attributes:
        norm: L2 norm of the gradient (of a parameter: its ``.grad``; of an op: the gradient
            flowing into it from the loss); None when there was none.
        status: one of :data:`GRAD_STATUSES`: ``"ok"``, ``"none"`` (no gradient reached it),
            ``"zero"`` (all zero), ``"nan"`` or ``"inf"`` (non-finite values).
    """

    norm: float | None
    status: str


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node of a graph.

    Attributes:
        key: stable identifier: the same model and input give the same keys in every run and
            process (``param:fc.weight``, ``fc/AddmmBackward0#0``, ``layer1.0.conv1``).
        label: what is drawn (``AddmmBackward0``, ``fc.weight``, ``conv1 (Conv2d)``).
        kind: one of :data:`NODE_KINDS`.
        op: the operation: autograd node class, module class or function name.
        shapes: shapes of what the node produces, where known.
        dtypes: their dtypes (``"float32"``), aligned with ``shapes``.
        module: qualified name of the module that produced the node (``""``: the root
            module), None when unknown.
        order: position in execution (forward) order; ties are broken by ``key``.
        grad: the gradient it received, when the graph was captured with ``grads=True``.
        attrs: further ``(name, value)`` facts, such as saved tensors.
    """

    key: str
    label: str
    kind: str
    op: str = ""
    shapes: tuple[Shape, ...] = ()
    dtypes: tuple[str, ...] = ()
    module: str | None = None
    order: int = 0
    grad: GradInfo | None = None
    attrs: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        shapes = f" {format_shapes(self.shapes)}" if self.shapes else ""
        return f"<GraphNode {self.kind} {self.key}: {self.label}{shapes}>"


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """Data flows from ``src`` to ``dst`` (a parameter into the op that uses it, an op into
    the op that consumes its result)."""

    src: str
    dst: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class GraphCluster:
    """A module whose nodes are drawn together. ``key`` is its qualified name (``""``: the
    root), ``parent`` the key of the enclosing cluster (None for the outermost)."""

    key: str
    label: str
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class GraphFold:
    """A run of structurally identical steps, drawn once with its count.

    Attributes:
        label: what repeats (``EncoderBlock``, ``MulBackward0 → AddBackward0``).
        count: how many times it ran back to back.
        instances: the node keys of every repetition, aligned position by position
            (``instances[k][i]`` plays the part of ``instances[0][i]``).
    """

    label: str
    count: int
    instances: tuple[tuple[str, ...], ...]

    def __repr__(self) -> str:
        size = len(self.instances[0]) if self.instances else 0
        return f"<GraphFold {self.label} ×{self.count} ({_plural(size, 'node')} each)>"


@dataclass(frozen=True)
class Graph:
    """A captured graph: nodes, data-flow edges, module clusters and folds of repeated steps.

    ``to_dot()``, ``to_json()``, ``to_html()`` and ``render(path)`` draw it; by default
    repeated steps are folded and nothing is collapsed (``fold=``, ``depth=`` change that).

    Attributes:
        kind: ``"autograd"`` or ``"module"``.
        title: what the graph shows (``ResNet``, ``loss``).
        nodes: in execution order.
        edges: sorted by (source, destination) order.
        clusters: parents before children.
        folds: repeated steps found, largest first.
        warnings: what the capture could not show, and why.
        grad_origin: with ``grads=True``: the key of the node closest to the loss where the
            gradient first became zero or non-finite, None when all is well.
    """

    kind: str
    title: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    clusters: tuple[GraphCluster, ...] = ()
    folds: tuple[GraphFold, ...] = ()
    warnings: tuple[str, ...] = ()
    grad_origin: str | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, key: str) -> GraphNode:
        """The node with this key; KeyError names close keys when there is none."""
        for node in self.nodes:
            if node.key == key:
                return node
        close = [n.key for n in self.nodes if key in n.key][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no node {key!r} in this graph{hint}")

    def nodes_of(self, kind: str) -> tuple[GraphNode, ...]:
        """The nodes of one kind (``"parameter"``, ``"op"``, ...), in order."""
        if kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {kind!r}; choose from {', '.join(NODE_KINDS)}")
        return tuple(n for n in self.nodes if n.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 1) -> str:
        """JSON text; byte-identical for the same model and input."""
        return graph_json(self, indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        def node(d: dict[str, Any]) -> GraphNode:
            grad = d.get("grad")
            return GraphNode(
                key=d["key"],
                label=d["label"],
                kind=d["kind"],
                op=d.get("op", ""),
                shapes=_shapes(d.get("shapes", ())),
                dtypes=tuple(d.get("dtypes", ())),
                module=d.get("module"),
                order=d.get("order", 0),
                grad=GradInfo(**grad) if grad is not None else None,
                attrs=tuple((str(k), str(v)) for k, v in d.get("attrs", ())),
            )

        graph_type: type[Graph] = AutogradGraph if data["kind"] == "autograd" else ModuleGraph
        return graph_type(
            kind=data["kind"],
            title=data["title"],
            nodes=tuple(node(n) for n in data["nodes"]),
            edges=tuple(GraphEdge(**e) for e in data["edges"]),
            clusters=tuple(GraphCluster(**c) for c in data.get("clusters", ())),
            folds=tuple(
                GraphFold(f["label"], f["count"], tuple(tuple(i) for i in f["instances"]))
                for f in data.get("folds", ())
            ),
            warnings=tuple(data.get("warnings", ())),
            grad_origin=data.get("grad_origin"),
        )

    @classmethod
    def from_json(cls, text: str) -> Graph:
        return cls.from_dict(json.loads(text))

    def to_dot(self, *, fold: bool = True, depth: int | None = None) -> str:
        """Graphviz DOT text (no Graphviz needed to produce it)."""
        to_dot: Callable[..., str] = exporter("graph.dot")
        return to_dot(self, fold=fold, depth=depth)

    def to_html(self, *, fold: bool = True, depth: int | None = None) -> str:
        """A self-contained HTML page: pan, zoom, expand/collapse clusters, search by name.
        Needs no Graphviz and no network."""
        to_html: Callable[..., str] = exporter("graph.html")
        return to_html(self, fold=fold, depth=depth)

    def render(
        self,
        path: str | os.PathLike[str],
        *,
        fold: bool = True,
        depth: int | None = None,
    ) -> str:
        """Write the graph to ``path`` in the format its suffix names: ``.svg``, ``.png``,
        ``.pdf`` (Graphviz's ``dot``, or torchscope's own layout when the graph is too big
        for dot to lay out quickly), ``.dot``, ``.html`` or ``.json``. Returns the path."""
        write: Callable[..., str] = exporter("graph.file")
        return write(self, path, fold=fold, depth=depth)

    def log_to(self, writer: Any, *, fold: bool = True) -> None:
        """Write the graph to TensorBoard's graph tab through a ``SummaryWriter``; with
        ``fold``, each run of repeated steps is one box named with its count."""
        exporter("graph.tensorboard")(self, writer, fold=fold)

    def __str__(self) -> str:
        return records_text.render_graph(self)

    def __repr__(self) -> str:
        folds = "".join(f", {fold.label} ×{fold.count}" for fold in self.folds[:3])
        return (
            f"<{type(self).__name__} of {self.title}: {_plural(len(self.nodes), 'node')}, "
            f"{_plural(len(self.edges), 'edge')}{folds}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        bundle: dict[str, str] = exporter("graph.display")(self)
        return bundle


def graph_json(graph: Graph, *, indent: int | None = 1) -> str:
    """``graph`` as JSON text (what :meth:`Graph.to_json` returns), for exporters that write it
    without calling back into the record."""
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(graph)},
        indent=indent,
        allow_nan=True,
    )


@dataclass(frozen=True, repr=False)  # repr=False: keep Graph's short repr
class AutogradGraph(Graph):
    """The autograd graph behind one or more tensors: what ``backward()`` will run."""


@dataclass(frozen=True, repr=False)
class ModuleGraph(Graph):
    """The data flow between a model's modules (and the functional ops between them)."""


@dataclass(frozen=True)
class GraphDiff:
    """What changed from graph ``a`` to graph ``b``, node by node (matched by key).

    Attributes:
        added: keys of nodes only in ``b``.
        removed: keys of nodes only in ``a``.
        changed: ``(key, what changed)`` for nodes in both whose op, shapes, dtypes or
            inputs differ.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[tuple[str, str], ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return records_text.render_graph_diff(self)

    def __repr__(self) -> str:
        if not self:
            return "<GraphDiff: no structural difference>"
        return (
            f"<GraphDiff: {len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_graph_diff(self)


# --------------------------------------------------------------------------------------------
# Timing: benchmark() gives a Measurement, time_layers() a TimingReport.


@dataclass(frozen=True)
class Measurement:
    """Repeated timings of one piece of work, in seconds.

    Attributes:
        median: the median time of one run.
        iqr: inter-quartile range (75th minus 25th percentile): the spread.
        mean: the mean.
        min: the fastest run.
        n: how many runs were timed (after the warm-up).
        device: where the work ran (``cpu``, ``cuda:0``); CUDA times come from CUDA events.
        times: every timed run, in order.
        label: what was timed.
        flushed_cache: whether a buffer larger than the L2 cache was overwritten between runs.
    """

    median: float
    iqr: float
    mean: float
    min: float
    n: int
    device: str
    times: tuple[float, ...] = ()
    label: str = ""
    flushed_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**{**data, "times": tuple(data.get("times", ()))})

    def __str__(self) -> str:
        return records_text.render_measurement(self)

    def __repr__(self) -> str:
        label = f" {self.label}" if self.label else ""
        return (
            f"<Measurement{label}: median {format_duration(self.median)} "
            f"(IQR {format_duration(self.iqr)}), {_plural(self.n, 'run')} on {self.device}>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_measurement(self)


@dataclass(frozen=True)
class LayerTiming:
    """Time spent in one module per training step (all its calls together), in seconds.

    Attributes:
        name: qualified module name (``""``: the root).
        type: class name.
        depth: nesting depth (0: the root).
        calls: calls per step.
        forward: median inclusive forward time (the module and everything it calls).
        forward_iqr: its inter-quartile range over the repetitions.
        forward_self: median forward time outside its child modules.
        backward: median inclusive backward time (from the first to the last autograd node
            its forward created, children's nodes included); 0 without backward.
        backward_iqr: its inter-quartile range.
        backward_self: median time of the backward nodes its own code created.
        share: ``(forward_self + backward_self)`` over the un-instrumented step time.
    """

    name: str
    type: str
    depth: int
    calls: int
    forward: float
    forward_iqr: float
    forward_self: float
    backward: float = 0.0
    backward_iqr: float = 0.0
    backward_self: float = 0.0
    share: float = 0.0

    @property
    def self_time(self) -> float:
        """Forward plus backward self time: what this module's own code costs."""
        return self.forward_self + self.backward_self

    def __repr__(self) -> str:
        where = f"{self.name} ({self.type})" if self.name else self.type
        backward = f", backward {format_duration(self.backward)}" if self.backward else ""
        return (
            f"<LayerTiming {where}: forward {format_duration(self.forward)}{backward}, "
            f"self {format_duration(self.self_time)} ({100 * self.share:.1f}% of the step)>"
        )


@dataclass(frozen=True)
class TimingReport:
    """Per-module forward and backward times of a model, with the report's own accuracy.

    Attributes:
        model_type: class name of the model.
        device: where it ran.
        backward: whether backward passes were timed.
        warmup: untimed steps before the measurement.
        repeat: timed steps.
        layers: one row per module, in the model's order.
        step: the whole step (forward, and backward when timed) without any hooks.
        instrumented_step: the same step with torchscope's timing hooks.
        coverage: the summed inclusive time of the model's direct children over ``step``'s
            median: how much of the step the per-module rows account for.
        overhead_per_call: the instrumentation's measured cost per module call, in seconds.
    """

    model_type: str
    device: str
    backward: bool
    warmup: int
    repeat: int
    layers: tuple[LayerTiming, ...]
    step: Measurement
    instrumented_step: Measurement
    coverage: float
    overhead_per_call: float

    def layer(self, name: str) -> LayerTiming:
        """The row of the module with this qualified name."""
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(
            f"no module {name!r} was timed; modules: {[r.name for r in self.layers][:8]}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingReport:
        return cls(
            model_type=data["model_type"],
            device=data["device"],
            backward=data["backward"],
            warmup=data["warmup"],
            repeat=data["repeat"],
            layers=tuple(LayerTiming(**row) for row in data["layers"]),
            step=Measurement.from_dict(data["step"]),
            instrumented_step=Measurement.from_dict(data["instrumented_step"]),
            coverage=data["coverage"],
            overhead_per_call=data["overhead_per_call"],
        )

    def __str__(self) -> str:
        return records_text.render_timing(self)

    def __repr__(self) -> str:
        what = "forward + backward" if self.backward else "forward"
        return (
            f"<TimingReport of {self.model_type} on {self.device}: {what} step median "
            f"{format_duration(self.step.median)}, {_plural(len(self.layers), 'module')}, "
            f"coverage {100 * self.coverage:.1f}%>"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        _pretty(self, printer, cycle)

    def _repr_html_(self) -> str:
        return records_html.render_timing(self)

    def log_to(self, writer: Any, step: int = 0) -> None:
        """Write per-module times (``timing/forward/<name>``, ``timing/backward/<name>``, in
        ms) and the table as text to a TensorBoard ``SummaryWriter``."""
        exporter("timing.tensorboard")(self, writer, step)


# --------------------------------------------------------------------------------------------
# Training: torchscope.training.fit() returns a History.


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
