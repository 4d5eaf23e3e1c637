"""Small training setups, buggy and correct, for ``torchscope.preflight``.

Each entry builds (from its own seed) a model, the inputs it is called with, the target and
the loss function, and optionally an optimizer over the model's parameters. ``fails`` names
the checks whose verdict must be "fail" or "warn" (a bug case may trip more checks than it
names: only the named ones are asserted); an empty ``fails`` is a correct setup on which
every check must pass or skip (``report.ok``). Every case is tiny: batch 8-32, widths of at
most 64, sequences of at most 12, so that one preflight run takes well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

INIT_LOSS = "init_loss"
GRADIENTS = "gradients"
BATCH = "batch_independence"
INPUT = "input_dependence"
OVERFIT = "overfit"
CONTRACT = "loss_contract"
CHECKS = (INIT_LOSS, GRADIENTS, BATCH, INPUT, OVERFIT, CONTRACT)


class Setup(NamedTuple):
    """What one preflight call takes: ``preflight(model, inputs, target, loss_fn=..., optimizer=...)``."""

    model: nn.Module
    inputs: Any
    target: Any
    loss_fn: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None


@dataclass(frozen=True)
class ZooCase:
    name: str
    build: Callable[[], Setup]
    fails: tuple[str, ...]  # empty: a correct setup (report.ok)
    style: str = ""

    def __repr__(self) -> str:
        return self.name


ZOO: list[ZooCase] = []


def case(*fails: str, style: str = "") -> Callable[[Callable[[], Setup]], Callable[[], Setup]]:
    """Register a builder under its function name (without the leading ``case_``)."""

    def register(build: Callable[[], Setup]) -> Callable[[], Setup]:
        assert all(f in CHECKS for f in fails), fails
        ZOO.append(ZooCase(build.__name__.removeprefix("case_"), build, tuple(fails), style))
        return build

    return register


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _labels(n: int, classes: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, classes, (n,), generator=_gen(seed))


def _balanced(n: int) -> torch.Tensor:
    """Binary labels, half ones, in a shuffled order (float, for BCE-with-logits)."""
    y = torch.zeros(n)
    y[: n // 2] = 1.0
    return y[torch.randperm(n, generator=_gen(3))]


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


# =============================================================================================
# init loss far above chance


class _ScaledLogits(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net = _mlp(16, 64, 10)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


@case(INIT_LOSS, style="custom forward, logits x 100")
def case_init_logits_times_100() -> Setup:
    torch.manual_seed(0)
    return Setup(_ScaledLogits(100.0), _x(16, 16), _labels(16, 10), F.cross_entropy)


@case(INIT_LOSS, style="nn.Sequential, last layer N(0, 10^2)")
def case_init_huge_last_layer() -> Setup:
    torch.manual_seed(0)
    model = _mlp(16, 64, 8)
    nn.init.normal_(model[2].weight, std=10.0)
    return Setup(model, _x(16, 16), _labels(16, 8), nn.CrossEntropyLoss())


@case(INIT_LOSS, style="bias +50 on class 0")
def case_init_bias_plus_50() -> Setup:
    torch.manual_seed(0)
    model = _mlp(12, 32, 5)
    with torch.no_grad():
        model[2].bias[0] = 50.0
    target = torch.arange(16) % 4 + 1  # never class 0
    return Setup(model, _x(16, 12), target, F.cross_entropy)


class _ColdCNN(nn.Module):
    """Functional CNN whose logits are divided by a temperature of 0.01."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(h) / 0.01


@case(INIT_LOSS, style="CNN, temperature 0.01")
def case_init_cnn_temperature_001() -> Setup:
    torch.manual_seed(0)
    return Setup(_ColdCNN(), _x(12, 3, 8, 8), _labels(12, 6), F.cross_entropy)


