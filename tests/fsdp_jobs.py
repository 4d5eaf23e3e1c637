"""FSDP2 (``fully_shard``) scenarios, run on 2 CPU processes (gloo) by ``torchrun``:
``python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.fsdp_jobs OUT``.

Each rank runs every scenario, records what the monitor reported next to what PyTorch says
(the full tensors, all-gathered by the test itself: the oracle), and saves it to
``OUT/rank{rank}.pt``; tests/test_fsdp.py compares.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

import torchscope
from torchscope import distributed
from torchscope.collect.freezing import freeze, unfreeze


class Net(nn.Module):
    """Three layers, each its own FSDP2 unit; ``head`` has 3 outputs so that its rows shard
    unevenly (2 and 1) and its bias of 3 too; ``detach`` cuts ``a`` off the loss."""

    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if self.detach:
            h = h.detach()
        return self.head(torch.relu(self.b(h)))


def _sharded(model: nn.Module) -> nn.Module:
    for child in model.children():
        fully_shard(child)
    fully_shard(model)
    return model


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
    x = torch.randn(32, 8, generator=generator)
    return x, x[:, :3].argmax(dim=1)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def healthy(rank: int) -> dict[str, Any]:
    """A healthy loop; per step, the full gradients' and weights' norms, gathered here."""
    torch.manual_seed(0)
    model = _sharded(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    x, y = _data(rank)
    oracle: dict[str, list[tuple[float, float, float, float]]] = {}
    with torchscope.GradientMonitor(model, optimizer) as monitor:
        for _ in range(12):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            before = {n: _full(p.detach()).clone() for n, p in model.named_parameters()}
            grads = {n: _full(p.grad) for n, p in model.named_parameters()}
            optimizer.step()
            for name, p in model.named_parameters():
                g = grads[name]
                change = torch.linalg.vector_norm(before[name] - _full(p.detach()))
                oracle.setdefault(name, []).append(
                    (
                        float(g.abs().sum()),
                        float(torch.linalg.vector_norm(g)),
                        float(g.abs().max()),
                        float(change / torch.linalg.vector_norm(before[name])),
                    )
                )
    return {"report": monitor.report().to_dict(), "oracle": oracle}


class Wide(Net):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 96), nn.Linear(96, 96), nn.Linear(96, 3)


def sampled(rank: int) -> dict[str, Any]:
    """A healthy loop whose monitor copies an eighth of this rank's shards (max_copy_bytes);
    per step, how far each whole parameter moved, gathered here."""
    torch.manual_seed(0)
    model = _sharded(Wide())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    x, y = _data(rank)
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    ratios: dict[str, list[float]] = {}
    with torchscope.GradientMonitor(model, optimizer, max_copy_bytes=local // 8) as monitor:
        for _ in range(6):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            before = {n: _full(p.detach()).clone() for n, p in model.named_parameters()}
            optimizer.step()
            for name, p in model.named_parameters():
                change = torch.linalg.vector_norm(before[name] - _full(p.detach()))
                ratios.setdefault(name, []).append(
                    float(change / torch.linalg.vector_norm(before[name]))
                )
        held = sum(t.numel() * t.element_size() for t in monitor._snapshots.values())
    return {
        "report": monitor.report().to_dict(),
        "oracle": ratios,
        "held": held,
        "local": local,
        "sampled": [e.name for e in monitor._params if e.sampled],
    }


def _kinds(report: torchscope.GradientReport) -> list[tuple[str, str, str]]:
    return sorted((f.severity, f.kind, f.where) for f in report.findings)


def _maybe_sharded(model: nn.Module, shard: bool) -> nn.Module:
    return _sharded(model) if shard else model


def _loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    steps: int,
    shard: bool,
    before_step: Callable[[int], None] = lambda i: None,
    set_to_none: bool | None = True,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> list[tuple[str, str, str]]:
    x, y = _data(rank)
    with torchscope.GradientMonitor(model, optimizer) as monitor:
        for i in range(steps):
            before_step(i)
            if set_to_none is not None:
                optimizer.zero_grad(set_to_none=set_to_none)
            loss(model(x), y).backward()
            optimizer.step()
    # the unsharded twin runs on this rank alone: its report is not gathered
    return _kinds(monitor.report(gather=shard))


# -- bugs (and correct twins): fn(rank, shard) -> findings; run sharded and as one process ---


def detached(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    model = _maybe_sharded(Net(detach=True), shard)
    return _loop(model, torch.optim.SGD(model.parameters(), lr=0.1), rank, 6, shard)


def frozen_but_moving(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    """``requires_grad_(False)`` half way, still in the optimizer, gradients zeroed in place:
    momentum keeps moving the frozen shards."""
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def freeze_a(i: int) -> None:
        if i == 3:
            for p in model.a.parameters():
                p.requires_grad_(False)

    return _loop(model, optimizer, rank, 8, shard, freeze_a, set_to_none=False)


def never_zeroed(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return _loop(model, optimizer, rank, 6, shard, set_to_none=None)


def zeroed_in_place(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    """The correct twin of ``never_zeroed`` with ``zero_grad(set_to_none=False)``."""
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    return _loop(model, optimizer, rank, 12, shard, set_to_none=False)


def softmax_into_cross_entropy(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.softmax(dim=1), y)

    return _loop(model, optimizer, rank, 6, shard, loss=loss)


def learning_rate_zero(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    """The head in a parameter group of its own whose lr is 0."""
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    optimizer = torch.optim.SGD([{"params": rest}, {"params": head, "lr": 0.0}], lr=0.2)
    return _loop(model, optimizer, rank, 8, shard)


def learning_rate_far_too_small(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    """lr=1e-6: the steps move the weights by about 1e-7 of their norm (judged on the
    combined norms of the shards)."""
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    return _loop(model, torch.optim.SGD(model.parameters(), lr=1e-6), rank, 40, shard)


def learning_rate_fine(rank: int, shard: bool) -> list[tuple[str, str, str]]:
    """The correct twin of ``learning_rate_far_too_small``."""
    torch.manual_seed(0)
    model = _maybe_sharded(Net(), shard)
    return _loop(model, torch.optim.SGD(model.parameters(), lr=0.2), rank, 40, shard)


BUGS: dict[str, Callable[[int, bool], list[tuple[str, str, str]]]] = {
    "detached": detached,
    "frozen_but_moving": frozen_but_moving,
    "never_zeroed": never_zeroed,
    "zeroed_in_place": zeroed_in_place,
    "softmax_into_cross_entropy": softmax_into_cross_entropy,
    "learning_rate_zero": learning_rate_zero,
    "learning_rate_far_too_small": learning_rate_far_too_small,
    "learning_rate_fine": learning_rate_fine,
}


def bugs(rank: int) -> dict[str, Any]:
    return {
        name: {"sharded": scenario(rank, True), "single": scenario(rank, False)}
        for name, scenario in BUGS.items()
    }


def _local_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to_local().clone() for n, p in model.named_parameters()}


def freezing(rank: int) -> dict[str, Any]:
    """torchscope.freeze on a sharded model: a whole unit (SGD with momentum and weight
    decay), one parameter of a unit whose other parameter trains (AdamW), then unfreeze."""
    out: dict[str, Any] = {}
    x, y = _data(rank)
    for name, make, mixed in (
        (
            "sgd_unit",
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
            False,
        ),
        ("adamw_mixed", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), True),
    ):
        torch.manual_seed(0)
        model = Net()
        if mixed:  # a and b in the root's unit: a frozen, b training, in one unit
            fully_shard(model.head)
            fully_shard(model)
        else:
            _sharded(model)
        optimizer = make(model.parameters())
        targets = ("a",)

        def steps(n: int, model: nn.Module = model, optimizer: Any = optimizer) -> None:
            for _ in range(n):
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()

        steps(2)
        frozen = freeze(model, *targets, optimizer=optimizer)
        at_freeze = _local_copy(model)
        steps(3)
        after = _local_copy(model)
        report = torchscope.trainable_report(model)
        unfrozen = unfreeze(model, *targets, optimizer=optimizer)
        steps(2)
        later = _local_copy(model)
        out[name] = {
            "frozen": frozen,
            "unfrozen": unfrozen,
            "unchanged": sorted(n for n in at_freeze if torch.equal(at_freeze[n], after[n])),
            "moved_after_unfreeze": sorted(n for n in after if not torch.equal(after[n], later[n])),
            "trainable": (report.trainable_params, report.frozen_params),
        }
    return out


def _momentum(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {
        n: optimizer.state[p]["momentum_buffer"].to_local().clone()
        for n, p in model.named_parameters()
        if "momentum_buffer" in optimizer.state.get(p, {})
    }


def one_shot_check(rank: int) -> dict[str, Any]:
    """check_gradients on a sharded model (no deep copy): the finding, and the user's model,
    gradients, optimizer state and RNG as they were."""
    out: dict[str, Any] = {}
    x, y = _data(rank)
    for name, detach in (("healthy", False), ("detached", True)):
        torch.manual_seed(0)
        model = _sharded(Net(detach=detach))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()  # momentum buffers and gradients the check must leave alone
        values, grads = _local_copy(model), [p.grad for p in model.parameters()]
        momentum = _momentum(model, optimizer)
        rng = torch.get_rng_state()
        report = torchscope.check_gradients(model, x, y, optimizer=optimizer, steps=3)
        out[name] = {
            "findings": _kinds(report),
            "steps": report.steps,
            "values_kept": all(torch.equal(v, _local_copy(model)[n]) for n, v in values.items()),
            "grads_kept": all(
                a is b for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True)
            ),
            "momentum_kept": momentum.keys() == _momentum(model, optimizer).keys()
            and all(torch.equal(v, _momentum(model, optimizer)[n]) for n, v in momentum.items()),
            "rng_kept": torch.equal(rng, torch.get_rng_state()),
            "training": model.training,
        }
    return out


def fit_and_resume(rank: int) -> dict[str, Any]:
    """fit on a sharded model: 2 epochs straight, and 1 epoch then a resumed 2nd from its
    sharded checkpoint; the local shards and the optimizer's state must be bit-identical."""
    from torch.utils.data import DataLoader, TensorDataset

    from torchscope.training import fit

    generator = torch.Generator().manual_seed(7)  # the same data on every rank
    x = torch.randn(96, 8, generator=generator)
    data = TensorDataset(x, x[:, :3].argmax(dim=1))
    folder = Path(sys.argv[1]) / "fit"
    runs: dict[str, Any] = {}
    for name, stops in (("straight", (2,)), ("resumed", (1, 2))):
        for k, epochs in enumerate(stops):
            # a new process would start from a new model: only the checkpoint carries over
            torch.manual_seed(k)
            model = _sharded(Net())
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            history = fit(
                model,
                DataLoader(data, batch_size=16, shuffle=True),
                loss_fn=F.cross_entropy,
                optimizer=optimizer,
                epochs=epochs,
                checkpoint_dir=folder / name,
                resume=True,
                progress=False,
            )
        state = optimizer.state_dict()["state"]
        runs[name] = {
            "values": _local_copy(model),
            "momentum": {k: v["momentum_buffer"].to_local().clone() for k, v in state.items()},
            "findings": _kinds(history.gradient_report) if history.gradient_report else None,
            "resumed_from": history.resumed_from,
            "loss": [r.train_loss for r in history.epochs],
        }
    straight, resumed = runs["straight"], runs["resumed"]
    return {
        "same_weights": all(
            torch.equal(v, resumed["values"][k]) for k, v in straight["values"].items()
        ),
        "same_momentum": straight["momentum"].keys() == resumed["momentum"].keys()
        and all(torch.equal(v, resumed["momentum"][k]) for k, v in straight["momentum"].items()),
        "resumed_from": resumed["resumed_from"],
        "findings": straight["findings"],
        "losses": (straight["loss"], resumed["loss"]),
        "files": sorted(p.name for p in (folder / "resumed").iterdir()),
    }


