"""Classic training bugs, each planted in a small model or loop, with the finding kind that
names it. Shared by tests/test_gradients.py and benchmarks/bench_monitor.py.

Each bug is a ``Setup`` (model, optimizer, loss function, batches) and the user's ``loop``
over it. Bugs of the loop itself (a forgotten ``zero_grad``) live in ``loop``; bugs of the
model or the optimizer live in ``setup``, so that checkers which run their own training step
(torchtest and friends) get the same model, optimizer and batch to find them in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
CLASSES = 3
STEPS = 4


@dataclass
class Setup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    batches: list[Batch]


def standard_loop(s: Setup, steps: int = STEPS) -> None:
    s.model.train()
    for x, y in s.batches[:steps]:
        s.optimizer.zero_grad()
        loss = s.loss_fn(s.model(x), y)
        loss.backward()
        s.optimizer.step()


@dataclass(frozen=True)
class Bug:
    name: str
    kind: str  # the finding kind that must name it, and the only error/warning kind
    description: str
    setup: Callable[[], Setup]
    loop: Callable[[Setup], None] = standard_loop
    monitor: dict[str, Any] = field(default_factory=dict)  # GradientMonitor keyword options


# -- models --------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, inputs: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


class SmallCNN(nn.Module):
    """Conv (with bias) -> BatchNorm -> ReLU twice, dropout, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(self.drop(x.mean(dim=(2, 3))))


def vectors(batch: int = 16, features: int = 10, count: int = 6, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, features, generator=g),
            torch.randint(0, CLASSES, (batch,), generator=g),
        )
        for _ in range(count)
    ]


def images(batch: int = 8, count: int = 6, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, CLASSES, (batch,), generator=g))
        for _ in range(count)
    ]


def mlp_setup(model: nn.Module | None = None, *, lr: float = 0.05, **sgd: Any) -> Setup:
    torch.manual_seed(0)
    model = model if model is not None else MLP()
    return Setup(
        model, torch.optim.SGD(model.parameters(), lr=lr, **sgd), F.cross_entropy, vectors()
    )


def cnn_setup(batch: int = 8) -> Setup:
    torch.manual_seed(0)
    model = SmallCNN()
    return Setup(
        model, torch.optim.SGD(model.parameters(), lr=0.05), F.cross_entropy, images(batch)
    )


# -- the bugs ------------------------------------------------------------------------------------


def _no_zero_grad(s: Setup) -> None:
    s.model.train()
    for x, y in s.batches[:STEPS]:
        s.loss_fn(s.model(x), y).backward()
        s.optimizer.step()


def _zero_grad_every_micro_batch(s: Setup) -> None:
    s.model.train()
    for i, (x, y) in enumerate(s.batches[:4]):
        s.optimizer.zero_grad()  # bug: clears the window being accumulated
        (s.loss_fn(s.model(x), y) / 2).backward()
        if i % 2 == 1:
            s.optimizer.step()


def _zero_grad_before_step(s: Setup) -> None:
    s.model.train()
    for x, y in s.batches[:STEPS]:
        s.loss_fn(s.model(x), y).backward()
        s.optimizer.zero_grad(set_to_none=False)  # bug: clears what backward just computed
        s.optimizer.step()


def _never_train_mode(s: Setup) -> None:
    s.model.eval()  # e.g. left over from an evaluation before the loop
    for x, y in s.batches[:STEPS]:
        s.optimizer.zero_grad()
        s.loss_fn(s.model(x), y).backward()
        s.optimizer.step()


def _freeze_mid_run(s: Setup) -> None:
    s.model.train()
    for step, (x, y) in enumerate(s.batches[:STEPS]):
        if step == 2:  # "freeze the first layer now": momentum keeps moving it
            s.model.fc1.requires_grad_(False)  # type: ignore[operator]
        s.optimizer.zero_grad(set_to_none=False)
        s.loss_fn(s.model(x), y).backward()
        s.optimizer.step()