@case(INIT_LOSS, style="BCE with logits, bias -30 on a balanced binary task")
def case_init_bce_bias_minus_30() -> Setup:
    torch.manual_seed(0)
    model = _mlp(10, 32, 1)
    with torch.no_grad():
        model[2].bias.fill_(-30.0)

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out.squeeze(1), y)

    return Setup(model, _x(16, 10), _balanced(16), loss)


class _LoudRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp(8, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 * self.body(x)


@case(INIT_LOSS, style="MSE regression, output x 50")
def case_init_regression_times_50() -> Setup:
    torch.manual_seed(0)
    return Setup(_LoudRegressor(), _x(16, 8), _x(16, 1, seed=4), nn.MSELoss())


# =============================================================================================
# parameters without a gradient


class _UnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _mlp(16, 32, 4)
        self.aux_head = nn.Linear(32, 4)  # built, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@case(GRADIENTS, style="unused submodule")
def case_grad_unused_submodule() -> Setup:
    torch.manual_seed(0)
    return Setup(_UnusedHead(), _x(16, 16), _labels(16, 4), F.cross_entropy)


class _DetachedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).detach())


@case(GRADIENTS, style=".detach() in the middle")
def case_grad_detach_in_middle() -> Setup:
    torch.manual_seed(0)
    return Setup(_DetachedEncoder(), _x(16, 16), _labels(16, 4), F.cross_entropy)


class _TolistRebuild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        h = torch.tensor(h.tolist())  # rebuilt from Python floats: the graph ends here
        return self.head(h)


@case(GRADIENTS, style="torch.tensor(x.tolist()) rebuild")
def case_grad_tolist_rebuild() -> Setup:
    torch.manual_seed(0)
    return Setup(_TolistRebuild(), _x(16, 16), _labels(16, 4), F.cross_entropy)


class _ItemGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(16, 1)
        self.head = _mlp(16, 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.gate(x)).mean().item()  # a Python float
        return self.head(x) * scale


@case(GRADIENTS, style=".item() gate")
def case_grad_item_gate() -> Setup:
    torch.manual_seed(0)
    return Setup(_ItemGate(), _x(16, 16), _labels(16, 4), F.cross_entropy)


class _ArgmaxRouter(nn.Module):
    """Hard routing: the router's scores only pass through argmax."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(16, 4)
        self.expert_bias = nn.Embedding(4, 5)
        self.body = _mlp(16, 32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self.router(x).argmax(dim=-1)
        return self.body(x) + self.expert_bias(route)


@case(GRADIENTS, style="argmax path")
def case_grad_argmax_router() -> Setup:
    torch.manual_seed(0)
    return Setup(_ArgmaxRouter(), _x(16, 16), _labels(16, 5), F.cross_entropy)


class _GRUData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1].data)  # .data: the GRU is cut off


@case(GRADIENTS, style="GRU cut off by .data")
def case_grad_gru_data() -> Setup:
    torch.manual_seed(0)
    return Setup(_GRUData(), _x(12, 8, 6), _labels(12, 3), F.cross_entropy)


# =============================================================================================
# samples mixed across the batch


class _LSTMTimeMajor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 16)  # batch_first=False, fed (batch, time, feat)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


@case(BATCH, style="nn.LSTM without batch_first fed (B, T, F)")
def case_batch_lstm_not_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_LSTMTimeMajor(), _x(12, 8, 6), _labels(12, 3), F.cross_entropy)


class _GRUTimeMajor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out.mean(dim=1))


@case(BATCH, style="nn.GRU without batch_first, mean over 'time'")
def case_batch_gru_not_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_GRUTimeMajor(), _x(10, 6, 6), _labels(10, 3), F.cross_entropy)


class _MHASeqFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2)  # batch_first=False
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(dim=1))


@case(BATCH, style="nn.MultiheadAttention without batch_first fed (B, S, E)")
def case_batch_mha_not_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_MHASeqFirst(), _x(12, 6, 8), _labels(12, 4), F.cross_entropy)


class _EncoderSeqFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.proj(x))
        return self.head(h[:, 0])


@case(BATCH, style="TransformerEncoder without batch_first fed (B, S, E)")
def case_batch_transformer_not_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_EncoderSeqFirst(), _x(12, 6, 8), _labels(12, 4), F.cross_entropy)


class _NormOverBatch(nn.Module):
    """Standardises every feature over the batch (meant: over the features, dim -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(16, 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True) + 1e-5)
        return self.net(x)


