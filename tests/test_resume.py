"""fit(resume=True) is bit-exact with every source of randomness that decides what an epoch
sees: the global RNGs, the DataLoader's own generator (PyTorch's reproducibility recipe), a
sampler's generator, worker seeding; and it says what it cannot restore."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from torchscope.errors import TorchscopeWarning
from torchscope.training import fit

N = 48


class Noisy(Dataset):
    """Digits-like data with augmentation noise drawn in __getitem__ (a worker's own RNG)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(3)
        self.x = torch.randn(N, 6, generator=generator)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.05 * torch.randn(6), self.y[i]


def _seed_worker(worker_id: int) -> None:  # the reproducibility recipe's worker_init_fn
    seed = torch.initial_seed() % 2**32
    random.seed(seed)


def _loader(kind: str, workers: int) -> DataLoader:
    data = Noisy()
    generator = torch.Generator().manual_seed(0)  # a new process builds it anew
    common: dict[str, Any] = {"batch_size": 8, "num_workers": workers}
    if workers:
        common["worker_init_fn"] = _seed_worker
    if kind == "sequential":
        return DataLoader(data, **common)
    if kind == "global":
        return DataLoader(data, shuffle=True, **common)
    if kind == "loader_generator":
        return DataLoader(data, shuffle=True, generator=generator, **common)
    if kind == "random_sampler":
        sampler: Sampler[int] = RandomSampler(data, generator=generator)
    elif kind == "subset":
        sampler = SubsetRandomSampler(range(N - 8), generator=generator)
    else:
        weights = torch.linspace(0.5, 1.5, N)
        sampler = WeightedRandomSampler(weights, N, generator=generator)
    return DataLoader(data, sampler=sampler, **common)


def _run(folder: Path, epochs: int, setup: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)  # the script's own seeding, as in a fresh process
    layers: list[nn.Module] = [nn.Linear(6, 16), nn.ReLU()]
    if setup["dropout"]:
        layers.append(nn.Dropout(0.3))
    model = nn.Sequential(*layers, nn.Linear(16, 2))
    if setup["optimizer"] == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        if setup["scheduler"]
        else None
    )
    fit(
        model,
        _loader(setup["loader"], setup["workers"]),
        loss_fn=F.cross_entropy,
        optimizer=optimizer,
        epochs=epochs,
        scheduler=scheduler,
        accumulation_steps=setup["accumulation"],
        checkpoint_dir=folder,
        resume=True,
        progress=False,
        monitor=False,
    )
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    loader=st.sampled_from(
        ["sequential", "global", "loader_generator", "random_sampler", "subset", "weighted"]
    ),
    dropout=st.booleans(),
    optimizer=st.sampled_from(["sgd", "adam"]),
    scheduler=st.booleans(),
    accumulation=st.sampled_from([1, 2]),
    workers=st.sampled_from([0, 0, 2]),
    split=st.sampled_from([1, 2]),
)
# the case (a loader with its own generator, dropout, momentum, StepLR), with workers
@example(loader="loader_generator", dropout=True, optimizer="sgd", scheduler=True,
         accumulation=1, workers=2, split=1)  # fmt: skip
@example(loader="weighted", dropout=False, optimizer="adam", scheduler=False,
         accumulation=2, workers=0, split=2)  # fmt: skip
def test_training_k_epochs_then_resuming_equals_training_straight(
    tmp_path_factory: pytest.TempPathFactory, split: int, **setup: Any
) -> None:
    epochs = 3
    straight = _run(tmp_path_factory.mktemp("straight"), epochs, setup)
    folder = tmp_path_factory.mktemp("resumed")
    _run(folder, split, setup)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchscopeWarning)  # nothing it could not restore
        resumed = _run(folder, epochs, setup)
    assert _same(straight["model"], resumed["model"]), setup
    assert _same(straight["optimizer"], resumed["optimizer"]), setup


class Stateful(Sampler[int]):
    """A custom sampler with hidden state: a permutation from its own counter."""

    def __init__(self) -> None:
        self.calls = 0

    def __len__(self) -> int:
        return N

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        return iter(torch.randperm(N, generator=torch.Generator().manual_seed(self.calls)).tolist())


class Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(N, 6, generator=generator)
        return iter(zip(x, (x[:, 0] > 0).long(), strict=True))


@pytest.mark.parametrize("which", ["sampler", "iterable"])
def test_randomness_it_cannot_restore_is_named_in_one_warning(tmp_path: Path, which: str) -> None:
    def loader() -> DataLoader:
        if which == "sampler":
            return DataLoader(TensorDataset(torch.randn(N, 6), torch.zeros(N).long()),
                              batch_size=8, sampler=Stateful())  # fmt: skip
        return DataLoader(Stream(), batch_size=8)

    model = nn.Linear(6, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs: dict[str, Any] = {"loss_fn": F.cross_entropy, "optimizer": optimizer,
                              "checkpoint_dir": tmp_path, "progress": False, "monitor": False}  # fmt: skip
    fit(model, loader(), epochs=1, resume=True, **kwargs)
    with pytest.warns(TorchscopeWarning) as caught:
        fit(model, loader(), epochs=2, resume=True, **kwargs)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "cannot restore" in message
    assert ("Stateful" in message) if which == "sampler" else ("IterableDataset Stream" in message)
