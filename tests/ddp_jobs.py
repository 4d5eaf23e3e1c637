"""Scripts that tests/test_distributed.py starts with ``torchrun --standalone --nproc_per_node 2``.

``python -m tests.ddp_jobs JOB OUT_FOLDER``: each rank runs JOB and saves what it saw to
``OUT_FOLDER/rank{N}.pt``; the test compares the ranks. Not collected by pytest (no ``test_``
prefix): these run only inside the processes torchrun starts.
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
from torchscope.errors import TorchscopeError
from torchscope.gradients import GradientMonitor
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


def monitored_loop(rank: int, out: Path) -> dict[str, Any]:
    """A plain DDP loop inside a GradientMonitor, then the process ends (the abort of
    issue 15 part 6 came at interpreter exit)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(ddp, optimizer) as monitor:
        for x, y in _loader():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x), y).backward()
            optimizer.step()
    return {"steps": monitor.report().steps}


JOBS = {"fit_options": fit_options, "monitored_loop": monitored_loop}


def main(job: str, folder: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine
    out = Path(folder)
    with distributed.process_group(backend="gloo", timeout=datetime.timedelta(seconds=60)) as info:
        results = JOBS[job](info.rank, out)
    torch.save(results, out / f"rank{info.rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
