"""Edge-case models of the kind introspection libraries collect in their own test suites.

Each entry builds a fresh, small model and the call to make on it. ``issue_class`` names the
class of issue 25 that the case exercises (1: forwards that rebind their buffers or
parameters, 2: tensors inside objects, 3: forwards that return no tensor, 4: TorchScript
parts, 5: lazy layers, 6: no input); ``None`` is for the other awkward shapes of models
(shared modules, pruning and parametrisations, parameter containers, packed sequences, half
precision, keyword-only arguments, ...). ``tests/test_edge_zoo.py`` checks every entry
against PyTorch itself for ``summary``, ``module_graph`` and ``autograd_graph_of``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal
from torch.nn.utils import parametrizations, parametrize, prune
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

CALLS = ("summary", "module_graph", "autograd_graph_of")


@dataclass(frozen=True)
class Inputs:
    """Positional and keyword arguments of one forward call."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EdgeCase:
    """One model and the call to make on it.

    Attributes:
        make_input: the arguments of the call; None: the model is inspected without an input.
        refusals: call name -> regex of the clear error that call may give instead of a
            result (the model must still be left as found).
    """

    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[], Inputs] | None
    issue_class: int | None = None
    refusals: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return self.name


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _tokens(*shape: int, high: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def _x(*shape: int, dtype: torch.dtype = torch.float32) -> Callable[[], Inputs]:
    return lambda: Inputs((_randn(*shape, dtype=dtype),))


def _quietly(build: Callable[[], Any]) -> Any:
    """Build something whose constructor PyTorch deprecates (torch.jit, the old weight_norm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return build()


# --------------------------------------------------------------------------------------------
# class 1: forwards that rebind or mutate their own buffers and parameters


class StepCounter(nn.Module):
    """Counts calls per output unit in a buffer of more than one element, rebinding it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count = self.count + 1
        return self.lin(x)


class EmaBuffer(nn.Module):
    """Keeps an exponential moving average of its inputs, as a normaliser does."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean = 0.99 * self.mean + 0.01 * x.detach().mean(0)
        self.steps += 1  # in place on a 0-d buffer
        return self.lin(x - self.mean)


class ActNorm(nn.Module):
    """Glow's ActNorm: data-dependent initialisation of its parameters on the first call."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels))
        self.log_scale = nn.Parameter(torch.zeros(1, channels))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.initialized.item() == 0:
            with torch.no_grad():
                self.loc.copy_(-x.mean(0, keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(0, keepdim=True) + 1e-6))
                self.initialized.fill_(1)
        return (x + self.loc) * torch.exp(self.log_scale)


class OptimizerInForward(nn.Module):
    """Takes an optimizer step on its own weights inside forward (test-time adaptation)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            loss = self.lin(x.detach()).pow(2).mean()
            grads = torch.autograd.grad(loss, list(self.lin.parameters()))
        with torch.no_grad():
            for p, g in zip(self.lin.parameters(), grads, strict=True):
                p.data.add_(g, alpha=-0.1)
        return self.lin(x)


class ReinitialisesInForward(nn.Module):
    """Re-initialises part of its weight in forward (dead-unit resets), through ``.data``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nn.init.kaiming_uniform_(self.lin.weight.data[:1])  # draws from the global RNG
        self.lin.bias.data[1:] = 0.0
        return self.lin(x)


class RebindsParameter(nn.Module):
    """Replaces a parameter by a new one in forward (a 'reset' written in the wrong place)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale = nn.Parameter(self.scale.detach() * 2)
        return self.lin(x * self.scale)


class CachesAndCounts(nn.Module):
    """Registers a buffer on its first call and counts calls in a plain Python attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not hasattr(self, "last"):
            self.register_buffer("last", x.detach().clone(), persistent=False)
        return self.lin(x)


class FreesInitCache(nn.Module):
    """Uses a buffer once, on the first call, then deletes it to free its memory."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("warm_start", torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "warm_start"):
            x = x + self.warm_start
            del self.warm_start
        return self.lin(x)


class RebindsThenRaises(nn.Module):
    """Rebinds its step-counter buffer, then finds the batch bad and raises."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("seen", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = self.seen + x.detach().abs().sum(0)
        self.lin.extra = torch.ones(1)  # a tensor attribute added to a child, then the error
        if x.shape[0] < 4:
            raise ValueError(f"bad batch: need at least 4 rows, got {x.shape[0]}")
        return self.lin(x)


_RAISES = r"(?s)forward pass failed.*ValueError: bad batch"


# --------------------------------------------------------------------------------------------
# class 2: tensors inside objects


class CategoricalPolicy(nn.Module):
    """A discrete policy returning a torch.distributions.Categorical."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 5))

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.body(obs))


class GaussianActorCritic(nn.Module):
    """A continuous actor-critic: (Normal distribution over actions, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 16)
        self.mu = nn.Linear(16, 3)
        self.log_std = nn.Parameter(torch.zeros(3))
        self.value = nn.Linear(16, 1)

    def forward(self, obs: torch.Tensor) -> tuple[Independent, torch.Tensor]:
        h = torch.tanh(self.trunk(obs))
        dist = Independent(Normal(self.mu(h), self.log_std.exp().expand(obs.shape[0], 3)), 1)
        return dist, self.value(h)


class Detections:
    """A plain object holding tensors as attributes (what detection heads return)."""

    def __init__(self, boxes: torch.Tensor, scores: torch.Tensor, label: str) -> None:
        self.boxes = boxes
        self.scores = scores
        self.label = label


class DetectionHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.boxes = nn.Linear(8, 4)
        self.scores = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> Detections:
        return Detections(self.boxes(x), self.scores(x).sigmoid(), "boxes")


class KeyValueCache:
    """Shaped like Hugging Face's DynamicCache: per-layer key and value lists."""

    def __init__(self) -> None:
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.key_cache.append(key)
        self.value_cache.append(value)


class CachingDecoder(nn.Module):
    """A two-layer decoder returning (logits, cache), as generate() expects."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(2))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, KeyValueCache]:
        h = self.embed(tokens)
        cache = KeyValueCache()
        for layer in self.layers:
            key, value = layer(h).chunk(2, dim=-1)
            cache.update(key, value)
            h = h + torch.softmax(key @ value.transpose(-1, -2), -1) @ value
        return self.head(h), cache


class CacheLayer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = keys
        self.values = values


class LayeredCache:
    """Shaped like newer Hugging Face caches: a list of per-layer objects, each holding
    tensors, and a back-reference from every layer to the cache (a cycle)."""

    def __init__(self) -> None:
        self.layers: list[CacheLayer] = []

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        layer = CacheLayer(keys, values)
        layer.cache = self  # type: ignore[attr-defined]
        self.layers.append(layer)


class LayeredCacheDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.kv = nn.ModuleList(nn.Linear(8, 16) for _ in range(2))

    def forward(self, tokens: torch.Tensor) -> dict[str, Any]:
        h = self.embed(tokens)
        cache = LayeredCache()
        for proj in self.kv:
            keys, values = proj(h).chunk(2, -1)
            cache.append(keys, values)
            h = h + values
        return {"last_hidden_state": h, "past_key_values": cache}


class SlotsState:
    """An object whose tensors live in __slots__, not in __dict__."""

    __slots__ = ("cell", "hidden")

    def __init__(self, hidden: torch.Tensor, cell: torch.Tensor) -> None:
        self.hidden = hidden
        self.cell = cell


class SlotsOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 6)

    def forward(self, x: torch.Tensor) -> SlotsState:
        return SlotsState(*self.cell(x))


# --------------------------------------------------------------------------------------------
# class 3: forwards that return no tensor


class ReturnsNone(nn.Module):
    """Computes, then returns nothing (a forward used for its hooks or its prints)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> None:
        self.lin(x).relu()


class ReturnsString(nn.Module):
    """A classifier returning the name of the predicted class."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.names = ("cat", "dog", "bird")

    def forward(self, x: torch.Tensor) -> str:
        return self.names[int(self.lin(x).sum(0).argmax())]


class ReturnsClass(nn.Module):
    """Returns a class (a model factory's forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> type:
        return nn.Linear if self.lin(x).mean() > 0 else nn.Identity


class ReturnsInt(nn.Module):
    """Returns a Python number (a metric computed inside forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> int:
        return int(self.lin(x).argmax(-1).sum().item())


# --------------------------------------------------------------------------------------------
# class 4: TorchScript parts


class ScriptedChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.block = _quietly(
            lambda: torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()))
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class TracedChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.features = _quietly(lambda: torch.jit.trace(conv, torch.zeros(1, 3, 8, 8)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _fully_scripted() -> nn.Module:
    return _quietly(lambda: torch.jit.script(nn.Sequential(nn.Linear(4, 6), nn.Tanh())))


def _fully_traced() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    return _quietly(lambda: torch.jit.trace(model, torch.zeros(1, 1, 6, 6)))


# no hook reaches inside a TorchScript model: module_graph may refuse one, naming itself
_SCRIPT_REFUSAL = {"module_graph": r"(?s)module_graph.*(TorchScript|ScriptModule|scripted)"}


# --------------------------------------------------------------------------------------------
# class 5: lazy layers


def _lazy_mlp() -> nn.Module:
    return nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))


def _lazy_cnn() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )


class LazyHead(nn.Module):
    """A pretrained-style backbone with a lazy head sized by whatever the backbone gives."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 10), nn.GELU())
        self.head = nn.LazyLinear(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------------------------
# class 6: no input (and models whose parameters alone are interesting)


class FrozenBackbone(nn.Module):
    """Fine-tuning: a frozen backbone and a trainable head, a tied pair of projections."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.proj = nn.Linear(4, 4)
        self.unproj = nn.Linear(4, 4)
        self.unproj.weight = self.proj.weight  # tied
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).mean((2, 3))
        return self.head(self.unproj(self.proj(h)))


# --------------------------------------------------------------------------------------------
# the other awkward shapes: shared modules, pruning, parametrisations, parameter containers,
# packed sequences, half precision, keyword-only and variadic arguments, odd containers


class SharedInNestedLists(nn.Module):
    """One Linear registered in two nested ModuleLists and called from both."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(4, 4)
        self.stages = nn.ModuleList(
            [nn.ModuleList([shared, nn.ReLU()]), nn.ModuleList([nn.Linear(4, 4), shared])]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            for layer in stage:
                x = layer(x)
        return x


class SharedViaPlainList(nn.Module):
    """Modules kept in a plain Python list of lists: called, but not registered."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.table = [[self.inner, nn.Tanh()], [self.inner]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for row in self.table:
            for layer in row:
                x = layer(x)
        return x


def _pruned() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.random_unstructured(model[2], "bias", amount=0.5)
    return model


class Symmetric(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.triu() + weight.triu(1).transpose(0, 1)


def _parametrized() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
    parametrize.register_parametrization(model[0], "weight", Symmetric())
    parametrizations.orthogonal(model[2])
    return model


def _weight_norm_new() -> nn.Module:
    return nn.Sequential(
        parametrizations.weight_norm(nn.Linear(4, 6)),
        nn.ReLU(),
        parametrizations.spectral_norm(nn.Linear(6, 2)),
    )


def _weight_norm_old() -> nn.Module:
    conv = _quietly(lambda: nn.utils.weight_norm(nn.Conv1d(3, 4, 3)))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 2))


class ParameterContainers(nn.Module):
    """Weights in a ParameterList and a ParameterDict, one frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(4, 4) * 0.1) for _ in range(3))
        self.extra = nn.ParameterDict(
            {"bias": nn.Parameter(torch.zeros(4)), "gain": nn.Parameter(torch.ones(4))}
        )
        self.extra["gain"].requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w in self.weights:
            x = torch.tanh(x @ w + self.extra["bias"])
        return x * self.extra["gain"]


class PackedLSTM(nn.Module):
    """Takes a PackedSequence and returns the LSTM's (PackedSequence, (h, c))."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)

    def forward(self, packed: PackedSequence) -> tuple[PackedSequence, tuple[torch.Tensor, ...]]:
        return self.lstm(packed)


def _packed_input() -> Inputs:
    padded = _randn(3, 5, 4)
    lengths = torch.tensor([5, 3, 2])
    return Inputs((pack_padded_sequence(padded, lengths, batch_first=True),))


class PacksInside(nn.Module):
    """Packs padded sequences by their lengths, runs a GRU and pads the result again."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True, bidirectional=True)
        self.out = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.out(padded)


def _half_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)).half()