@case(BATCH, style="normalisation over dim 0")
def case_batch_norm_over_dim0() -> Setup:
    torch.manual_seed(0)
    return Setup(_NormOverBatch(), _x(16, 16), _labels(16, 4), F.cross_entropy)


class _ReshapeNotTranspose(nn.Module):
    """A time-major GRU fed ``x.reshape(T, B, F)`` where ``x.transpose(0, 1)`` was meant."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, f = x.shape
        out, _ = self.gru(x.reshape(t, b, f))
        return self.head(out[-1])


@case(BATCH, style="x.reshape(T, B, F) for a transpose")
def case_batch_reshape_swap() -> Setup:
    torch.manual_seed(0)
    return Setup(_ReshapeNotTranspose(), _x(8, 10, 5), _labels(8, 3), F.cross_entropy)


class _ViewMix(nn.Module):
    """Conv1d fed ``x.view(T, B*C)...``: the flattened rows straddle samples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        b, t, c = x.shape
        h = x.reshape(t, c, b).permute(2, 1, 0)  # meant x.permute(0, 2, 1): (B, C, T)
        h = torch.relu(self.conv(h))
        return self.head(h.mean(-1))


@case(BATCH, style="reshape(T, C, B).permute, meant permute(0, 2, 1)")
def case_batch_reshape_permute_conv() -> Setup:
    torch.manual_seed(0)
    return Setup(_ViewMix(), _x(8, 12, 4), _labels(8, 3), F.cross_entropy)


# =============================================================================================
# outputs that ignore the input


class _ConstantLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


@case(INPUT, style="a learned parameter broadcast to the batch")
def case_input_learned_constant() -> Setup:
    torch.manual_seed(0)
    return Setup(_ConstantLogits(), _x(16, 12), _labels(16, 5), F.cross_entropy)