class _LogHidden(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.log(self.fc1(x))  # bug: log of values that can be negative
        return self.head(self.act(self.fc2(h)))


class _SqrtWeight(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bug: sqrt at 0 in the forward; its derivative there is infinite (x 0 -> NaN)
        penalty = torch.sqrt(self.fc2.weight.abs().sum() * 0)
        return super().forward(x) + penalty


class _SqrtOffset(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.sqrt(self.offset)  # d sqrt/dx = inf at 0


class _UnusedLayer(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(32, CLASSES)  # built, never called


class _Detached(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x)).detach()  # bug: cuts fc1 off the graph
        return self.head(self.act(self.fc2(h)))


class _Rounded(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.round(self.act(self.fc1(x)))  # zero derivative everywhere
        return self.head(self.act(self.fc2(h)))


class _DeepSigmoid(nn.Module):
    def __init__(self, depth: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(10, 16), nn.Sigmoid()]
        for _ in range(depth):
            layers += [nn.Linear(16, 16), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _DeepLinear(nn.Module):
    def __init__(self, depth: int = 12, gain: float = 3.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(32, 32) for _ in range(depth)])
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / 32**0.5)  # bug: gain 3 per layer
        self.inp = nn.Linear(10, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.inp(x)))


def _dead_relu() -> Setup:
    s = mlp_setup()
    with torch.no_grad():
        s.model.fc1.bias.fill_(-100.0)  # type: ignore[union-attr,operator]
    return s


def _replaced_head() -> Setup:
    s = mlp_setup()
    s.model.head = nn.Linear(32, CLASSES)  # after the optimizer was built: never updated
    return s


def _zero_lr_head() -> Setup:
    s = mlp_setup()
    m = s.model
    body = [p for n, p in m.named_parameters() if not n.startswith("head.")]
    s.optimizer = torch.optim.SGD(
        [{"params": body}, {"params": m.head.parameters(), "lr": 0.0}],  # type: ignore[union-attr]
        lr=0.05,
    )
    return s


def _softmax_output() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(MLP(), nn.Softmax(dim=1))  # probabilities into cross_entropy
    return mlp_setup(model)


def _log_of_zero_loss() -> Setup:
    s = mlp_setup()

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(out, dim=1)
        picked = probs.gather(1, y[:, None]) * (y[:, None] > CLASSES)  # bug: mask is all False
        return -torch.log(picked).mean()  # log(0) = -inf

    s.loss_fn = loss_fn
    return s


BUGS: list[Bug] = [
    Bug("no_zero_grad", "grad_accumulation", "optimizer.zero_grad() never called",
        mlp_setup, _no_zero_grad),
    Bug("cleared_inside_accumulation", "grad_accumulation",
        "zero_grad() every micro-batch although gradients are accumulated over 2",
        mlp_setup, _zero_grad_every_micro_batch, {"accumulation_steps": 2}),
    Bug("zero_grad_before_step", "zero_grad", "zero_grad() between backward() and step()",
        mlp_setup, _zero_grad_before_step),
    Bug("log_of_negative", "nonfinite_activation", "torch.log of a linear layer's output",
        lambda: mlp_setup(_LogHidden())),
    Bug("log_of_zero_in_loss", "nonfinite_loss", "a hand-written loss takes log(0)",
        _log_of_zero_loss),
    Bug("sqrt_at_zero", "nan_grad", "sqrt(0) in the forward: infinite derivative times 0",
        lambda: mlp_setup(_SqrtWeight())),
    Bug("sqrt_of_parameter_at_zero", "inf_grad", "sqrt of a parameter initialised to 0",
        lambda: mlp_setup(_SqrtOffset())),
    Bug("unused_layer", "no_grad", "a layer built in __init__ and never called",
        lambda: mlp_setup(_UnusedLayer())),
    Bug("detach_in_forward", "no_grad", ".detach() in the forward cuts a layer off",
        lambda: mlp_setup(_Detached())),
    Bug("round_in_forward", "zero_grad", "torch.round in the forward: zero derivative",
        lambda: mlp_setup(_Rounded())),
    Bug("deep_sigmoid", "vanishing", "25 sigmoid layers, no normalisation",
        lambda: mlp_setup(_DeepSigmoid(), lr=0.5)),
    Bug("exploding_init", "exploding", "12 linear layers initialised with gain 3",
        lambda: mlp_setup(_DeepLinear(), lr=1e-9)),
    Bug("dead_relu", "dead_activation", "bias initialised to -100 before a ReLU", _dead_relu),
    Bug("optimizer_before_new_head", "not_updated",
        "optimizer built before the head was replaced", _replaced_head),
    Bug("zero_learning_rate", "not_updated", "a parameter group with lr=0", _zero_lr_head),
    Bug("frozen_mid_run", "frozen_but_updated",
        "requires_grad_(False) mid-run with momentum and zero_grad(set_to_none=False)",
        lambda: mlp_setup(lr=0.05, momentum=0.9), _freeze_mid_run),
    Bug("eval_mode", "eval_mode", "training with the model left in eval mode",
        cnn_setup, _never_train_mode),
    Bug("softmax_into_cross_entropy", "softmax_into_cross_entropy",
        "the model ends in Softmax and the loss is cross_entropy", _softmax_output),
    Bug("batchnorm_batch_of_one", "batchnorm_batch_of_one",
        "BatchNorm trained on batches of one sample", lambda: cnn_setup(batch=1)),
]  # fmt: skip