def _bfloat16_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).to(torch.bfloat16)


class KeywordOnly(nn.Module):
    """forward(x, /, *, mask, scale=1.0): positional-only and keyword-only arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, /, *, mask: torch.Tensor, scale: float = 1.0) -> Any:
        return self.lin(x).masked_fill(mask, 0.0) * scale


class Variadic(nn.Module):
    """forward(*xs, **named): any number of tensors, positional and by name."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, *xs: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return self.lin(sum(xs) + sum(named.values()))


@dataclass
class CausalLMOutput(OrderedDict):  # type: ignore[type-arg]
    """Shaped like Hugging Face's ModelOutput: a dataclass that is also an ordered dict of
    its fields that are not None."""

    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("logits", "hidden_states", "attentions"):
            value = getattr(self, name)
            if value is not None:
                self[name] = value


@dataclass
class TinyConfig:
    """A Hugging Face style configuration object the model is built from."""

    vocab_size: int = 16
    hidden_size: int = 8
    num_layers: int = 2
    output_hidden_states: bool = True


class ConfiguredLM(nn.Module):
    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        c = self.config
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(c.hidden_size, 2, 16, dropout=0.0, batch_first=True)
            for _ in range(c.num_layers)
        )
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> CausalLMOutput:
        h = self.embed(input_ids)
        hidden = [h]
        padding = None if attention_mask is None else attention_mask == 0
        for block in self.blocks:
            h = block(h, src_key_padding_mask=padding)
            hidden.append(h)
        states = tuple(hidden) if self.config.output_hidden_states else None
        return CausalLMOutput(logits=self.lm_head(h), hidden_states=states)