def tensor_parallel(rank: int) -> dict[str, Any]:
    """Plain DTensor parameters (tensor parallelism: a column-wise then a row-wise Linear,
    whose bias is replicated), trained by ordinary autograd: the figures against the full
    tensors, and three bugs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    generator = torch.Generator().manual_seed(5)  # the same batch on every rank
    x = torch.randn(32, 8, generator=generator)
    y = x[:, :3].argmax(dim=1)
    out: dict[str, Any] = {}
    for name in ("healthy", "detached", "never_zeroed", "zeroed_in_place"):
        torch.manual_seed(0)
        net = nn.Sequential()
        net.a, net.b = nn.Linear(8, 16), nn.Linear(16, 3)
        model = parallelize_module(
            _TwoLayers(net.a, net.b, detach=name == "detached"),
            mesh,
            {"a": ColwiseParallel(), "b": RowwiseParallel()},
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        norms = []
        with torchscope.GradientMonitor(model, optimizer) as monitor:
            for _ in range(6):
                if name != "never_zeroed":
                    optimizer.zero_grad(set_to_none=name != "zeroed_in_place")
                F.cross_entropy(model(x), y).backward()
                norms.append(
                    {
                        n: float(torch.linalg.vector_norm(_full(p.grad)))
                        for n, p in model.named_parameters()
                        if p.grad is not None
                    }
                )
                optimizer.step()
        report = monitor.report()
        out[name] = {
            "findings": _kinds(report),
            "norms": {p.name: p.grad_norm for p in report.parameters},
            "oracle": norms,
        }
    return out


class _TwoLayers(nn.Module):
    def __init__(self, a: nn.Linear, b: nn.Linear, detach: bool) -> None:
        super().__init__()
        self.a, self.b, self.detach = a, b, detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h.detach() if self.detach else h)


SCENARIOS: dict[str, Callable[[int], Any]] = {
    "tensor_parallel": tensor_parallel,
    "fit_and_resume": fit_and_resume,
    "one_shot_check": one_shot_check,
    "healthy": healthy,
    "sampled": sampled,
    "bugs": bugs,
    "freezing": freezing,
}


def main(folder: str) -> None:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with distributed.process_group(backend="gloo") as info:
        for name, scenario in SCENARIOS.items():
            try:
                results[name] = scenario(info.rank)
            except Exception as error:  # reported to the test, which fails on it
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            dist.barrier()
        results["world"] = info.world_size
    torch.save(results, Path(folder) / f"rank{info.rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
