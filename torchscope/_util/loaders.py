"""The random state that decides what a DataLoader's next epoch sees, for checkpoints.

A loader built with ``generator=g`` (PyTorch's reproducibility recipe) shuffles with ``g``
and draws its workers' base seed from it; a sampler can hold a generator of its own
(``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``). Without one they draw
from the global RNG, which a checkpoint saves anyway. A ``DistributedSampler`` is a function
of its seed and the epoch ``set_epoch`` gives it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from torch.utils.data.distributed import DistributedSampler

__all__ = ["loader_random_state", "restore_loader_random_state"]

# samplers whose randomness is a generator we can read (or none at all)
_KNOWN = (
    SequentialSampler,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
    DistributedSampler,
    BatchSampler,
)


def _generators(loader: Any) -> dict[str, torch.Generator]:
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    for path in ("generator", "sampler.generator", "batch_sampler.sampler.generator"):
        value: Any = loader
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, torch.Generator) and id(value) not in seen:
            seen.add(id(value))
            found[path] = value
    return found


def loader_random_state(loader: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The states of the generators that decide the loader's next epoch, by where they sit
    (``generator``, ``sampler.generator``, ...), and what holds randomness that cannot be
    read (a custom sampler, an ``IterableDataset``), described for a warning."""
    states = {path: g.get_state() for path, g in _generators(loader).items()}
    hidden: list[str] = []
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, IterableDataset):
        hidden.append(
            f"the IterableDataset {type(dataset).__name__} (its order is its own: if it "
            "shuffles or draws random numbers, resume cannot restore them)"
        )
    for where in ("sampler", "batch_sampler"):
        sampler = getattr(loader, where, None)
        if where == "batch_sampler" and isinstance(sampler, BatchSampler):
            sampler = sampler.sampler
            where = "batch_sampler.sampler"
        if sampler is None or isinstance(sampler, _KNOWN):
            continue
        if isinstance(getattr(sampler, "generator", None), torch.Generator):
            continue
        if type(sampler).__module__.startswith("torch.utils.data"):
            continue  # the iterable dataset's own placeholder sampler
        hidden.append(
            f"the {where} {type(sampler).__name__} (a custom sampler: its state is its own)"
        )
    return states, hidden


def restore_loader_random_state(loader: Any, states: dict[str, torch.Tensor]) -> list[str]:
    """Set the loader's generators to ``states``; the paths saved that this loader lacks."""
    generators = _generators(loader)
    missing = []
    for path, state in states.items():
        generator = generators.get(path)
        if generator is None:
            missing.append(path)
        else:
            generator.set_state(state)
    return missing