class GreedyDecoder(nn.Module):
    """Generates three tokens greedily: returns (token ids, per-step scores)."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.cell = nn.GRUCell(8, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, start: torch.Tensor) -> dict[str, Any]:
        h = torch.zeros(start.shape[0], 8)
        token, generated, scores = start, [], []
        for _ in range(3):
            h = self.cell(self.embed(token), h)
            logits = self.head(h)
            token = logits.argmax(-1)
            generated.append(token)
            scores.append(logits)
        return {"sequences": torch.stack(generated, 1), "scores": scores, "finished": True}


class Split(NamedTuple):
    left: torch.Tensor
    right: torch.Tensor | None


class OddContainers(nn.Module):
    """Takes a list of tensors; returns a dict holding a namedtuple with a None, a nested
    list with an int, and a tensor seen twice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, parts: list[torch.Tensor]) -> dict[str, Any]:
        y = self.lin(torch.cat(parts, 0))
        left, right = y.chunk(2, 0)
        return {"split": Split(left, None), "nested": [[right, 3], (y, y)], "note": "ok"}


class InPlaceOnInput(nn.Module):
    """Modifies its input in place before using it (ReLU(inplace=True) first)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.lin(self.act(x))


class MixedFreezeModes(nn.Module):
    """A BatchNorm kept in eval mode (frozen statistics) inside a model in train mode, and a
    parameter-free buffer-only submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("unused_none", None)
        self.register_buffer("scale", torch.full((1, 4, 1, 1), 0.5), persistent=False)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.bn(self.conv(x)) * self.scale)