class _TimesZero(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(12, 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 0.0)


@case(INPUT, GRADIENTS, style="input multiplied by 0 (first weight's gradient is 0 too)")
def case_input_times_zero() -> Setup:
    torch.manual_seed(0)
    return Setup(_TimesZero(), _x(16, 12), _labels(16, 4), F.cross_entropy)


class _ShapeOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(12, 32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ones(x.shape[0], x.shape[1])  # only the input's shape is used
        return self.net(h)


@case(INPUT, style="uses only the input's shape")
def case_input_shape_only() -> Setup:
    torch.manual_seed(0)
    return Setup(_ShapeOnly(), _x(16, 12), _labels(16, 4), F.cross_entropy)


class _PositionsOnly(nn.Module):
    """``h = self.pos`` where ``h = self.proj(x) + self.pos`` was meant."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.pos = nn.Parameter(torch.randn(1, 6, 16) * 0.1)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pos.expand(x.shape[0], -1, -1)
        return self.head(self.encoder(h).mean(1))


@case(INPUT, style="transformer fed its positional embedding only")
def case_input_positions_only() -> Setup:
    torch.manual_seed(0)
    return Setup(_PositionsOnly(), _x(12, 6, 8), _labels(12, 3), F.cross_entropy)


class _DictIgnored(nn.Module):
    """Takes ``features`` and ``mask`` but reads only ``mask``'s size."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))
        self.net = _mlp(10, 16, 1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.zeros(mask.shape[0], 10)) + self.bias


@case(INPUT, style="dict inputs, regression, reads neither")
def case_input_dict_ignored() -> Setup:
    torch.manual_seed(0)
    inputs = {"features": _x(16, 10), "mask": torch.ones(16, 10)}
    return Setup(_DictIgnored(), inputs, _x(16, 1, seed=5), nn.MSELoss())


# =============================================================================================
# cannot overfit one batch


@case(OVERFIT, style="SGD with lr=0")
def case_overfit_sgd_lr_zero() -> Setup:
    torch.manual_seed(0)
    model = _mlp(16, 64, 4)
    return Setup(
        model, _x(16, 16), _labels(16, 4), F.cross_entropy, torch.optim.SGD(model.parameters(), 0.0)
    )


@case(OVERFIT, style="Adam with lr=0, CNN")
def case_overfit_adam_lr_zero_cnn() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return Setup(
        model,
        _x(12, 3, 8, 8),
        _labels(12, 4),
        F.cross_entropy,
        torch.optim.Adam(model.parameters(), lr=0.0),
    )


@case(OVERFIT, style="everything frozen but the last bias")
def case_overfit_only_last_bias_trains() -> Setup:
    torch.manual_seed(0)
    model = _mlp(16, 64, 8)
    for p in model.parameters():
        p.requires_grad_(False)
    model[2].bias.requires_grad_(True)
    target = torch.arange(16) % 8  # every class twice: the bias alone cannot fit it
    return Setup(model, _x(16, 16), target, F.cross_entropy)


class _DeadReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 6)
        with torch.no_grad():
            self.fc1.bias.fill_(-100.0)  # every pre-activation is negative

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.out(h)


@case(OVERFIT, GRADIENTS, INPUT, style="dead ReLU network (all pre-activations negative)")
def case_overfit_dead_relu() -> Setup:
    torch.manual_seed(0)
    target = torch.arange(18) % 6  # balanced: the output biases alone cannot fit it
    return Setup(_DeadReLU(), _x(18, 12), target, F.cross_entropy)


@case(OVERFIT, style="linear model on noise targets (5 parameters, 32 samples)")
def case_overfit_linear_on_noise() -> Setup:
    torch.manual_seed(0)
    return Setup(nn.Linear(4, 1), _x(32, 4), _x(32, 1, seed=6), nn.MSELoss())


# =============================================================================================
# the loss's contract


@case(CONTRACT, style="nn.Softmax then F.cross_entropy")
def case_contract_softmax_into_ce() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(*_mlp(16, 32, 5), nn.Softmax(dim=1))
    return Setup(model, _x(16, 16), _labels(16, 5), F.cross_entropy)


@case(CONTRACT, style="softmax inside the loss lambda")
def case_contract_softmax_in_lambda() -> Setup:
    torch.manual_seed(0)
    return Setup(
        _mlp(16, 32, 5),
        _x(16, 16),
        _labels(16, 5),
        lambda out, y: F.cross_entropy(out.softmax(dim=-1), y),
    )


@case(CONTRACT, style="nn.Sigmoid then BCEWithLogitsLoss")
def case_contract_sigmoid_into_bce_logits() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(*_mlp(10, 32, 1), nn.Flatten(0), nn.Sigmoid())
    return Setup(model, _x(16, 10), _balanced(16), nn.BCEWithLogitsLoss())


class _SigmoidMultiLabel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(10, 32, 4)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(image + meta))


@case(CONTRACT, style="dict inputs, sigmoid into binary_cross_entropy_with_logits")
def case_contract_sigmoid_multilabel_dict() -> Setup:
    torch.manual_seed(0)
    inputs = {"image": _x(16, 10), "meta": _x(16, 10, seed=7)}
    target = (torch.rand(16, 4, generator=_gen(8)) > 0.5).float()
    return Setup(_SigmoidMultiLabel(), inputs, target, F.binary_cross_entropy_with_logits)


class _LogSoftmaxDim0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(16, 32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=0)  # over the batch


@case(CONTRACT, BATCH, style="log_softmax over dim 0 into nll_loss (mixes the batch too)")
def case_contract_log_softmax_dim0() -> Setup:
    torch.manual_seed(0)
    return Setup(_LogSoftmaxDim0(), _x(16, 16), _labels(16, 5), F.nll_loss)


