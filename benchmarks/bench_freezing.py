"""torchscope.freeze against the usual recipes: does "frozen" stay bit-identical while training?

Run: ``python benchmarks/bench_freezing.py`` (or ``make bench``). Peers: the hand-written
recipe (``requires_grad_(False)`` plus ``.eval()``), Lightning's ``BaseFinetuning`` and timm's
``freeze``, each when installed (``pip install 'torchscope[bench]'``).

Scenario, the same for every method: torchvision's resnet18, an SGD optimizer (momentum
0.9, weight decay 1e-2) built over all parameters and stepped once before freezing (so
momentum exists), then everything before ``layer4`` frozen and five training steps with
``model.train()`` at the start and ``zero_grad(set_to_none=...)`` before each step.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import table

FROZEN_PREFIXES = ("conv1", "bn1", "layer1", "layer2", "layer3")
Freeze = Callable[[nn.Module, torch.optim.Optimizer], None]


def _naive(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for name in FROZEN_PREFIXES:
        module = model.get_submodule(name)
        module.requires_grad_(False)
        module.eval()


def _torchscope(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torchscope.freeze_until(model, "layer4", optimizer=optimizer)


def _lightning(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from lightning.pytorch.callbacks import BaseFinetuning  # imported once by methods()

    BaseFinetuning.freeze([model.get_submodule(n) for n in FROZEN_PREFIXES], train_bn=False)


def _timm(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    from timm.utils.model import freeze

    freeze(model, list(FROZEN_PREFIXES))


def methods() -> dict[str, Freeze | None]:
    """The contenders; peers are imported here, so that import time is not timed as freezing."""
    importlib.import_module("torchscope.collect.freezing")
    for peer in ("lightning.pytorch.callbacks", "timm.utils.model"):
        if importlib.util.find_spec(peer.split(".")[0]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(peer)
    return {
        "requires_grad_(False) + .eval()": _naive,
        "Lightning BaseFinetuning.freeze": _lightning
        if importlib.util.find_spec("lightning")
        else None,
        "timm.utils.model.freeze": _timm if importlib.util.find_spec("timm") else None,
        "torchscope.freeze_until": _torchscope,
    }


def run(freeze: Freeze, *, set_to_none: bool) -> dict[str, str]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, 3, 64, 64, generator=g), torch.randint(0, 10, (8,), generator=g))
        for _ in range(6)
    ]

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    model.train()
    step(*data[0])
    types_before = {name: type(m) for name, m in model.named_modules()}
    start = time.perf_counter()
    freeze(model, optimizer)
    freeze_ms = (time.perf_counter() - start) * 1e3
    frozen_state = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith(FROZEN_PREFIXES)
    }
    head = model.fc.weight.detach().clone()
    model.train()
    for x, y in data[1:]:
        step(x, y)
    state = model.state_dict()
    moved = [k for k, v in frozen_state.items() if k in state and not torch.equal(v, state[k])]
    params = {k for k, _ in model.named_parameters()}
    replaced = [
        n for n, m in model.named_modules() if n in types_before and type(m) is not types_before[n]
    ]
    return {
        "frozen params changed": str(sum(k in params for k in moved)),
        "frozen buffers changed": str(sum(k not in params for k in moved)),
        "layer1.0.bn1 after model.train()": (
            f"replaced by {type(model.layer1[0].bn1).__name__}"
            if "layer1.0.bn1" in replaced
            else "eval"
            if not model.layer1[0].bn1.training
            else "train"
        ),
        "modules replaced": str(len(replaced)),
        "head trained": "yes" if not torch.equal(head, model.fc.weight) else "no",
        "freeze ms": f"{freeze_ms:.2f}",
    }


class TwoNorms(nn.Module):
    """A pretrained-like body with a LayerNorm, and a fresh LayerNorm head added later."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.head_norm = nn.LayerNorm(8)  # freshly initialised: weight all ones, like body[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_norm(self.body(x))


def unfreeze_identity() -> list[list[str]]:
    """Un-freezing a fresh LayerNorm into an optimizer that holds an equal-valued one."""
    rows = []
    candidates: dict[str, Callable[[TwoNorms, torch.optim.Optimizer], None] | None] = {
        "torchscope.unfreeze(optimizer=, lr=)": lambda m, o: torchscope.unfreeze(
            m, "head_norm", optimizer=o, lr=0.1
        ),
        "Lightning unfreeze_and_add_param_group": None,
    }
    if importlib.util.find_spec("lightning"):
        from lightning.pytorch.callbacks import BaseFinetuning

        candidates["Lightning unfreeze_and_add_param_group"] = lambda m, o: (
            BaseFinetuning.unfreeze_and_add_param_group(m.head_norm, o, lr=0.1)
        )
    for name, unfreeze in candidates.items():
        if unfreeze is None:
            rows.append([name, "not installed", ""])
            continue
        torch.manual_seed(0)
        model = TwoNorms()
        model.head_norm.requires_grad_(False)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unfreeze(model, optimizer)
        before = model.head_norm.weight.detach().clone()
        for _ in range(3):
            optimizer.zero_grad()
            (model(torch.randn(4, 8)) ** 2).sum().backward()
            optimizer.step()
        trains = not torch.equal(before, model.head_norm.weight)
        held = any(p is model.head_norm.weight for g in optimizer.param_groups for p in g["params"])
        rows.append([name, "yes" if held else "no (matched by value)", "yes" if trains else "no"])
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="accepted for symmetry; this benchmark is quick"
    )
    parser.parse_args(argv)
    print(
        f"# Freezing (torch {torch.__version__}): resnet18, SGD momentum 0.9 + weight decay, 5 steps\n"
    )
    headline = {}
    for set_to_none in (True, False):
        rows = []
        for name, freeze in methods().items():
            if freeze is None:
                rows.append([name, "not installed", "", "", "", "", ""])
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = run(freeze, set_to_none=set_to_none)
            rows.append([name, *result.values()])
            if freeze is _torchscope:
                changed = int(result["frozen params changed"]) + int(
                    result["frozen buffers changed"]
                )
                headline[f"frozen tensors changed by training (set_to_none={set_to_none})"] = str(
                    changed
                )
        headers = ["method", *run(_torchscope, set_to_none=set_to_none).keys()]
        print(f"## zero_grad(set_to_none={set_to_none})\n")
        print(table(headers, rows))
        print()
    print("## Un-freezing a fresh LayerNorm into an optimizer holding an equal-valued one\n")
    print(table(["method", "new parameters in the optimizer", "they train"], unfreeze_identity()))
    return headline


if __name__ == "__main__":
    main()