def _mixed_modes() -> nn.Module:
    model = MixedFreezeModes().train()
    model.bn.eval()
    return model


class ComplexLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, dtype=torch.complex64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).abs()


class UsesParameterDirectly(nn.Module):
    """Returns a parameter itself as one of its outputs (a learnt query, a cls token)."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lin(x), self.query


class KeywordOnlyDict(nn.Module):
    """forward(*, tokens, weights=None): called with a dict of keyword arguments only."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 6, mode="sum")
        self.out = nn.Linear(6, 2)

    def forward(
        self, *, tokens: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.out(self.bag(tokens, offsets, per_sample_weights=weights))


def _data_parallel() -> nn.Module:
    return nn.DataParallel(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))


def _with_user_hooks() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].register_forward_pre_hook(lambda module, args: (args[0] * 2,))
    model[2].register_forward_hook(lambda module, args, output: output + 1)
    model.register_forward_hook(lambda module, args, kwargs, output: output, with_kwargs=True)
    return model


class MonteCarloDropout(nn.Module):
    """Keeps its dropout active at inference (MC dropout): forward switches it to train."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.drop.train()
        return self.head(self.drop(self.lin(x)))


class PartlyNoGrad(nn.Module):
    """Computes a target under torch.no_grad() inside forward (a momentum/teacher branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(4, 3)
        self.teacher = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            target = self.teacher(x).softmax(-1)
        return self.student(x), target


class AutocastInside(nn.Module):
    """Runs its layer under CPU autocast to bfloat16, returning a bfloat16 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.lin(x)


class AttentionWithoutWeights(nn.Module):
    """nn.MultiheadAttention with need_weights=False returns (output, None)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.mha(x, x, x, need_weights=False)


class SparseOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).relu().to_sparse()