@case(CONTRACT, style="nn.ReLU on the logits into cross_entropy")
def case_contract_relu_logits() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(*_mlp(16, 32, 6), nn.ReLU())
    return Setup(model, _x(16, 16), _labels(16, 6), nn.CrossEntropyLoss())


class _ClampedCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1)
        return self.fc(h).clamp(min=0.0)


@case(CONTRACT, style="CNN, logits clamped at 0, cross_entropy")
def case_contract_clamp_logits_cnn() -> Setup:
    torch.manual_seed(0)
    return Setup(_ClampedCNN(), _x(12, 1, 8, 8), _labels(12, 4), F.cross_entropy)


@case(CONTRACT, style="MSELoss, (N, 1) output vs (N,) target")
def case_contract_mse_broadcast() -> Setup:
    torch.manual_seed(0)
    return Setup(_mlp(8, 32, 1), _x(16, 8), _x(16, seed=9), nn.MSELoss())


@case(CONTRACT, style="F.l1_loss, (N,) output vs (N, 1) target")
def case_contract_l1_broadcast() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(*_mlp(8, 32, 1), nn.Flatten(0))
    return Setup(model, _x(16, 8), _x(16, 1, seed=9), F.l1_loss)


# =============================================================================================
# correct setups: every check must pass or skip


@case(style="MLP classifier, nn.Sequential")
def case_ok_mlp_classifier() -> Setup:
    torch.manual_seed(0)
    return Setup(_mlp(32, 64, 4), _x(8, 32), _labels(8, 4), F.cross_entropy)


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@case(style="CNN with BatchNorm in train mode")
def case_ok_cnn_batchnorm() -> Setup:
    torch.manual_seed(0)
    return Setup(_SmallCNN(), _x(8, 3, 8, 8), _labels(8, 4), F.cross_entropy)


class _LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 64, batch_first=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


@case(style="LSTM, batch_first=True")
def case_ok_lstm_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_LSTMClassifier(), _x(8, 8, 6), _labels(8, 3), F.cross_entropy)


class _EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(x)).mean(dim=1))


@case(style="1-layer TransformerEncoder, batch_first=True (dropout 0.1)")
def case_ok_transformer_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_EncoderClassifier(), _x(12, 6, 8), _labels(12, 4), F.cross_entropy)


@case(style="regression MLP, (N, 1) vs (N, 1) standardised targets, nn.MSELoss")
def case_ok_regression_mlp() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    y = _x(16, 1, seed=4)
    return Setup(model, _x(16, 8), (y - y.mean()) / y.std(), nn.MSELoss())


class _BinaryClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(32, 64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@case(style="binary classifier, F.binary_cross_entropy_with_logits")
def case_ok_bce_binary() -> Setup:
    torch.manual_seed(0)
    return Setup(_BinaryClassifier(), _x(8, 32), _balanced(8), F.binary_cross_entropy_with_logits)


class _TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(12, 64)
        self.meta = nn.Linear(4, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.image(image) + self.meta(meta)))


@case(style="dict of inputs (keyword arguments)")
def case_ok_dict_inputs() -> Setup:
    torch.manual_seed(0)
    inputs = {"image": _x(8, 12), "meta": _x(8, 4, seed=7)}
    return Setup(_TwoTower(), inputs, _labels(8, 3), F.cross_entropy)


class _FrozenEmbeddingBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 64)
        self.embedding.weight.requires_grad_(False)  # pretrained, frozen
        self.head = _mlp(64, 64, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(dim=1))


@case(style="frozen (requires_grad=False) embedding, integer tokens")
def case_ok_frozen_embedding() -> Setup:
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (8, 10), generator=_gen(10))
    return Setup(_FrozenEmbeddingBag(), tokens, _labels(8, 3), F.cross_entropy)


