"""``torchscope demo``: the main job. Trains a LeNet on scikit-learn's bundled 8x8 digits
(no download), fine-tunes its head with the rest frozen, and runs every tool on the real
training: summary, graph, gradient health, per-layer timing, TensorBoard and checkpoints.

Before training it runs :func:`~torchscope.preflight` on one training batch (its table is
printed and written to ``preflight.txt``). The demo is also a validation: it checks (and
prints) that the summary's parameter count is
the optimizer's, that the monitor found nothing on the clean run (or found the planted bug
of ``--inject-bug``), that frozen weights stayed bit-identical while the head was
fine-tuned, and that the per-layer times account for the step.

Under ``torch.distributed`` (``torchscope demo --nproc N``, or ``torchrun``) every rank runs
it: :func:`~torchscope.training.fit` trains under DistributedDataParallel on each rank's
share of the batches and the gradient report merges every rank's findings; rank 0 alone
prints, writes the files and times the layers (the other ranks wait for it).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from torchscope.collect.freezing import freeze
from torchscope.collect.graph import module_graph
from torchscope.collect.preflight import preflight
from torchscope.collect.summary import summary
from torchscope.collect.timing import time_layers
from torchscope.distributed import is_distributed, is_main_process
from torchscope.errors import TorchscopeError
from torchscope.models import LeNet
from torchscope.records import History, PreflightReport
from torchscope.training import fit

__all__ = ["BUGS", "DemoResult", "digits_loaders", "run_demo"]

#: Bugs ``--inject-bug`` can plant, and the finding kind the monitor must report for each.
BUGS = {
    "detach": "no_grad",  # the classifier gets features.detach(): no gradient reaches them
    "softmax": "softmax_into_cross_entropy",  # probabilities fed to cross_entropy
    "nan": "nonfinite_activation",  # one training image poisoned with NaN
}

DEFAULT_EPOCHS = 12
FINETUNE_EPOCHS = 2
IMAGE_SIZE = 28  # LeNet's input; the 8x8 digits are upsampled once, up front


@dataclass
class DemoResult:
    """What the demo produced: histories, checks and the files written."""

    out: Path
    history: History
    finetune: History
    parameters: int
    optimizer_parameters: int
    frozen_unchanged: bool
    files: dict[str, Path] = field(default_factory=dict)
    timing_coverage: float = 0.0
    test_accuracy: float = 0.0
    preflight: PreflightReport | None = None  # rank 0's, on one training batch


class _Buggy(nn.Module):
    """LeNet with one classic bug planted in its forward."""

    def __init__(self, model: LeNet, bug: str) -> None:
        super().__init__()
        self.features = model.features
        self.classifier = model.classifier
        self.bug = bug

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if self.bug == "detach":
            features = features.detach()
        logits = self.classifier(features)
        return logits.softmax(1) if self.bug == "softmax" else logits


def digits_loaders(
    batch_size: int = 64, *, seed: int = 0, poison: bool = False
) -> tuple[DataLoader, DataLoader]:
    """Train (80%) and test (20%) loaders of scikit-learn's 1,797 bundled 8x8 digits,
    upsampled to 28x28 and standardised; the split and the shuffling are seeded."""
    try:
        from sklearn.datasets import load_digits  # the `demo` extra
    except ImportError as e:
        raise TorchscopeError(
            "the demo needs scikit-learn, tqdm, matplotlib and tensorboard: pip install scikit-learn "
            "tqdm matplotlib tensorboard (or, in a clone of torchscope, pip install '.[demo]')"
        ) from e
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(
        images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(labels))
    train, test = order[:split], order[split:]
    train_images = images[train].clone()
    if poison:
        train_images[0].fill_(float("nan"))
    train_loader = DataLoader(
        TensorDataset(train_images, labels[train]),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    test_loader = DataLoader(TensorDataset(images[test], labels[test]), batch_size=256)
    return train_loader, test_loader


def run_demo(
    stream: TextIO = sys.stdout,
    *,
    out: str | Path = "runs/demo",
    epochs: int = DEFAULT_EPOCHS,
    inject_bug: str | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo, writing its files into ``out``; returns what it found.

    Under ``torch.distributed`` call it on every rank: only rank 0 prints to ``stream`` and
    writes files, and only its result has the files, the timing coverage and the paths.
    """
    if inject_bug is not None and inject_bug not in BUGS:
        raise ValueError(f"unknown bug {inject_bug!r}; choose from {', '.join(BUGS)}")
    from torch.utils.tensorboard import SummaryWriter  # the `tensorboard` extra

    main = is_main_process()
    world = dist.get_world_size() if is_distributed() else 1
    folder = Path(out)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # every rank builds the same model and the same split

    def say(text: str = "") -> None:
        if main:
            print(text, file=stream, flush=True)

    train_loader, test_loader = digits_loaders(poison=inject_bug == "nan")
    lenet = LeNet()
    model: nn.Module = _Buggy(lenet, inject_bug) if inject_bug in ("detach", "softmax") else lenet
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    files: dict[str, Path] = {}
    example = next(iter(test_loader))[0][:1]

    sizes = [len(cast(TensorDataset, loader.dataset)) for loader in (train_loader, test_loader)]
    say(
        f"torchscope demo: LeNet on scikit-learn's digits ({sizes[0]} train, {sizes[1]} test "
        f"images, upsampled to {IMAGE_SIZE}x{IMAGE_SIZE})"
    )
    if world > 1:
        say(
            f"DistributedDataParallel over {world} processes ({dist.get_backend()}), each "
            f"training on 1/{world} of the batches; rank 0 prints and writes the files"
        )
    if inject_bug:
        say(f"planted bug: {inject_bug} (expected finding: {BUGS[inject_bug]})")
    result_summary = summary(model, example, depth=2)  # a forward of this rank's own: no DDP
    if main:
        files["summary"] = _write(folder / "summary.txt", str(result_summary))
    optimizer_parameters = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    say(f"\n{result_summary}\n")
    say(
        f"check: summary counts {result_summary.total_params:,} parameters, the optimizer holds "
        f"{optimizer_parameters:,}: {'same' if result_summary.total_params == optimizer_parameters else 'DIFFERENT'}"
    )

    checked: PreflightReport | None = None
    if main:  # the checks to run before training, on one training batch (copies of the model)
        images, labels = next(iter(train_loader))
        checked = preflight(model, images, labels, loss_fn=F.cross_entropy, steps=30)
        files["preflight"] = _write(folder / "preflight.txt", str(checked))
        say(f"\n{checked}\n")

    if main:  # svg: drawn by Graphviz when it is installed, else by our own layout
        files["graph"] = Path(module_graph(model, example).render(folder / "graph.svg"))

    say(f"\ntraining {epochs} epochs (Adam, StepLR, gradient monitor on, checkpoints each epoch)")
    events: contextlib.AbstractContextManager[Any] = (
        SummaryWriter(str(folder / "tensorboard")) if main else contextlib.nullcontext()
    )
    timing_coverage = 0.0
    with events as writer:
        history = fit(
            model,
            train_loader,
            val_loader=test_loader,
            loss_fn=F.cross_entropy,
            optimizer=optimizer,
            epochs=epochs,
            scheduler=scheduler,
            checkpoint_dir=folder / "checkpoints",
            writer=writer,
            progress=progress,
        )
        say(str(history))
        report = history.gradient_report  # the same, merged report on every rank
        assert report is not None
        if main:
            files["health"] = _write(folder / "health.txt", str(report))
            files["grad_flow"] = Path(report.plot(folder / "grad_flow.png"))
        say(f"\n{report}")

        if main:  # per-layer times of a training step (batch of 64), every layer trainable
            batch = next(iter(test_loader))[0][:64]
            model.train()
            timing = time_layers(model, batch, warmup=2, repeat=10)
            files["timing"] = _write(folder / "timing.txt", str(timing))
            timing.log_to(writer)
            timing_coverage = timing.coverage
            alone = "per-layer times on rank 0 alone (the other ranks wait)\n" if world > 1 else ""
            say(f"\n{alone}{timing}")

        # fine-tune the head only: everything before the last Linear is frozen
        head = "classifier.5 (the last Linear)"
        finetune_optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        frozen_names = freeze(
            model, "features", "classifier.1", "classifier.3", optimizer=finetune_optimizer
        )
        before = {n: p.detach().clone() for n, p in model.named_parameters() if n in frozen_names}
        say(
            f"\nfine-tuning {head} for {FINETUNE_EPOCHS} epochs with {len(frozen_names)} parameter tensors frozen"
        )
        finetune = fit(
            model,
            train_loader,
            val_loader=test_loader,
            loss_fn=F.cross_entropy,
            optimizer=finetune_optimizer,
            epochs=FINETUNE_EPOCHS,
            checkpoint_dir=folder / "checkpoints" / "finetune",
            progress=progress,
        )
        say(str(finetune))
        unchanged = all(
            torch.equal(before[n], p) for n, p in model.named_parameters() if n in before
        )
        say(
            f"check: frozen weights bit-identical after fine-tuning: {'yes' if unchanged else 'NO'}"
        )

    final = finetune.last.val_accuracy or 0.0
    say(
        f"\ntest accuracy: {100 * (history.last.val_accuracy or 0):.2f}% after training, "
        f"{100 * final:.2f}% after fine-tuning the head"
    )
    if main:
        files["tensorboard"] = folder / "tensorboard"
        files["checkpoints"] = folder / "checkpoints"
        say("\nwritten:")
        for name, path in files.items():
            say(f"  {name:<12} {path}")
        say(f"open TensorBoard with: tensorboard --logdir {files['tensorboard']}")
    return DemoResult(
        out=folder,
        history=history,
        finetune=finetune,
        parameters=result_summary.total_params,
        optimizer_parameters=optimizer_parameters,
        frozen_unchanged=unchanged,
        files=files,
        timing_coverage=timing_coverage,
        test_accuracy=final,
        preflight=checked,
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    return path
