"""Running on several processes: start them the way ``torchrun`` does, and set up the process
group from the environment ``torchrun`` gives each of them.

Example, a script ``train.py`` started with ``torchscope.distributed.launch("train.py", 2)``
or ``torchrun --standalone --nproc-per-node 2 train.py``::

    with torchscope.distributed.process_group() as info:
        history = torchscope.training.fit(model, loader, ...)  # wraps the model in DDP
        if info.rank == 0:
            print(history)

The backend is gloo on the CPU and nccl when CUDA is available (each process then uses the
GPU of its local rank).
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from torchscope.errors import TorchscopeError

__all__ = [
    "ProcessInfo",
    "all_gather_objects",
    "cleanup",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "is_sharded",
    "launch",
    "launched_by_torchrun",
    "load_sharded",
    "process_group",
    "save_sharded",
]

#: What ``torchrun`` sets in each worker's environment and ``init_process_group`` reads.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the group.

    Attributes:
        rank: this process's rank, 0 to ``world_size - 1``; rank 0 writes and prints.
        local_rank: its rank on this machine (the GPU it uses under nccl).
        world_size: processes in the group.
        backend: ``"gloo"`` or ``"nccl"``.
        device: where this process should put its model.
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device


def launched_by_torchrun() -> bool:
    """True in a process ``torchrun`` (or :func:`launch`) started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and its default process group exists."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True unless ``torch.distributed`` is initialised and this is not rank 0."""
    return not is_distributed() or dist.get_rank() == 0


def init_from_env(
    *, backend: str | None = None, timeout: datetime.timedelta | None = None
) -> ProcessInfo:
    """Initialise the default process group from ``torchrun``'s environment; its
    :class:`ProcessInfo`. A group that is already initialised is kept as it is.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
        timeout: how long a collective waits for the other ranks (torch's default if None).
    """
    if not dist.is_available():
        raise TorchscopeError("this PyTorch build has no torch.distributed support")
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing and not dist.is_initialized():
        raise TorchscopeError(
            f"the environment lacks {', '.join(missing)}: this process was not started by "
            "torchrun. Start it with `torchrun --standalone --nproc-per-node N ...` or "
            "torchscope.distributed.launch(...)"
        )
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; choose from {BACKENDS}")
    if dist.is_initialized():
        chosen = str(dist.get_backend())
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    else:
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        local_rank = int(os.environ["LOCAL_RANK"])
        if chosen == "nccl":
            # before the group exists: nccl binds each process to the current device
            torch.cuda.set_device(local_rank)
        if timeout is None:
            dist.init_process_group(backend=chosen, init_method="env://")
        else:
            dist.init_process_group(backend=chosen, init_method="env://", timeout=timeout)
    device = torch.device("cuda", local_rank) if chosen == "nccl" else torch.device("cpu")
    return ProcessInfo(
        rank=dist.get_rank(),
        local_rank=local_rank,
        world_size=dist.get_world_size(),
        backend=chosen,
        device=device,
    )


def _backend_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


#: How long :func:`released` waits for the backend to let go of a finished collective's tensors.
RELEASE_WAIT_S = 5.0