class _FrozenBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
        self.backbone.requires_grad_(False)  # a frozen feature extractor
        self.head = _mlp(64, 64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@case(style="frozen (requires_grad=False) backbone, float inputs")
def case_ok_frozen_backbone() -> Setup:
    torch.manual_seed(0)
    return Setup(_FrozenBackbone(), _x(8, 32), _labels(8, 4), F.cross_entropy)


@case(style="custom optimizer: SGD with momentum")
def case_ok_sgd_momentum() -> Setup:
    torch.manual_seed(0)
    model = _mlp(16, 64, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Setup(model, _x(16, 16), _labels(16, 4), F.cross_entropy, optimizer)


class _MaskedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(32, 64, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(x * mask)


@case(style="tuple of positional inputs")
def case_ok_tuple_inputs() -> Setup:
    torch.manual_seed(0)
    mask = (torch.rand(8, 32, generator=_gen(11)) > 0.2).float()
    return Setup(_MaskedMLP(), (_x(8, 32), mask), _labels(8, 4), F.cross_entropy)


class _GRUFunctionalHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 64, batch_first=True)
        self.w = nn.Parameter(torch.randn(3, 64) * 0.1)
        self.b = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x)
        return F.linear(h[-1], self.w, self.b)


@case(style="GRU batch_first, functional F.linear head on h_n")
def case_ok_gru_functional_head() -> Setup:
    torch.manual_seed(0)
    return Setup(_GRUFunctionalHead(), _x(8, 10, 5), _labels(8, 3), F.cross_entropy)


@case(style="multi-label (N, C) targets, nn.BCEWithLogitsLoss")
def case_ok_multilabel_bce() -> Setup:
    torch.manual_seed(0)
    target = (torch.rand(8, 5, generator=_gen(12)) > 0.5).float()
    return Setup(_mlp(32, 64, 5), _x(8, 32), target, nn.BCEWithLogitsLoss())


class _AttnPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        a, _ = self.attn(h, h, h)
        return self.head(self.norm(h + a).mean(dim=1))


@case(style="MultiheadAttention batch_first=True, LayerNorm")
def case_ok_mha_batch_first() -> Setup:
    torch.manual_seed(0)
    return Setup(_AttnPool(), _x(12, 6, 8), _labels(12, 4), F.cross_entropy)


class _LogSoftmaxClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(32, 64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=-1)


@case(style="log_softmax over the classes into F.nll_loss")
def case_ok_log_softmax_nll() -> Setup:
    torch.manual_seed(0)
    return Setup(_LogSoftmaxClassifier(), _x(8, 32), _labels(8, 5), F.nll_loss)


class _Conv1dPermute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 64, 3, padding=1)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        h = torch.relu(self.conv(x.permute(0, 2, 1)))
        return self.head(h.amax(dim=-1))


@case(style="Conv1d over (B, T, C) with the right permute")
def case_ok_conv1d_permute() -> Setup:
    torch.manual_seed(0)
    return Setup(_Conv1dPermute(), _x(8, 10, 16), _labels(8, 3), F.cross_entropy)


class _TokenTagger(nn.Module):
    """Per-token classes: logits (B, C, T) against targets (B, T)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 64)
        self.lstm = nn.LSTM(64, 48, batch_first=True, bidirectional=True)
        self.head = nn.Linear(96, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out).transpose(1, 2)


@case(style="token tagging, cross_entropy over (B, C, T)")
def case_ok_token_tagger() -> Setup:
    torch.manual_seed(0)
    tokens = torch.randint(0, 30, (8, 6), generator=_gen(13))
    target = torch.randint(0, 5, (8, 6), generator=_gen(14))
    return Setup(_TokenTagger(), tokens, target, F.cross_entropy)


@case(style="L1 regression (no chance level: init_loss may skip)")
def case_ok_l1_regression() -> Setup:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 2))
    return Setup(model, _x(8, 32), _x(8, 2, seed=15), nn.L1Loss())


BUG_CASES = [c for c in ZOO if c.fails]
OK_CASES = [c for c in ZOO if not c.fails]
