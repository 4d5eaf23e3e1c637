"""Two-rank jobs that tests/test_distributed.py starts in fresh processes.

``torchrun --standalone --nproc_per_node 2 -m tests.ddp_jobs fit_options OUT``: each rank runs
:func:`fit_options` and saves what it saw to ``OUT/rank{N}.pt``; the test compares the ranks.
``python -m tests.ddp_jobs repeat_monitored_loop OUT RUNS``: :func:`repeat_monitored_loop`.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from torchscope import distributed
from torchscope.collect.gradients import GradientMonitor
from torchscope.errors import TorchscopeError
from torchscope.training import CHECKPOINT_NAME, fit, load_checkpoint


class RankBranch(nn.Module):
    """Rank 0 adds a second head to the output; the other ranks never call it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 4)
        self.extra = nn.Linear(4, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.body(x))
        out = self.head(features)
        if dist.get_rank() == 0:
            out = out + self.extra(features)
        return out


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def _fit(model: nn.Module, **kwargs: Any) -> dict[str, Any]:
    module = model.module if isinstance(model, DistributedDataParallel) else model
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    history = fit(
        model,
        _loader(),
        loss_fn=F.cross_entropy,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        epochs=1,
        progress=False,
        **kwargs,
    )
    assert history.gradient_report is not None
    return {
        "initial": initial,
        "trained": {k: v.clone() for k, v in module.state_dict().items()},
        "steps": history.epochs[-1].optimizer_steps,
        "no_grad": sorted(f.where for f in history.gradient_report.findings if f.kind == "no_grad"),
    }


def fit_options(rank: int, out: Path) -> dict[str, Any]:
    """fit with the user's own DDP model, with ``ddp_kwargs``, and with neither (last: the
    failure leaves the ranks out of step)."""
    results: dict[str, Any] = {}
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = RankBranch()
    own = DistributedDataParallel(model, find_unused_parameters=True)
    results["own"] = _fit(own, checkpoint_dir=out / f"own-rank{rank}")
    results["own"]["still_wrapping"] = own.module is model
    results["own"]["nested_ddp"] = isinstance(own.module, DistributedDataParallel)
    if rank == 0:
        results["own"]["checkpoint_keys"] = sorted(
            load_checkpoint(out / f"own-rank{rank}" / CHECKPOINT_NAME)["model"]
        )
    torch.manual_seed(rank)
    results["kwargs"] = _fit(RankBranch(), ddp_kwargs={"find_unused_parameters": True})
    try:
        _fit(RankBranch())
        results["neither"] = None
    except (TorchscopeError, RuntimeError) as e:
        results["neither"] = (type(e).__name__, str(e))
    return results


def monitored_loop(rank: int, port: int) -> None:
    """A plain DDP loop inside a GradientMonitor, its gathered report last, and no
    destroy_process_group: the script most users write (issue 15 part 6 aborted at its exit)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(ddp, optimizer) as monitor:
        for x, y in _loader():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
    report = monitor.report()
    print(f"rank {rank}: {report.steps} steps, {len(report.findings)} findings", flush=True)


def repeat_monitored_loop(runs: int, folder: str) -> None:
    """Run the two-rank job ``runs`` times, one pair of fresh processes each, and write each
    process's exit status and stderr to ``folder``.

    The processes are forked from this one after torch is imported (and before any thread or
    process group exists), so a run costs its work and its interpreter shutdown, not an
    import of torch; each child leaves through the normal interpreter exit, where the abort
    happened.
    """
    import os
    import socket

    import torch._dynamo  # noqa: F401  DDP imports it lazily: once here, not in every child

    out = Path(folder)
    for run in range(runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        children = {}
        for rank in range(2):
            pid = os.fork()
            if pid == 0:  # the child: run the job, then exit like any script does
                stderr = os.open(out / f"run{run}-rank{rank}.err", os.O_WRONLY | os.O_CREAT)
                os.dup2(stderr, 2)
                monitored_loop(rank, port)
                sys.exit(0)
            children[pid] = rank
        for pid, rank in children.items():
            _, status = os.waitpid(pid, 0)
            (out / f"run{run}-rank{rank}.status").write_text(str(status))


def main(job: str, folder: str, *args: str) -> None:
    if job == "repeat_monitored_loop":
        repeat_monitored_loop(int(args[0]), folder)
        return
    torch.set_num_threads(1)  # two processes on a small machine
    out = Path(folder)
    with distributed.process_group(backend="gloo", timeout=datetime.timedelta(seconds=60)) as info:
        results = fit_options(info.rank, out)
    torch.save(results, out / f"rank{info.rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