def released(tensors: Sequence[torch.Tensor], *, wait_s: float = RELEASE_WAIT_S) -> None:
    """Wait until the process group's worker threads hold none of ``tensors`` any more.

    A blocking collective returns as soon as its work is marked done; gloo's worker thread
    drops its own reference to the work (and to the tensors in it) a moment later. A tensor
    created from Python whose last reference goes on that thread needs the GIL to free its
    Python object; if the interpreter is already shutting down (the collective was the last
    thing the script did), taking the GIL ends the thread inside C++ and the process aborts
    with "terminate called without an active exception" and a non-zero exit, after a
    successful run. Waiting here makes the tensors die on the calling thread instead.
    ``tensors`` must have no views (each one's only other owner is the backend).
    """
    deadline = time.monotonic() + wait_s
    while any(t._use_count() > 1 for t in tensors):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:  # never hang a job over it
            return
        time.sleep(0.0005)


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; a collective that every rank calls.

    ``dist.all_gather_object`` without its exit hazard: the tensors handed to the backend are
    :func:`released` before this returns, so a job that gathers last and then exits cannot
    abort at interpreter shutdown. Only for values from the job's own ranks (pickle).
    """
    world = dist.get_world_size()
    device = _backend_device()
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    padded = padded.to(device)
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded)
    released([size, *sizes, padded, *chunks])
    return [
        pickle.loads(bytes(chunk.cpu().untyped_storage())[:length])
        for chunk, length in zip(chunks, lengths, strict=True)
    ]


def cleanup() -> None:
    """Destroy the default process group, if there is one."""
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def process_group(
    *, backend: str | None = None, timeout: datetime.timedelta | None = None
) -> Iterator[ProcessInfo]:
    """:func:`init_from_env` on entry; on exit, also on exception, :func:`cleanup` of the
    group it created (a group that existed before is left alone)."""
    created = not is_distributed()
    info = init_from_env(backend=backend, timeout=timeout)
    try:
        yield info
    finally:
        if created:
            cleanup()


def launch(target: str, nproc: int, args: Sequence[str] = ()) -> int:
    """Run ``target`` in ``nproc`` processes on this machine, as ``torchrun --standalone``
    does; the exit status (0 when every process succeeded).

    Args:
        target: a Python file (``train.py``) or a module run with ``-m`` (``torchscope``).
        nproc: how many processes.
        args: the command-line arguments each process gets.

    Each process sees ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (a free port) and calls :func:`init_from_env`. ``OMP_NUM_THREADS``, unless
    set, is the CPU count divided by ``nproc`` so that the processes do not compete for cores.
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc must be a whole number >= 1, got {nproc!r}")
    if isinstance(args, str):
        raise TypeError("args must be a list of arguments, not one string")
    # imported here: the elastic launcher is only needed to start processes, and this module
    # is imported by the monitor and the training loop
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    command = (
        [target, *args]
        if target.endswith(".py") or os.path.sep in target
        else [
            "-m",
            target,
            *args,
        ]
    )
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"torchscope-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
        max_restarts=0,
        monitor_interval=0.1,
    )
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    elastic_logger = logging.getLogger("torch.distributed.elastic")
    level = elastic_logger.level
    # the workers print their own errors; the launcher's report of the same failure is a
    # traceback of its own machinery, which a user of the CLI must not get
    elastic_logger.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)(*command)
        return 0
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        return next((code for code in codes if code), 1)
    finally:
        elastic_logger.setLevel(level)
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)


# -- sharded models (FSDP2) ----------------------------------------------------------------------

#: the folder, beside ``last.pt``, that holds a sharded model's checkpoint (one file per rank)
SHARDED_CHECKPOINT = "last-sharded"


def is_sharded(model: torch.nn.Module) -> bool:
    """Some parameter is a ``DTensor`` (FSDP2's ``fully_shard``, or a tensor-parallel plan)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def save_sharded(
    folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> str:
    """Save a sharded model and its optimizer with ``torch.distributed.checkpoint``: each rank
    writes its own shards, into ``folder/last-sharded``. A collective: every rank calls it.
    Written to a temporary folder first and renamed by rank 0 once every rank is done, so an
    interrupted save leaves the previous checkpoint whole."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = os.path.join(os.fspath(folder), SHARDED_CHECKPOINT)
    partial = final + ".partial"
    if dist.get_rank() == 0:
        _remove_tree(partial)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=partial)
    dist.barrier()
    if dist.get_rank() == 0:
        _remove_tree(final)
        os.replace(partial, final)
    dist.barrier()
    return final


def load_sharded(
    folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load what :func:`save_sharded` wrote into ``model`` and ``optimizer`` (sharded as they
    were saved: the same world size and mesh). A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=os.path.join(os.fspath(folder), SHARDED_CHECKPOINT))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def _remove_tree(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path)
