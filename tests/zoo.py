"""Models the tests share: torchvision classics, recurrent nets, transformers and awkward cases.

Each entry builds a fresh model and the input to call it with; sizes are small so that the
whole suite stays fast on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torchvision
from torch import nn

from torchscope.models import LeNet


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], Any]  # what summary(model, input) gets

    def __repr__(self) -> str:
        return self.name


def _images(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape, generator=torch.Generator().manual_seed(1))


class RecurrentHead(nn.Module):
    """An LSTM or GRU whose tuple output (output, state) is returned whole."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(input_size=8, hidden_size=16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out, state = self.rnn(x)
        return self.head(out[:, -1]), state


class TiedLanguageModel(nn.Module):
    """Embedding and output projection share one weight matrix."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.body(self.embed(tokens)))


class CallsTwice(nn.Module):
    """One Linear applied three times, plus a shared submodule registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.alias = self.act  # the same module object under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.act(self.block(x))
        return self.alias(x)


@dataclass
class Pair:
    first: torch.Tensor
    second: torch.Tensor


class Outputs(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor


class DictInOut(nn.Module):
    """Takes a dict, returns a dict holding a tuple, a namedtuple and a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(12, 6)
        self.text = nn.Embedding(20, 6)
        self.fuse = nn.Linear(12, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        a = self.image(batch["image"])
        b = self.text(batch["tokens"]).mean(dim=1)
        fused = self.fuse(torch.cat([a, b], dim=-1))
        return {"out": Outputs(fused, a), "pair": Pair(a, b), "both": (a, b)}


class KeywordModel(nn.Module):
    """Non-tensor keyword arguments must reach forward untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.calls: list[tuple[Any, ...]] = []

    def forward(
        self, x: torch.Tensor, *, scale: float, reduce: str = "none", mask: Any = None
    ) -> torch.Tensor:
        if not isinstance(scale, float) or reduce not in ("none", "sum") or mask is not None:
            raise TypeError(f"bad arguments {scale!r} {reduce!r} {mask!r}")
        y = self.proj(x) * scale
        return y.sum(dim=-1) if reduce == "sum" else y


class WithUnusedHead(nn.Module):
    """`aux` holds parameters but forward never calls it; `scale` is used functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.main = nn.Linear(4, 4)
        self.aux = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) * self.scale


def small_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )


def small_transformer() -> nn.Module:
    return nn.Transformer(
        d_model=16,
        nhead=2,
        num_encoder_layers=2,
        num_decoder_layers=1,
        dim_feedforward=32,
        batch_first=True,
    )


def meta_lenet() -> nn.Module:
    with torch.device("meta"):
        return LeNet()


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("lenet", LeNet, _images(2, 1, 28, 28)),
    ZooEntry(
        "resnet18", lambda: torchvision.models.resnet18(num_classes=10), _images(1, 3, 64, 64)
    ),
    ZooEntry(
        "mobilenet_v3_small",
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        _images(1, 3, 64, 64),
    ),
    ZooEntry(
        "densenet121", lambda: torchvision.models.densenet121(num_classes=10), _images(2, 3, 32, 32)
    ),
    ZooEntry("small_vit", small_vit, _images(2, 3, 32, 32)),
    ZooEntry("lstm", lambda: RecurrentHead(nn.LSTM), _images(2, 5, 8)),
    ZooEntry("gru", lambda: RecurrentHead(nn.GRU), _images(2, 5, 8)),
    ZooEntry("transformer", small_transformer, lambda: (_images(2, 5, 16)(), _images(2, 3, 16)())),
    ZooEntry(
        "tied_lm",
        TiedLanguageModel,
        lambda: torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2)),
    ),
    ZooEntry("calls_twice", CallsTwice, _images(3, 8)),
    ZooEntry(
        "dict_in_out",
        DictInOut,
        lambda: {
            "batch": {
                "image": _images(2, 12)(),
                "tokens": torch.randint(0, 20, (2, 4), generator=torch.Generator().manual_seed(3)),
            }
        },
    ),
    ZooEntry(
        "keyword_model",
        KeywordModel,
        lambda: {"x": _images(2, 6)(), "scale": 2.0, "reduce": "sum", "mask": None},
    ),
    ZooEntry("unused_head", WithUnusedHead, _images(2, 4)),
    ZooEntry("meta_lenet", meta_lenet, lambda: torch.empty(2, 1, 28, 28, device="meta")),
)

BY_NAME = {entry.name: entry for entry in ZOO}


def call(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` the way summary interprets ``inputs`` (tensor / tuple of args / dict of kwargs)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
