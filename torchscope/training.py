"""The reference training loop: everything a careful practitioner does, in one function.

:func:`fit` is what torchscope's tools are validated on (``torchscope demo`` runs it), and a
loop users can read and copy: device placement, mixed precision (bf16 autocast on the CPU,
fp16 with a ``GradScaler`` on CUDA, unscaled before clipping), gradient accumulation,
scheduler stepping, atomic checkpoints that resume bit-exactly, evaluation under
``eval()``/``no_grad()``, TensorBoard, a progress bar, and a :class:`GradientMonitor`
watching all of it. Under ``torchrun`` it wraps the model in DistributedDataParallel (or
uses the user's own DDP model, or an FSDP2-sharded one, as it is) and shards the data with a
``DistributedSampler``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import torchscope._util.nested as _nested
from torchscope._util.loaders import loader_random_state, restore_loader_random_state
from torchscope.collect.gradients import GradientMonitor
from torchscope.distributed import (
    all_gather_objects,
    is_distributed,
    is_main_process,
    is_sharded,
    load_sharded,
    released,
    save_sharded,
)
from torchscope.errors import TorchscopeError, TorchscopeWarning
from torchscope.records import EpochRecord, GradientReport, History

__all__ = ["CHECKPOINT_NAME", "fit", "load_checkpoint", "save_checkpoint"]

#: File name of the latest checkpoint in ``checkpoint_dir``.
CHECKPOINT_NAME = "last.pt"

#: Schedulers that expect a step per optimizer step, not per epoch (their documentation says so).
PER_STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")


# --------------------------------------------------------------------------------------------
# checkpoints


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, position, has_gauss, gauss = numpy.random.get_state()
        # weights_only loading accepts tensors and plain values, not numpy arrays
        states["numpy"] = (name, torch.from_numpy(keys.astype("int64")), position, has_gauss, gauss)
    return states


def _own_rng(state: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG states from a checkpoint: its own where rank 0 gathered every rank's
    (the same world size), else the one saved."""
    ranks = state.get("ranks_rng")
    if ranks and is_distributed() and len(ranks) == dist.get_world_size():
        own: dict[str, Any] = ranks[dist.get_rank()]
        return own
    return dict(state["rng"])


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.random.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in states:
        name, keys, position, has_gauss, gauss = states["numpy"]
        numpy.random.set_state((name, keys.numpy().astype("uint32"), position, has_gauss, gauss))


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples where a round trip may have made lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> str:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then renamed over ``path``. A crash mid-write leaves the previous file intact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return str(target)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` with ``torch.load(weights_only=True)``: no
    arbitrary code runs while loading."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise TorchscopeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------------
# the loop


def _batch(batch: Any, device: torch.device, non_blocking: bool) -> tuple[Any, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(
            f"each batch must be (inputs, targets), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + "; wrap your dataset so that it yields pairs"
        )
    inputs, targets = batch
    return _nested.map_tensors((inputs, targets), lambda t: t.to(device, non_blocking=non_blocking))


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _correct(outputs: Any, targets: torch.Tensor) -> int | None:
    """Correct predictions when this looks like classification, else None."""
    if (
        isinstance(outputs, torch.Tensor)
        and outputs.dim() == 2
        and targets.dim() == 1
        and not targets.is_floating_point()
        and outputs.shape[0] == targets.shape[0]
    ):
        return int((outputs.argmax(1) == targets).sum())
    return None


#: How DistributedDataParallel reports a parameter that got no gradient on some rank.
_DDP_UNUSED = "Expected to have finished reduction"


def _unused_parameter_error(monitor: GradientMonitor, error: RuntimeError) -> TorchscopeError:
    """DDP's reduction error, with the parameters this rank's monitor saw without gradient."""
    unused = sorted({f.where for f in monitor.report(gather=False).findings if f.kind == "no_grad"})
    named = ", ".join(unused) if unused else "(the monitor saw none on this rank)"
    return TorchscopeError(
        f"rank {dist.get_rank()}: DistributedDataParallel stopped because a parameter received "
        f"no gradient in the previous step on some rank; on this rank: {named}. Every "
        "parameter must take part in the loss on every rank: use it, freeze it "
        "(requires_grad=False), or let DDP skip it: "
        'fit(..., ddp_kwargs={"find_unused_parameters": True}), or pass a model you wrapped '
        "yourself, DistributedDataParallel(model, find_unused_parameters=True), which fit "
        f"uses as it is. DDP said: {str(error).splitlines()[0]}"
    )


#: What ``ddp_kwargs`` may hold: DistributedDataParallel's options, less the module itself.
_DDP_OPTIONS = tuple(
    name
    for name in inspect.signature(DistributedDataParallel.__init__).parameters
    if name not in ("self", "module")
)


def _ddp_options(ddp_kwargs: Mapping[str, Any] | None, model: nn.Module) -> dict[str, Any]:
    """``ddp_kwargs`` checked at the boundary: a mapping of DDP's own option names, and not
    given together with a model that is already wrapped (its options are fixed)."""
    if ddp_kwargs is None:
        return {}
    if not isinstance(ddp_kwargs, Mapping):
        raise TypeError(
            "ddp_kwargs must be a dict of DistributedDataParallel options, e.g. "
            f'ddp_kwargs={{"find_unused_parameters": True}}, got {type(ddp_kwargs).__name__}'
        )
    unknown = sorted(str(name) for name in ddp_kwargs if name not in _DDP_OPTIONS)
    if unknown:
        raise ValueError(
            f"ddp_kwargs has {', '.join(map(repr, unknown))}, which DistributedDataParallel "
            f"does not take; its options are: {', '.join(_DDP_OPTIONS)}"
        )
    if ddp_kwargs and isinstance(model, DistributedDataParallel):
        raise ValueError(
            "the model is already wrapped in DistributedDataParallel, whose options were set "
            "when it was wrapped: drop ddp_kwargs=, or pass the bare model with ddp_kwargs= "
            "and fit wraps it"
        )
    return dict(ddp_kwargs)


def _sharded(loader: DataLoader, *, shuffle: bool) -> DataLoader:
    """The same loader with a ``DistributedSampler``: each rank sees its share."""
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(loader.sampler, DistributedSampler):
        return loader
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset, shuffle=shuffle, drop_last=loader.drop_last
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,  # the user's worker seeding
        generator=loader.generator,  # the workers' base seed
    )


def _progress(iterable: Iterable[Any], total: int | None, enabled: bool, label: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm  # optional: the `train` extra
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=label, leave=False, dynamic_ncols=True)


def _amp_context(
    amp: bool, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if not amp:
        return contextlib.nullcontext
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    val_loader: DataLoader | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    scheduler: Any = None,
    amp: bool = False,
    accumulation_steps: int = 1,
    clip_grad_norm: float | None = None,
    device: Any = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    writer: Any = None,
    monitor: bool = True,
    progress: bool = True,
    ddp_kwargs: Mapping[str, Any] | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs; return the :class:`~torchscope.records.History`.

    Args:
        model: moved to ``device`` (default: where its parameters are). Under ``torchrun`` it
            may be a model you wrapped in ``DistributedDataParallel`` yourself: fit uses it as
            it is (it must already be on its device).
        train_loader: yields ``(inputs, targets)``; inputs may be a tensor, a tuple of
            positional arguments or a dict of keyword arguments. On CUDA batches are copied
            with ``non_blocking=True`` (give the loader ``pin_memory=True``).
        val_loader: evaluated after every epoch under ``model.eval()`` and ``no_grad()``.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar.
        optimizer: holds the model's parameters (moved with the model, so build it first).
        epochs: the total number of epochs, including those a ``resume`` skips.
        scheduler: stepped once per epoch after validation; ``ReduceLROnPlateau`` gets the
            validation loss (the training loss without ``val_loader``); ``OneCycleLR`` and
            ``CyclicLR`` are stepped after every optimizer step, as their docs require.
        amp: mixed precision: bf16 autocast on the CPU; fp16 autocast with a ``GradScaler`` on
            CUDA (gradients unscaled before clipping; a step with inf/NaN gradients is
            skipped by the scaler).
        accumulation_steps: divide each loss by this and step the optimizer every this many
            batches (and once more at the end of an epoch with a partial group).
        clip_grad_norm: clip the total gradient norm to this before each step.
        checkpoint_dir: after every epoch write ``last.pt`` there atomically: model,
            optimizer, scheduler, scaler, epoch, step, history and RNG states.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists. On the CPU, 2 epochs
            straight and 1 epoch + resume + 1 epoch give bit-identical weights.
        writer: a TensorBoard ``SummaryWriter``: per-epoch loss, accuracy and learning rate,
            and the gradient report at the end.
        monitor: run a :class:`~torchscope.GradientMonitor` throughout; its report goes into
            ``History.gradient_report``.
        progress: a tqdm bar with loss and throughput (only on a terminal, and only when tqdm
            is installed).
        ddp_kwargs: options for the ``DistributedDataParallel`` that fit wraps the model in
            under ``torchrun``, e.g. ``{"find_unused_parameters": True}`` for a model that
            leaves some parameters out of the loss on some steps or ranks. Checked against
            DDP's option names in every run; used only under ``torchrun``.

    Under ``torchrun`` (``torch.distributed`` initialised) the model is wrapped in
    ``DistributedDataParallel`` (with ``ddp_kwargs``) unless it is one already, the loaders get
    a ``DistributedSampler``, and only rank 0 writes checkpoints, TensorBoard and the progress
    bar; metrics are averaged over ranks. Checkpoints hold the module's own ``state_dict``
    (no ``module.`` prefix), wrapped or not. A model sharded with FSDP2 (``fully_shard``) is
    trained as it is, and every rank writes its shards (``torch.distributed.checkpoint``, in
    ``last-sharded/``) and its own RNG state (``last-rank{r}.pt``); see docs/distributed.md.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(
            f"accumulation_steps must be a whole number >= 1, got {accumulation_steps!r}"
        )
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (where last.pt is)")
    ddp_options = _ddp_options(ddp_kwargs, model)
    sharded = is_sharded(model)  # FSDP2: trained as it is, no DDP, sharded checkpoints
    if sharded and not is_distributed():
        raise TorchscopeError(
            "the model is sharded (fully_shard) but torch.distributed is not initialised: run "
            "fit inside torchscope.distributed.process_group() under torchrun"
        )
    if sharded and ddp_kwargs:
        raise ValueError(
            "ddp_kwargs= configures the DistributedDataParallel that fit wraps a model in, but "
            "this model is sharded with fully_shard and is trained as it is: leave ddp_kwargs out"
        )
    wrapped = model if isinstance(model, DistributedDataParallel) else None
    if wrapped is not None:
        if not is_distributed():
            raise TorchscopeError(
                "the model is wrapped in DistributedDataParallel but torch.distributed is not "
                "initialised (its process group was destroyed?): run fit inside "
                "torchscope.distributed.process_group() under torchrun, or pass the bare model"
            )
        model = wrapped.module  # checkpoints, clipping and the monitor see the module itself
    parameters = list(model.parameters())
    if device is None:
        target = parameters[0].device if parameters else torch.device("cpu")
    else:
        target = torch.device(device)
    if wrapped is None and not sharded:
        model.to(target)
    elif wrapped is not None and parameters and any(p.device != target for p in parameters):
        # DDP's buckets and its device_ids were fixed when it was built
        raise ValueError(
            f"device={device!r}, but the DistributedDataParallel model is on "
            f"{parameters[0].device}: move the model before wrapping it, or leave device out"
        )
    non_blocking = target.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp and target.type == "cuda" else None
    autocast = _amp_context(amp, target)
    per_step_scheduler = scheduler is not None and type(scheduler).__name__ in PER_STEP_SCHEDULERS
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    network: nn.Module = model if wrapped is None else wrapped
    if is_distributed():
        if wrapped is None and not sharded:
            ddp_options.setdefault("device_ids", [target.index] if target.type == "cuda" else None)
            network = DistributedDataParallel(model, **ddp_options)
        train_loader = _sharded(train_loader, shuffle=True)
        if val_loader is not None:
            val_loader = _sharded(val_loader, shuffle=False)

    records: list[EpochRecord] = []
    start_epoch = 0
    steps = 0
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if sharded and checkpoint_path is not None:
        # every rank its own: the rest of the state (RNGs, epoch) beside the shared shards
        checkpoint_path = checkpoint_path.with_name(f"last-rank{dist.get_rank()}.pt")
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if sharded:
            load_sharded(checkpoint_path.parent, model, optimizer)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, steps = int(state["epoch"]), int(state["step"])
        records = [EpochRecord(**r) for r in state.get("history", [])]
        _set_rng_states(_own_rng(state))
        missing = restore_loader_random_state(train_loader, state.get("loader_rng", {}))
        _, hidden = loader_random_state(train_loader)
        if missing:
            hidden.append(f"the generator at train_loader.{missing[0]} (not in this loader)")
        if hidden:
            warnings.warn(
                f"fit(resume=True) cannot restore the randomness of {'; '.join(hidden)}: "
                "the resumed epochs may see other batches than an uninterrupted run. Give "
                "the DataLoader (or the sampler) a torch.Generator, which checkpoints hold",
                TorchscopeWarning,
                stacklevel=2,
            )
    show_progress = progress and is_main_process() and sys.stderr.isatty()

    watch = (
        GradientMonitor(model, optimizer, accumulation_steps=accumulation_steps)
        if monitor
        else contextlib.nullcontext()
    )
    report: GradientReport | None = None
    written: str | None = None
    try:
        with watch as watcher:
            for epoch in range(start_epoch + 1, epochs + 1):
                started = time.perf_counter()
                if hasattr(train_loader.sampler, "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                network.train()
                totals = torch.zeros(
                    4, dtype=torch.float64
                )  # loss sum, correct, samples, classified
                optimizer.zero_grad(set_to_none=True)
                batches = _progress(
                    train_loader, _length(train_loader), show_progress, f"epoch {epoch}"
                )
                pending = 0
                for batch in batches:
                    inputs, targets = _batch(batch, target, non_blocking)
                    with autocast():
                        outputs = _call(network, inputs)
                        loss = loss_fn(outputs, targets)
                    scaled = loss / accumulation_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    pending += 1
                    count = (
                        targets.shape[0]
                        if isinstance(targets, torch.Tensor) and targets.dim()
                        else 1
                    )
                    totals[0] += float(loss.detach()) * count
                    totals[2] += count
                    correct = _correct(outputs, targets)
                    if correct is not None:
                        totals[1] += correct
                        totals[3] += count
                    if pending == accumulation_steps:
                        steps += _step(model, optimizer, scaler, clip_grad_norm)
                        pending = 0
                        if per_step_scheduler:
                            scheduler.step()
                    if show_progress and hasattr(batches, "set_postfix"):
                        elapsed = time.perf_counter() - started
                        batches.set_postfix(
                            loss=f"{totals[0] / totals[2]:.4f}",
                            samples_s=f"{totals[2] / max(elapsed, 1e-9):,.0f}",
                        )
                if pending:  # a partial accumulation group at the end of the epoch
                    steps += _step(model, optimizer, scaler, clip_grad_norm)
                    if per_step_scheduler:
                        scheduler.step()
                train_seconds = time.perf_counter() - started
                totals = _all_reduced(totals)
                train_loss = float(totals[0]) / max(float(totals[2]), 1.0)
                train_accuracy = float(totals[1] / totals[3]) if totals[3] else None
                val_loss, val_accuracy = (
                    _evaluate(network, val_loader, loss_fn, target, non_blocking, autocast)
                    if val_loader is not None
                    else (None, None)
                )
                if scheduler is not None and not per_step_scheduler:
                    if plateau:
                        scheduler.step(val_loss if val_loss is not None else train_loss)
                    else:
                        scheduler.step()
                record = EpochRecord(
                    epoch=epoch,
                    train_loss=train_loss,
                    train_accuracy=train_accuracy,
                    val_loss=val_loss,
                    val_accuracy=val_accuracy,
                    lr=float(optimizer.param_groups[0]["lr"]),
                    optimizer_steps=steps,
                    seconds=time.perf_counter() - started,
                    samples_per_second=float(totals[2]) / max(train_seconds, 1e-9),
                )
                records.append(record)
                if writer is not None and is_main_process():
                    _log_epoch(writer, record)
                if checkpoint_path is not None and sharded:
                    save_sharded(checkpoint_path.parent, model, optimizer)
                ranks_rng = None
                if checkpoint_path is not None and is_distributed() and not sharded:
                    # rank 0 writes; every rank's own RNGs (dropout masks differ per rank)
                    # go with it, gathered: a collective every rank is at
                    ranks_rng = all_gather_objects(_rng_states())
                if checkpoint_path is not None and (sharded or is_main_process()):
                    written = save_checkpoint(
                        checkpoint_path,
                        {
                            "model": None if sharded else model.state_dict(),
                            "optimizer": None if sharded else optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "epoch": epoch,
                            "step": steps,
                            "history": [r.__dict__ for r in records],
                            "rng": _rng_states(),
                            "ranks_rng": ranks_rng,
                            # the generators that decide the next epoch's order and seeds
                            "loader_rng": loader_random_state(train_loader)[0],
                        },
                    )
            if isinstance(watcher, GradientMonitor):
                report = watcher.report()
    except RuntimeError as e:
        # DDP's own message for a parameter without gradient on a rank gives indices, not
        # names; the monitor saw which parameter it was
        if is_distributed() and _DDP_UNUSED in str(e) and isinstance(watch, GradientMonitor):
            raise _unused_parameter_error(watch, e) from e
        raise
    if report is not None and writer is not None and is_main_process():
        report.log_to(writer)
    return History(
        epochs=tuple(records),
        gradient_report=report,
        checkpoint=written
        or (str(checkpoint_path) if checkpoint_path and checkpoint_path.exists() else None),
        resumed_from=start_epoch,
    )


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    clip_grad_norm: float | None,
) -> int:
    """One optimizer step (unscale, clip, step, update the scale, clear the gradients)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return 1


def _all_reduced(totals: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return totals
    backend_device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    summed = totals.to(backend_device, copy=True)
    dist.all_reduce(summed)
    released([summed])  # see released(): no abort at exit if this was the last collective
    return summed.cpu()


def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    device: torch.device,
    non_blocking: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[float, float | None]:
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            inputs, targets = _batch(batch, device, non_blocking)
            with autocast():
                outputs = _call(model, inputs)
                loss = loss_fn(outputs, targets)
            count = targets.shape[0] if targets.dim() else 1
            totals[0] += float(loss) * count
            totals[2] += count
            correct = _correct(outputs, targets)
            if correct is not None:
                totals[1] += correct
                totals[3] += count
    totals = _all_reduced(totals)
    if not totals[2]:
        raise TorchscopeError("val_loader yielded no batches")
    return float(totals[0] / totals[2]), (float(totals[1] / totals[3]) if totals[3] else None)


def _log_epoch(writer: Any, record: EpochRecord) -> None:
    writer.add_scalar("train/loss", record.train_loss, record.epoch)
    if record.train_accuracy is not None:
        writer.add_scalar("train/accuracy", record.train_accuracy, record.epoch)
    if record.val_loss is not None:
        writer.add_scalar("val/loss", record.val_loss, record.epoch)
    if record.val_accuracy is not None:
        writer.add_scalar("val/accuracy", record.val_accuracy, record.epoch)
    writer.add_scalar("train/lr", record.lr, record.epoch)
    writer.add_scalar("train/samples_per_second", record.samples_per_second, record.epoch)
    if not math.isfinite(record.train_loss):
        writer.add_text(
            "train/warning", f"epoch {record.epoch}: the training loss is {record.train_loss}"
        )
