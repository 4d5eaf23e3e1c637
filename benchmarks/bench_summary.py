"""torchscope.summary against torchinfo.summary: speed, scaling with nesting, correctness, side effects.

Run: ``python benchmarks/bench_summary.py`` (or ``make bench``). ``--quick`` uses fewer models
and repetitions. Every number is measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchinfo
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import interleaved_medians, median_seconds, ms, ratio, table

SPEED_MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "densenet121", "vit_b_16")
QUICK_MODELS = ("resnet18", "mobilenet_v3_small")


def _torchinfo(model: nn.Module, **kwargs: object) -> torchinfo.ModelStatistics:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchinfo.summary(model, verbose=0, **kwargs)


def speed(models: tuple[str, ...], repeat: int) -> tuple[list[list[str]], list[float]]:
    rows, ratios = [], []
    for name in models:
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(1, 3, 224, 224)

        def plain(model: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        forward, ours, theirs = interleaved_medians(
            [
                plain,
                lambda m=model, x=x: torchscope.summary(m, x),
                lambda m=model, x=x: _torchinfo(m, input_data=x),
            ],
            repeat=repeat,
        )
        ratios.append(ours / forward)
        rows.append(
            [
                name,
                ms(forward),
                ms(ours),
                ms(theirs),
                ratio(ours, forward),
                ratio(theirs, forward),
                ratio(theirs, ours),
            ]
        )
    return rows, ratios


def nested_chain(levels: int) -> nn.Module:
    model: nn.Module = nn.Linear(4, 4)
    for _ in range(levels):
        model = nn.Sequential(model)
    return model


def nesting(budget_s: float) -> list[list[str]]:
    """Time grows linearly with nesting for torchscope; torchinfo doubles per level."""
    rows = []
    last_theirs: tuple[int, float] | None = None  # (levels, seconds) of torchinfo's last run
    for levels in (5, 10, 15, 20, 50, 100, 200):
        model = nested_chain(levels)
        ours = median_seconds(lambda m=model: torchscope.summary(m, input_size=(1, 4)), repeat=5)
        # torchinfo's time doubles with each level: run it only where the projection fits the budget
        projected = (
            0.0 if last_theirs is None else last_theirs[1] * 2.0 ** (levels - last_theirs[0])
        )
        if projected < budget_s:
            start = time.perf_counter()
            _torchinfo(model, input_size=(1, 4))
            last_theirs = (levels, time.perf_counter() - start)
            theirs_text = ms(last_theirs[1])
        else:
            theirs_text = f"not run (projected {projected:.1e} s)"
        rows.append([str(levels), ms(ours), theirs_text])
    return rows


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 64)
        self.body = nn.Linear(64, 64)
        self.decoder = nn.Linear(64, 1000, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.body(self.embed(tokens)))


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.frozen_bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.frozen_bn(self.bn(self.conv(x))))


def correctness() -> list[list[str]]:
    rows = []
    tied = TiedLM()
    truth = sum(p.numel() for p in tied.parameters())
    tokens = torch.zeros(2, 5, dtype=torch.long)
    rows.append(
        [
            "tied embedding/decoder: total params",
            f"{truth:,}",
            f"{torchscope.summary(tied, tokens).total_params:,}",
            f"{_torchinfo(tied, input_data=tokens).total_params:,}",
        ]
    )

    vit = torchvision.models.vit_b_16()
    truth = sum(p.numel() for p in vit.parameters())
    ours = torchscope.summary(vit, input_size=(1, 3, 224, 224)).total_params
    rows.append(
        [
            "vit_b_16: total params",
            f"{truth:,}",
            f"{ours:,}",
            f"{_torchinfo(vit, input_size=(1, 3, 224, 224)).total_params:,}",
        ]
    )
    return rows


def _bn_model() -> BatchNormNet:
    model = BatchNormNet()
    model.frozen_bn.eval()  # deliberately frozen, as fine-tuning recipes do
    return model


def side_effects() -> list[list[str]]:
    """What each tool leaves changed in the model and the process."""

    def check(run: Callable[[nn.Module], object]) -> dict[str, str]:
        model = _bn_model()
        stats = copy.deepcopy(model.state_dict())
        torch.manual_seed(0)
        rng = torch.random.get_rng_state()
        run(model)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, stats[k])]
        return {
            "state_dict after mode='train'": "unchanged"
            if not changed
            else "changed: " + ", ".join(changed),
            "frozen BatchNorm stays in eval": "yes"
            if not model.frozen_bn.training
            else "no (un-frozen)",
            "global RNG consumed": "yes"
            if not torch.equal(rng, torch.random.get_rng_state())
            else "no",
        }

    ours = check(lambda m: torchscope.summary(m, input_size=(4, 3, 8, 8), mode="train"))
    theirs = check(lambda m: _torchinfo(m, input_size=(4, 3, 8, 8), mode="train"))
    rows = [[key, ours[key], theirs[key]] for key in ours]

    model = _bn_model()
    try:
        torchscope.summary(model, input_size=(1, 3, 8, 8), device="meta")
        ours_device = f"ran; model on {next(model.parameters()).device}"
    except ValueError:
        ours_device = f"refused (ValueError); model on {next(model.parameters()).device}"
    model = _bn_model()
    _torchinfo(model, input_size=(1, 3, 8, 8), device="meta")
    rows.append(
        [
            "device='meta' on a CPU model",
            ours_device,
            f"model moved to {next(model.parameters()).device} (weights lost)",
        ]
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer models and repetitions")
    args = parser.parse_args(argv)
    models = QUICK_MODELS if args.quick else SPEED_MODELS
    repeat = 5 if args.quick else 11

    print(
        f"# torchscope.summary vs torchinfo {torchinfo.__version__} (torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads)\n"
    )
    print(
        "## Speed: one summary vs one plain forward (eval, no_grad), batch 1 at 224x224, median ms\n"
    )
    rows, ratios = speed(models, repeat)
    print(
        table(
            [
                "model",
                "forward",
                "torchscope",
                "torchinfo",
                "torchscope/forward",
                "torchinfo/forward",
                "torchinfo/torchscope",
            ],
            rows,
        )
    )
    print("\n## Scaling with nesting: N nested nn.Sequential around one Linear, ms\n")
    print(
        table(["levels", "torchscope", "torchinfo"], nesting(budget_s=0.5 if args.quick else 2.0))
    )
    print("\n## Correctness\n")
    print(table(["case", "truth", "torchscope", "torchinfo"], correctness()))
    print("\n## Side effects on the model (one BatchNorm training, one deliberately frozen)\n")
    with contextlib.redirect_stdout(io.StringIO()):
        effects = side_effects()
    print(table(["check", "torchscope", "torchinfo"], effects))
    return {
        "summary time / forward time (worst model)": f"{max(ratios):.2f}x",
        "summary time / forward time (best model)": f"{min(ratios):.2f}x",
    }


if __name__ == "__main__":
    main()
