"""Lightning front end: :class:`TorchscopeCallback` summarises the model, watches gradient health
across ``training_step``s and freezes layers before the optimizer is built.

Lightning is optional: ``import torchscope`` never imports it, and importing this module
without it raises an ``ImportError`` that says what to install. ``lightning.pytorch`` is used
when installed, else ``pytorch_lightning``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import torchscope._util.nested as _nested
from torchscope.collect.freezing import Target
from torchscope.collect.freezing import freeze as freeze_targets
from torchscope.collect.gradients import GradientMonitor
from torchscope.collect.gradients.optimizer_hooks import checked_copy_budget
from torchscope.collect.hooks import preserved_rng
from torchscope.collect.summary import summary as summarize
from torchscope.errors import GradientHealthError, SummaryError
from torchscope.records import GradientReport, ModelSummary
from torchscope.records._text import render_gradient_report

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelSummary as LightningSummary
except ImportError:
    try:
        from pytorch_lightning import (  # type: ignore[assignment]
            Callback,
            LightningModule,
            Trainer,
        )
        from pytorch_lightning.callbacks import (  # type: ignore[assignment]
            ModelSummary as LightningSummary,
        )
    except ImportError as e:
        raise ImportError(
            "torchscope.integrations.lightning needs Lightning (lightning.pytorch or pytorch_lightning "
            ">= 2.0): pip install lightning"
        ) from e

__all__ = ["TorchscopeCallback"]


class TorchscopeCallback(Callback):
    """A Lightning ``Callback`` that summarises the model, watches gradient health and freezes layers.

    Example::

        callback = TorchscopeCallback(freeze=["backbone"], fail_on_error=True)
        trainer = lightning.pytorch.Trainer(callbacks=[callback], precision="16-mixed")
        trainer.fit(model, datamodule=data)
        callback.report.plot("grad_flow.png")

    Args:
        summary: print :func:`torchscope.summary` of the LightningModule once per fit, on the
            global-zero rank, under the trainer's precision (autocast) context:

            - with ``pl_module.example_input_array`` set: at fit start, called like Lightning
              does (a tuple is positional arguments, a dict keyword arguments); a forward
              that fails on it fails the fit with :class:`~torchscope.SummaryError`;
            - otherwise: when training starts (after the sanity check, before the first
              batch), on a batch built from the train ``DataLoader``'s dataset directly:
              ``collate_fn`` over ``dataset[0 .. batch_size-1]``. The loader is never iterated,
              so its sampler, its workers and your iterator are untouched, and the global
              RNGs (torch, CUDA, ``random``, NumPy) are restored afterwards, so training is
              the same with and without the summary. The model is called with the batch if
              it is a tensor, with its first element if it is a tuple or list (the usual
              ``(inputs, targets)``), with it as keyword arguments if it is a dict.
              Batch-transfer hooks are not run. When that is not possible (an
              ``IterableDataset``, several train loaders, a forward that rejects the guess)
              a one-line note says why instead: set ``example_input_array`` then.

            The summary is kept on :attr:`model_summary`. It replaces Lightning's own: a
            ``ModelSummary`` or ``RichModelSummary`` callback (``enable_model_summary=True``, the
            default, adds one) is taken off the trainer for the fit and put back at its end, so
            one summary prints. Where torchscope's summary cannot be built (the note above),
            Lightning's is printed instead. ``summary=False`` keeps Lightning's and prints none
            of ours.
        gradient_health: run a :class:`~torchscope.GradientMonitor` from train start to train
            end (it is also removed when the fit raises or is interrupted), with
            ``accumulation_steps=trainer.accumulate_grad_batches``. Mixed precision needs no
            option: the monitor measures gradients at ``optimizer.step()``, after Lightning's
            ``GradScaler`` (``precision="16-mixed"``) has unscaled them, and steps the scaler
            skips never reach ``optimizer.step()``: they are left out of the report and counted
            in a note (a clear at a window boundary after a skipped step is not taken for a
            clear inside the window). At train end the report is printed (global-zero rank) and kept on
            :attr:`report`; after an exception it is kept and printed too, covering the steps
            up to the failure. It also goes to the trainer's loggers, at the trainer's
            ``global_step``: to every logger the scalars ``torchscope/errors``,
            ``torchscope/warnings`` and ``torchscope/notes`` (finding counts, through
            ``log_metrics``), and to a logger whose ``experiment`` takes text (TensorBoard's
            ``SummaryWriter``) the findings table as ``torchscope/gradient_health``.
        freeze: what to pass to :func:`torchscope.freeze`: a qualified module name, a glob, a
            module type or a submodule, or a list of them. Applied in the ``setup`` hook,
            before ``configure_optimizers`` runs, so an optimizer built over trainable
            parameters never holds them; applied again at fit start with each of the
            trainer's optimizers, which drops their state for those parameters and keeps
            their gradients ``None`` (for layers built in ``LightningModule.setup`` or
            ``configure_model``, and optimizers built over all parameters). Normalisation
            layers inside the targets stay in eval mode. Frozen parameters stay bit-identical
            and the gradient monitor knows they are meant to be frozen.
        max_copy_bytes: keyword-only; the gradient monitor's budget for its copy of the
            weights (see :class:`~torchscope.GradientMonitor`): None copies them whole, 0 not
            at all.
        fail_on_error: keyword-only; raise :class:`~torchscope.GradientHealthError` from
            ``on_train_end`` (so ``trainer.fit`` raises it) when the report has an ``error``
            finding. Warnings and notes never fail the fit.

    Attributes:
        report: the :class:`~torchscope.GradientReport` of the last fit (None before).
        model_summary: the :class:`~torchscope.ModelSummary` of the last fit (None if none).
    """

    def __init__(
        self,
        summary: bool = True,
        gradient_health: bool = True,
        freeze: Target | Sequence[Target] | None = None,
        *,
        fail_on_error: bool = False,
        max_copy_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self._summary = bool(summary)
        self._gradient_health = bool(gradient_health)
        self._freeze = _freeze_targets(freeze)
        if fail_on_error and not gradient_health:
            raise ValueError(
                "fail_on_error=True acts on the gradient report: it needs gradient_health=True"
            )
        self._fail_on_error = bool(fail_on_error)
        self._max_copy_bytes = checked_copy_budget(max_copy_bytes)
        if max_copy_bytes is not None and not gradient_health:
            raise ValueError(
                "max_copy_bytes is the gradient monitor's budget: it needs gradient_health=True"
            )
        self.report: GradientReport | None = None
        self.model_summary: ModelSummary | None = None
        self._summarised = False
        self._monitor: GradientMonitor | None = None
        self._steps_at_start = 0
        # Lightning's summary callbacks, off the trainer for the fit, with their places in its list
        self._replaced: list[tuple[int, Callback]] = []

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(summary={self._summary}, "
            f"gradient_health={self._gradient_health}, freeze={list(self._freeze) or None}, "
            f"fail_on_error={self._fail_on_error})"
        )

    # -- fit start -------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.report = None
        self.model_summary = None
        self._summarised = False
        if self._summary:
            self._replace_lightning_summary(trainer)
        if self._freeze:
            try:
                freeze_targets(pl_module, *self._freeze)
            except ValueError:
                # a target not built yet (LightningModule.setup and configure_model run after
                # this hook): on_fit_start applies it, and raises if it still matches nothing
                pass

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._freeze:
            optimizers: list[torch.optim.Optimizer | None] = [
                o for o in trainer.optimizers if isinstance(o, torch.optim.Optimizer)
            ]
            for optimizer in optimizers or [None]:
                freeze_targets(pl_module, *self._freeze, optimizer=optimizer)
        example = getattr(pl_module, "example_input_array", None)
        if self._summary and example is not None:
            self._summarised = True
            if trainer.is_global_zero:
                self._print_summary(trainer, pl_module, example)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._summary and not self._summarised:
            self._summarised = True
            if trainer.is_global_zero:
                self._summary_from_train_data(trainer, pl_module)
        if self._gradient_health:
            self._drop_monitor()  # left open by an earlier fit that ended unusually
            accumulation = int(trainer.accumulate_grad_batches)
            self._steps_at_start = trainer.global_step
            monitor = GradientMonitor(
                pl_module, accumulation_steps=accumulation, max_copy_bytes=self._max_copy_bytes
            )
            monitor.__enter__()
            self._monitor = monitor

    # -- fit end ---------------------------------------------------------------------------------

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = self._close_monitor()
        if report is None:
            return
        if trainer.is_global_zero:
            print(report)
            _log_report(trainer, report)
            skipped = _skipped_steps(trainer, report, self._steps_at_start)
            if skipped:
                print(
                    f"torchscope: the GradScaler skipped {skipped} of "
                    f"{trainer.global_step - self._steps_at_start} optimizer step(s) (inf/NaN in "
                    "the scaled gradients: the loss scale was too high; it lowers it and "
                    "retries). The report covers the steps taken"
                )
        errors = sum(f.severity == "error" for f in report.findings)
        if self._fail_on_error and errors:
            raise GradientHealthError(
                f"TorchscopeCallback(fail_on_error=True): the gradient report has {errors} "
                f"error finding(s)\n{report}",
                report,
            )

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if self._monitor is None:
            return
        try:
            report = self._close_monitor()
        except Exception as e:  # never hide the exception that ended the fit behind ours
            if trainer.is_global_zero:
                print(f"torchscope: no gradient report ({type(e).__name__}: {e})")
            return
        if report is not None and trainer.is_global_zero:
            print(f"torchscope: gradient health up to the {type(exception).__name__}:")
            print(report)
            _log_report(trainer, report)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._drop_monitor()  # the last hook of every fit: no hook of ours outlives it
        self._restore_lightning_summary(trainer)

    def _replace_lightning_summary(self, trainer: Trainer) -> None:
        """Take Lightning's summary callbacks off the trainer, so one summary prints."""
        self._restore_lightning_summary(trainer)  # left off by an earlier fit that ended unusually
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        self._replaced = [
            (k, c) for k, c in enumerate(callbacks) if isinstance(c, LightningSummary)
        ]
        if self._replaced:
            # a new list: the hook being run iterates over the old one, which stays as it is
            kept = [c for c in callbacks if not isinstance(c, LightningSummary)]
            trainer.callbacks = kept  # type: ignore[attr-defined]

    def _restore_lightning_summary(self, trainer: Trainer) -> None:
        replaced, self._replaced = self._replaced, []
        if replaced:
            callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
            for index, callback in replaced:  # in ascending order: back where they were
                callbacks.insert(index, callback)
            trainer.callbacks = callbacks  # type: ignore[attr-defined]

    def _lightning_summary_instead(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Print the summary of the Lightning callbacks ours replaced (when ours failed)."""
        for _, callback in self._replaced:
            callback.on_fit_start(trainer, pl_module)

    def _drop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.__exit__(None, None, None)

    def _close_monitor(self) -> GradientReport | None:
        """Remove the monitor's hooks, then read its report (kept on ``self.report``)."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return None
        monitor.__exit__(None, None, None)
        self.report = monitor.report()
        return self.report

    # -- summary ---------------------------------------------------------------------------------

    def _print_summary(self, trainer: Trainer, pl_module: LightningModule, example: Any) -> None:
        example = trainer.precision_plugin.convert_input(example)
        with trainer.precision_plugin.forward_context():
            self.model_summary = summarize(pl_module, example, device=pl_module.device)
        print(self.model_summary)

    def _summary_from_train_data(self, trainer: Trainer, pl_module: LightningModule) -> None:
        name = type(pl_module).__name__
        loader = trainer.train_dataloader
        try:
            batch = _first_batch(loader)
        except _NoExample as e:
            print(
                f"torchscope: no summary of {name}: {e}. Set {name}.example_input_array to get one"
            )
            self._lightning_summary_instead(trainer, pl_module)
            return
        try:
            self._print_summary(trainer, pl_module, _forward_input(batch))
        except (SummaryError, TypeError, ValueError) as e:
            # the input is a guess from the batch's structure: say so rather than fail the fit
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(
                f"torchscope: no summary of {name}: its forward failed on the input taken from "
                f"the first train batch ({first}). Set {name}.example_input_array to get one"
            )
            self._lightning_summary_instead(trainer, pl_module)


class _NoExample(Exception):
    """No example input can be built from the train data without side effects."""


def _freeze_targets(freeze: Any) -> tuple[Target, ...]:
    if freeze is None:
        return ()
    targets = (
        [freeze]
        if isinstance(freeze, (str, nn.Module, type)) or not isinstance(freeze, Sequence)
        else list(freeze)
    )
    if not targets:
        raise ValueError(
            "freeze= names no target; pass module names, globs, module types or modules, "
            "or None to freeze nothing"
        )
    for target in targets:
        if not (
            isinstance(target, (str, nn.Module))
            or (isinstance(target, type) and issubclass(target, nn.Module))
        ):
            raise TypeError(
                "freeze= takes qualified module names, globs, module types or modules (or a "
                f"list of them), as torchscope.freeze does; got {type(target).__name__}"
            )
    return tuple(targets)


def _log_report(trainer: Trainer, report: GradientReport) -> None:
    """Send the report's finding counts (and, where text is taken, its table) to the loggers."""
    counts = {
        f"torchscope/{name}": float(sum(f.severity == severity for f in report.findings))
        for name, severity in (("errors", "error"), ("warnings", "warning"), ("notes", "info"))
    }
    step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics(counts, step=step)
        # TensorBoard's SummaryWriter takes text (log_metrics has made the experiment already)
        add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
        if callable(add_text):
            add_text(
                "torchscope/gradient_health", render_gradient_report(report, markdown=True), step
            )


def _grad_scaler(trainer: Trainer) -> Any:
    """The GradScaler of Lightning's fp16 mixed precision, or None."""
    return getattr(trainer.precision_plugin, "scaler", None)


def _skipped_steps(trainer: Trainer, report: GradientReport, steps_at_start: int) -> int:
    """Optimizer steps the GradScaler skipped: Lightning counts them, optimizer.step never ran."""
    if _grad_scaler(trainer) is None:
        return 0
    taken = report.steps if report.step_unit == "optimizer step" else 0
    return max(trainer.global_step - steps_at_start - taken, 0)


def _first_batch(loader: Any) -> Any:
    """The first batch's worth of samples, read from the dataset: the loader is not iterated."""
    if loader is None:
        raise _NoExample("the trainer has no train dataloader")
    if not isinstance(loader, DataLoader):
        raise _NoExample(f"the train dataloader is a {type(loader).__name__}, not one DataLoader")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        # its iterator may be the one training reads: taking an item could consume it
        raise _NoExample("an IterableDataset cannot be read without iterating it")
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise _NoExample("the train dataset has no length") from None
    if size == 0:
        raise _NoExample("the train dataset is empty")
    with preserved_rng():  # random augmentations in __getitem__ or collate_fn
        try:
            if loader.batch_sampler is None:  # automatic batching off: one item is the batch
                return loader.collate_fn(dataset[0])
            batch_size = getattr(loader.batch_sampler, "batch_size", None)
            count = min(batch_size if isinstance(batch_size, int) else 1, size)
            return loader.collate_fn([dataset[i] for i in range(count)])
        except Exception as e:  # the user's dataset: keys need not be 0..n-1
            raise _NoExample(f"reading dataset[0] failed ({type(e).__name__}: {e})") from e


def _forward_input(batch: Any) -> Any:
    """What the model is called with, guessed from a batch (see TorchscopeCallback)."""
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, (tuple, list)) and not _nested.is_namedtuple(batch) and batch:
        return batch[0]
    return batch