def _with_backward_hook() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    model[0].register_full_backward_hook(lambda module, grad_in, grad_out: None)
    return model


def _channels_last() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    return model.to(memory_format=torch.channels_last)


EDGE_ZOO: tuple[EdgeCase, ...] = (
    # 1
    EdgeCase("step_counter_buffer", StepCounter, _x(2, 4), 1),
    EdgeCase("ema_buffer", EmaBuffer, _x(3, 4), 1),
    EdgeCase("actnorm_data_init", ActNorm, _x(5, 4), 1),
    EdgeCase("optimizer_in_forward", OptimizerInForward, _x(3, 4), 1),
    EdgeCase("reinitialises_in_forward", ReinitialisesInForward, _x(2, 4), 1),
    EdgeCase("rebinds_parameter", RebindsParameter, _x(2, 4), 1),
    EdgeCase("caches_and_counts", CachesAndCounts, _x(2, 4), 1),
    EdgeCase("frees_init_cache", FreesInitCache, _x(2, 4), 1),
    EdgeCase("rebinds_then_raises", RebindsThenRaises, _x(2, 4), 1, dict.fromkeys(CALLS, _RAISES)),
    # 2
    EdgeCase("categorical_policy", CategoricalPolicy, _x(3, 6), 2),
    EdgeCase("gaussian_actor_critic", GaussianActorCritic, _x(3, 6), 2),
    EdgeCase("object_with_tensors", DetectionHead, _x(2, 8), 2),
    EdgeCase("kv_cache_object", CachingDecoder, lambda: Inputs((_tokens(2, 5),)), 2),
    EdgeCase("slots_object", SlotsOutput, _x(2, 4), 2),
    EdgeCase("layered_cache_cycle", LayeredCacheDecoder, lambda: Inputs((_tokens(2, 3),)), 2),
    # 3
    EdgeCase("returns_none", ReturnsNone, _x(2, 4), 3),
    EdgeCase("returns_string", ReturnsString, _x(2, 4), 3),
    EdgeCase("returns_class", ReturnsClass, _x(2, 4), 3),
    EdgeCase("returns_int", ReturnsInt, _x(2, 4), 3),
    # 4
    EdgeCase("scripted_child", ScriptedChild, _x(3, 4), 4),
    EdgeCase("traced_child", TracedChild, _x(2, 3, 8, 8), 4),
    EdgeCase("fully_scripted", _fully_scripted, _x(2, 4), 4, _SCRIPT_REFUSAL),
    EdgeCase("fully_traced", _fully_traced, _x(1, 1, 6, 6), 4, _SCRIPT_REFUSAL),
    # 5
    EdgeCase("lazy_mlp", _lazy_mlp, _x(2, 5), 5),
    EdgeCase("lazy_cnn", _lazy_cnn, _x(2, 3, 6, 6), 5),
    EdgeCase("lazy_head", LazyHead, _x(2, 6), 5),
    # 6
    EdgeCase("no_input_frozen_backbone", FrozenBackbone, None, 6),
    EdgeCase("no_input_parametrized", _parametrized, None, 6),
    EdgeCase("no_input_scripted_child", ScriptedChild, None, 6),
    EdgeCase("no_input_lazy_head", LazyHead, None, 6),
    # the rest
    EdgeCase("frozen_backbone_tied", FrozenBackbone, _x(2, 3, 6, 6)),
    EdgeCase("shared_in_nested_lists", SharedInNestedLists, _x(2, 4)),
    EdgeCase("shared_via_plain_list", SharedViaPlainList, _x(2, 4)),
    EdgeCase("pruned", _pruned, _x(3, 6)),
    EdgeCase("parametrized", _parametrized, _x(2, 5)),
    EdgeCase("weight_norm_and_spectral_norm", _weight_norm_new, _x(2, 4)),
    EdgeCase("old_weight_norm", _weight_norm_old, _x(2, 3, 8)),
    EdgeCase("parameter_containers", ParameterContainers, _x(2, 4)),
    EdgeCase("packed_sequence_lstm", PackedLSTM, _packed_input),
    EdgeCase(
        "packs_inside", PacksInside, lambda: Inputs((_randn(3, 5, 4), torch.tensor([2, 5, 3])))
    ),
    EdgeCase("float16_mlp", _half_mlp, _x(2, 8, dtype=torch.float16)),
    EdgeCase("bfloat16_cnn", _bfloat16_cnn, _x(1, 3, 8, 8, dtype=torch.bfloat16)),
    EdgeCase(
        "keyword_only",
        KeywordOnly,
        lambda: Inputs((_randn(2, 6),), {"mask": _randn(2, 6, seed=3) > 0, "scale": 0.5}),
    ),
    EdgeCase(
        "variadic", Variadic, lambda: Inputs((_randn(2, 4), _randn(2, 4, seed=2)), {"z": _randn(4)})
    ),
    EdgeCase(
        "hf_style_lm",
        ConfiguredLM,
        lambda: Inputs((_tokens(2, 5, high=16),), {"attention_mask": torch.ones(2, 5)}),
    ),
    EdgeCase("greedy_decoder", GreedyDecoder, lambda: Inputs((_tokens(2, high=12),))),
    EdgeCase(
        "odd_containers",
        OddContainers,
        lambda: Inputs(([_randn(1, 4), _randn(1, 4, seed=4)],)),
    ),
    EdgeCase("inplace_on_input", InPlaceOnInput, _x(2, 4)),
    EdgeCase("mixed_freeze_modes", _mixed_modes, _x(2, 2, 5, 5)),
    EdgeCase("complex_weights", ComplexLinear, _x(2, 4, dtype=torch.complex64)),
    EdgeCase("returns_a_parameter", UsesParameterDirectly, _x(2, 4)),
    EdgeCase(
        "keyword_only_dict_embedding_bag",
        KeywordOnlyDict,
        lambda: Inputs(
            kwargs={
                "tokens": _tokens(7, high=30),
                "offsets": torch.tensor([0, 3]),
                "weights": _randn(7, seed=5),
            }
        ),
    ),
    EdgeCase("data_parallel_on_cpu", _data_parallel, _x(2, 4)),
    EdgeCase("user_hooks", _with_user_hooks, _x(2, 4)),
    EdgeCase("mc_dropout", MonteCarloDropout, _x(3, 4)),
    EdgeCase("partly_no_grad", PartlyNoGrad, _x(2, 4)),
    EdgeCase("autocast_inside", AutocastInside, _x(2, 4)),
    EdgeCase("attention_without_weights", AttentionWithoutWeights, _x(2, 3, 8)),
    EdgeCase("sparse_output", SparseOutput, _x(2, 4)),
    EdgeCase("user_backward_hook", _with_backward_hook, _x(2, 4)),
    EdgeCase(
        "channels_last",
        _channels_last,
        lambda: Inputs((_randn(1, 3, 6, 6).to(memory_format=torch.channels_last),)),
    ),
)

BY_NAME = {case.name: case for case in EDGE_ZOO}
assert len(BY_NAME) == len(EDGE_ZOO), "edge-zoo names must be unique"
