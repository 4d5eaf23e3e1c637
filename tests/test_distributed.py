"""DistributedDataParallel on 2 CPU processes (gloo): fit, the gradient monitor's merged report,
summary of the wrapped model, and `torchscope demo --nproc 2`.

The multi-process scenarios run once, in one pair of processes started by
``torch.multiprocessing.spawn`` (each process pays for importing torch); each rank saves what
it saw and the tests compare the ranks.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import torchscope
from torchscope import distributed
from torchscope.collect.freezing import freeze
from torchscope.collect.gradients import GradientMonitor
from torchscope.collect.gradients.ranks import RankView as _RankView
from torchscope.collect.gradients.ranks import merge_ranks as _merge_ranks
from torchscope.errors import TorchscopeError
from torchscope.models import LeNet
from torchscope.records import Finding, GradientReport
from torchscope.training import CHECKPOINT_NAME, fit

from .ddp_jobs import RankBranch

WORLD = 2
STABLE_METRICS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


# -- what each rank runs -------------------------------------------------------------------------


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))


def _fit_on_ranks(rank: int, folder: Path) -> dict[str, Any]:
    """fit under DDP, then fine-tuning with the first layer frozen (a second DDP wrapper)."""
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = fit(
        model,
        DataLoader(_data(), batch_size=16, shuffle=True),
        val_loader=DataLoader(_data(32, seed=1), batch_size=16),
        loss_fn=F.cross_entropy,
        optimizer=optimizer,
        epochs=2,
        checkpoint_dir=folder / f"checkpoints-rank{rank}",
        progress=False,
    )
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    finetune_optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    frozen = freeze(model, "0", optimizer=finetune_optimizer)
    finetune = fit(
        model,
        DataLoader(_data(), batch_size=16, shuffle=True),
        loss_fn=F.cross_entropy,
        optimizer=finetune_optimizer,
        epochs=1,
        progress=False,
    )
    assert history.gradient_report is not None and finetune.gradient_report is not None
    return {
        "trained": trained,
        "finetuned": {k: v.clone() for k, v in model.state_dict().items()},
        "frozen": frozen,
        "metrics": [{k: getattr(r, k) for k in STABLE_METRICS} for r in history.epochs],
        "report": history.gradient_report.to_dict(),
        "finetune_report": finetune.gradient_report.to_dict(),
        "wrote": sorted(p.name for p in (folder / f"checkpoints-rank{rank}").glob("*")),
    }


def _resume_on_ranks(rank: int, folder: Path) -> bool:
    """3 epochs straight against 1 epoch, then a resumed run to 3, under DDP with dropout
    (whose masks differ per rank) and a DistributedSampler: bit-identical weights."""

    def run(where: Path, epochs: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(100 + rank)  # each rank its own stream, as torchrun's processes
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        fit(
            model,
            DataLoader(_data(), batch_size=16, shuffle=True),
            loss_fn=F.cross_entropy,
            optimizer=optimizer,
            epochs=epochs,
            checkpoint_dir=where,
            resume=True,
            progress=False,
            monitor=False,
        )
        dist.barrier()  # rank 0's checkpoint is written before any rank reads it
        return {k: v.clone() for k, v in model.state_dict().items()}

    straight = run(folder / "resume-straight", 3)
    run(folder / "resume-split", 1)
    resumed = run(folder / "resume-split", 3)
    return all(torch.equal(v, resumed[k]) for k, v in straight.items())


def _branch_on_ranks(*, find_unused_parameters: bool) -> tuple[GradientReport, str | None]:
    torch.manual_seed(0)
    model = RankBranch()
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    error = None
    with GradientMonitor(ddp, optimizer) as monitor:
        try:
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(ddp(torch.randn(8, 6)), torch.randint(0, 2, (8,))).backward()
                optimizer.step()
        except RuntimeError as e:  # DDP without find_unused_parameters: see report()
            error = str(e)
    return monitor.report(gather=error is None), error


def _summary_on_ranks() -> dict[str, Any]:
    model = LeNet()
    ddp = nn.parallel.DistributedDataParallel(model)
    wrapped = torchscope.summary(ddp, input_size=(2, 1, 28, 28))
    bare = torchscope.summary(model, input_size=(2, 1, 28, 28))
    hooks_left = any(m._forward_hooks or m._forward_pre_hooks for m in ddp.modules())
    # DDP still trains after a summary ran the module behind its back
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        ddp(torch.randn(4, 1, 28, 28)).sum().backward()
        optimizer.step()
    return {
        "wrapped_total": wrapped.total_params,
        "bare_total": bare.total_params,
        "same_table": str(wrapped) == str(bare),
        "hooks_left": hooks_left,
    }


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two processes on a small machine
    out = Path(folder)
    results: dict[str, Any] = {}
    with distributed.process_group(backend="gloo", timeout=datetime.timedelta(seconds=60)) as info:
        results["info"] = (info.rank, info.world_size, info.backend, str(info.device))
        results["fit"] = _fit_on_ranks(rank, out)
        results["resume"] = _resume_on_ranks(rank, out)
        report, _ = _branch_on_ranks(find_unused_parameters=True)
        results["branch"] = report.to_dict()
        results["summary"] = _summary_on_ranks()
        # last: it leaves the ranks out of step (rank 0 waits in an all-reduce that rank 1
        # never joins, until rank 1 leaves the group)
        local, error = _branch_on_ranks(find_unused_parameters=False)
        results["no_unused_detection"] = (local.to_dict(), error)
    torch.save(results, out / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# -- fit -----------------------------------------------------------------------------------------


def test_process_group_comes_from_the_environment(ranks):
    assert [r["info"] for r in ranks] == [(0, 2, "gloo", "cpu"), (1, 2, "gloo", "cpu")]


def test_fit_under_ddp_trains_the_same_weights_on_every_rank(ranks):
    first, second = (r["fit"] for r in ranks)
    for key, value in first["trained"].items():
        assert torch.equal(value, second["trained"][key]), key
    assert first["metrics"] == second["metrics"]
    assert first["metrics"][-1]["train_loss"] < first["metrics"][0]["train_loss"]
    assert first["report"] == second["report"]
    assert not first["report"]["findings"]


def test_resume_under_ddp_is_bit_exact_on_every_rank(ranks):
    # each rank resumes with its own RNG state (gathered into rank 0's checkpoint)
    assert [r["resume"] for r in ranks] == [True, True]


def test_only_rank_0_writes_checkpoints(ranks):
    assert ranks[0]["fit"]["wrote"] == [CHECKPOINT_NAME]
    assert ranks[1]["fit"]["wrote"] == []


def test_fine_tuning_with_frozen_layers_under_ddp(ranks):
    first, second = (r["fit"] for r in ranks)
    assert first["frozen"] == ("0.weight", "0.bias")
    for key, value in first["finetuned"].items():
        assert torch.equal(value, second["finetuned"][key]), key
        if key.startswith("0."):
            assert torch.equal(value, first["trained"][key]), key
        else:
            assert not torch.equal(value, first["trained"][key]), key
    assert first["finetune_report"] == second["finetune_report"]
    assert not first["finetune_report"]["findings"]


# -- the gradient monitor across ranks -----------------------------------------------------------


def test_parameter_unused_on_one_rank_is_named_on_every_rank(ranks):
    first, second = (r["branch"] for r in ranks)
    assert first == second
    named = {f["where"]: f for f in first["findings"]}
    assert set(named) == {"extra.weight", "extra.bias"}
    for finding in named.values():
        assert finding["kind"] == "no_grad"
        assert "no gradient on rank 1 of 2 but did on rank 0 of 2" in finding["message"]
        assert "Expected to have finished reduction" in finding["message"]
    assert GradientReport.from_dict(first).to_dict() == first  # the JSON round trip holds


def test_without_unused_detection_the_failing_rank_names_the_parameter(ranks):
    (_, error0), (report1, error1) = (r["no_unused_detection"] for r in ranks)
    assert error1 is not None and "Expected to have finished reduction" in error1
    assert error0 is not None  # rank 0 waited in an all-reduce that never completed
    no_grad = {f["where"] for f in report1["findings"] if f["kind"] == "no_grad"}
    assert no_grad == {"extra.weight", "extra.bias"}


def _finding(kind: str, where: str, step: int | None = 0, severity: str = "error") -> Finding:
    return Finding(kind, severity, where, step, None, None, f"{kind} at {where}")


def _view(findings: list[Finding], losses: tuple[float, ...], received: dict[str, int]) -> Any:
    report = GradientReport(
        findings=tuple(findings), parameters=(), steps=2, backward_passes=2, losses=losses
    )
    return _RankView(report, 2, received, dict.fromkeys(received, True))


def test_merging_lists_each_finding_once_with_its_ranks():
    everywhere = _finding("exploding", "fc.weight", severity="warning")
    views = [
        _view([everywhere, _finding("eval_mode", "<model>", 1)], (1.0, 3.0), {"fc.weight": 2}),
        _view([everywhere], (2.0, 5.0), {"fc.weight": 2}),
        _view([everywhere], (3.0, 7.0), {"fc.weight": 2}),
    ]
    merged = _merge_ranks(views)
    assert [(f.kind, f.message) for f in merged.findings] == [
        ("eval_mode", "eval_mode at <model> (seen on rank 0 of 3)"),
        ("exploding", "exploding at fc.weight (seen on every rank)"),
    ]
    assert merged.losses == (2.0, 5.0)
    assert _merge_ranks(views[::-1]).findings[0].message.endswith("(seen on rank 2 of 3)")


def test_a_nan_from_one_rank_is_not_blamed_on_the_gradients_of_the_others():
    views = [
        _view([_finding("nan_grad", "fc.weight", 3)], (1.0,), {"fc.weight": 1}),
        _view([_finding("nonfinite_activation", "conv", 3)], (math.nan,), {"fc.weight": 1}),
    ]
    merged = _merge_ranks(views)
    assert [f.kind for f in merged.findings] == ["nonfinite_activation"]
    assert "seen on rank 1 of 2; DDP's all-reduce carried it" in merged.findings[0].message
    earlier = [_view([_finding("nan_grad", "fc.weight", 1)], (1.0,), {}), views[1]]
    assert [f.kind for f in _merge_ranks(earlier).findings] == ["nan_grad", "nonfinite_activation"]


def test_gathering_needs_a_process_group():
    model = _mlp()
    with GradientMonitor(model) as monitor:
        model(torch.randn(2, 10)).sum().backward()
    with pytest.raises(TorchscopeError, match="init_process_group"):
        monitor.report(gather=True)


# -- summary of the wrapped model ----------------------------------------------------------------


def test_summary_of_the_ddp_wrapped_model_is_the_module_summary(ranks):
    for rank in ranks:
        result = rank["summary"]
        assert result["wrapped_total"] == result["bare_total"] == 61_706
        assert result["same_table"] and not result["hooks_left"]


# -- the helpers and the command -----------------------------------------------------------------


def test_init_from_env_outside_torchrun_says_how_to_start(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun()
    with pytest.raises(TorchscopeError, match="torchrun --standalone"):
        distributed.init_from_env()
    with pytest.raises(ValueError, match="nproc"):
        distributed.launch("torchscope", 0)


def test_demo_command_with_two_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    command = [sys.executable, "-m", "torchscope", "demo", "--nproc", "2", "--epochs", "1"]
    done = subprocess.run(
        [*command, "--no-progress", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("torchscope demo: LeNet") == 1  # rank 1 stays quiet
    assert "DistributedDataParallel over 2 processes (gloo)" in done.stdout
    assert "frozen weights bit-identical after fine-tuning: yes" in done.stdout
    assert "Total params: 61,706" in (tmp_path / "summary.txt").read_text()
    assert "healthy" in (tmp_path / "health.txt").read_text()
    for name in ("graph.svg", "grad_flow.png", "timing.txt", "checkpoints/last.pt"):
        assert (tmp_path / name).exists(), name
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_ddp_unused_parameter_error_names_the_parameters(tmp_path):
    """DDP's own error gives parameter indices; fit names them, and the CLI shows no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    command = [sys.executable, "-m", "torchscope", "demo", "--nproc", "2", "--epochs", "1"]
    done = subprocess.run(
        [*command, "--no-progress", "--inject-bug", "detach", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2
    assert "received no gradient in the previous step" in done.stderr
    assert "features.0.weight" in done.stderr  # named, where DDP says only indices
    assert "Traceback" not in done.stderr


# -- fit's DDP options, under torchrun -----------------------------------------------------------


def _torchrun(job: str, folder: Path, *, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 -m tests.ddp_jobs JOB FOLDER`` over gloo."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    options = ["--nproc_per_node", str(WORLD), "--monitor-interval", "0.1"]
    return subprocess.run(
        [*torchrun, *options, "-m", "tests.ddp_jobs", job, str(folder)],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def fit_options(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("fit-options")
    done = _torchrun("fit_options", folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_fit_uses_a_model_the_user_wrapped_in_ddp_as_it_is(fit_options):
    """Wrapped a second time, the outer DDP (without find_unused_parameters) stopped on the
    parameter the user's own DDP was told to skip."""
    first, second = (rank["own"] for rank in fit_options)
    assert first["still_wrapping"] and not first["nested_ddp"]
    assert first["steps"] == second["steps"] == 2  # 64 samples, 32 per rank, batches of 16
    for key, value in first["trained"].items():
        assert torch.equal(value, second["trained"][key]), key  # one model, trained by DDP
    assert not torch.equal(first["trained"]["head.weight"], first["initial"]["head.weight"])
    assert first["no_grad"] == second["no_grad"] == ["extra.bias", "extra.weight"]
    # the checkpoint holds the module's own names, as for a model fit wrapped itself
    assert first["checkpoint_keys"] == sorted(first["trained"])


def test_ddp_kwargs_reach_distributed_data_parallel(fit_options):
    first, second = (rank["kwargs"] for rank in fit_options)
    assert first["steps"] == second["steps"] == 2
    for key, value in first["trained"].items():
        assert torch.equal(value, second["trained"][key]), key
    assert first["no_grad"] == ["extra.bias", "extra.weight"]


def test_the_unused_parameter_error_names_what_works(fit_options):
    kind, message = fit_options[1]["neither"]  # the rank that left `extra` out
    assert kind == "TorchscopeError"
    assert "extra.bias, extra.weight" in message
    assert 'fit(..., ddp_kwargs={"find_unused_parameters": True})' in message
    assert "DistributedDataParallel(model, find_unused_parameters=True)" in message
    assert fit_options[0]["neither"] is not None  # rank 0 waited for it in an all-reduce


# -- exiting cleanly -------------------------------------------------------------------------------


def test_the_monitor_leaves_no_tensor_in_the_backends_hands(monkeypatch):
    """A blocking gloo collective can return before gloo's worker thread lets go of its
    tensors (right after dist.all_gather, 30% of the time on this machine). If that worker frees
    a Python-made tensor during interpreter shutdown it takes the GIL there and the job aborts
    ("terminate called without an active exception"). report() must return only when every
    tensor it handed to the backend is its own again."""
    handed: list[torch.Tensor] = []

    def recording(all_gather: Any) -> Any:
        def gather(outputs: list[torch.Tensor], tensor: torch.Tensor, **kwargs: Any) -> Any:
            handed.extend([*outputs, tensor])
            return all_gather(outputs, tensor, **kwargs)

        return gather

    c10d = dist.distributed_c10d
    monkeypatch.setattr(dist, "all_gather", recording(dist.all_gather))
    monkeypatch.setattr(c10d, "all_gather", recording(c10d.all_gather))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = _mlp()
        with GradientMonitor(model) as monitor:
            model(torch.randn(2, 10)).sum().backward()
        still_held = 0
        for _ in range(20):
            handed.clear()
            assert monitor.report(gather=True).backward_passes == 1
            assert handed
            still_held += any(t._use_count() > 1 for t in handed)
        assert still_held == 0
    finally:
        dist.destroy_process_group()


def test_two_rank_monitored_job_exits_cleanly_every_time(tmp_path):
    """The two-rank job of issue 15 part 6, ten times, each in two fresh processes that end
    through the normal interpreter exit: exit status 0 and no abort, every time."""
    runs = 10
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "tests.ddp_jobs", "repeat_monitored_loop", str(tmp_path), str(runs)],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": 4 steps, 0 findings") == runs * WORLD
    for run in range(runs):
        for rank in range(WORLD):
            status = int((tmp_path / f"run{run}-rank{rank}.status").read_text())
            stderr = (tmp_path / f"run{run}-rank{rank}.err").read_text()
            assert "terminate called" not in stderr, (run, rank, stderr)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (run, rank, stderr)
