"""What the model returns: every tensor in it is seen by summary, module_graph and
autograd_graph_of, however it is held (issue 25, classes 2 and 3).

PyTorch is the oracle: each case names, for the model's real output, where its tensors are;
the three calls must report exactly those paths and shapes, and leave the model as found.
"""

from __future__ import annotations

import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal
from torch.utils import _pytree

import torchscope
from tests.state import assert_unchanged, snapshot
from torchscope.errors import TorchscopeWarning


class ModelOutput(OrderedDict):
    """Hugging Face's ModelOutput in miniature (transformers is not a dependency): a dataclass that is also an OrderedDict of
    its set fields, registered with torch's pytree by every subclass."""

    def __init_subclass__(cls) -> None:
        _pytree.register_pytree_node(
            cls,
            lambda out: (list(out.values()), list(out.keys())),
            lambda values, keys: cls(**dict(zip(keys, values, strict=True))),
        )

    def __post_init__(self) -> None:
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is not None:
                self[field.name] = value


@dataclass
class LMOutput(ModelOutput):
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    attentions: Any = None


class DynamicCache:
    """A cache as Hugging Face's: a plain object with one tensor per layer in lists."""

    def __init__(self) -> None:
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        self._seen_tokens = 0

    def update(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.key_cache.append(key)
        self.value_cache.append(value)
        self._seen_tokens = key.shape[-2]


class TinyLM(nn.Module):
    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 16) for _ in range(layers))
        self.head = nn.Linear(8, 11)

    def forward(self, ids: torch.Tensor) -> LMOutput:
        h = self.embed(ids)
        cache = DynamicCache()
        for block in self.blocks:
            key, value = block(h).chunk(2, dim=-1)
            cache.update(key, value)
            h = h + value
        return LMOutput(logits=self.head(h), past_key_values=cache)


class GaussianPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Linear(4, 2)
        self.log_std = nn.Parameter(torch.zeros(2))

    def forward(self, obs: torch.Tensor) -> Normal:
        mu = self.mu(obs)
        return Normal(mu, self.log_std.exp().expand_as(mu))


class CategoricalPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Linear(4, 3)

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits(obs))


@dataclass
class ActorCriticOut:
    dist: Distribution
    value: torch.Tensor


class ActorCritic(GaussianPolicy):
    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(4, 1)

    def forward(self, obs: torch.Tensor) -> ActorCriticOut:  # type: ignore[override]
        return ActorCriticOut(Independent(super().forward(obs), 1), self.critic(obs))


class Detection:
    """A plain result object, as detection and segmentation code returns."""

    def __init__(self, boxes: torch.Tensor, scores: torch.Tensor) -> None:
        self.boxes = boxes
        self.scores = scores
        self.extra = {"features": [boxes.sum(-1)]}
        self.label = "person"


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Linear(4, 4)
        self.score = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> Detection:
        return Detection(self.box(x), self.score(x).squeeze(-1))


class Namespaced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> types.SimpleNamespace:
        y = self.fc(x)
        return types.SimpleNamespace(out=y, pair=(y.relu(), "tag"))


@dataclass
class Case:
    model: Callable[[], nn.Module]
    input: torch.Tensor
    # where the tensors are in the model's real output: the oracle
    where: Callable[[Any], dict[str, torch.Tensor]]


CASES = {
    "hf_model_output_with_cache": Case(
        TinyLM,
        torch.tensor([[1, 2, 3]]),
        lambda out: {
            "output['logits']": out.logits,
            "output['past_key_values'].key_cache[0]": out.past_key_values.key_cache[0],
            "output['past_key_values'].key_cache[1]": out.past_key_values.key_cache[1],
            "output['past_key_values'].value_cache[0]": out.past_key_values.value_cache[0],
            "output['past_key_values'].value_cache[1]": out.past_key_values.value_cache[1],
        },
    ),
    "normal": Case(
        GaussianPolicy,
        torch.randn(5, 4),
        lambda out: {"output.loc": out.loc, "output.scale": out.scale},
    ),
    "categorical": Case(
        CategoricalPolicy, torch.randn(5, 4), lambda out: {"output.logits": out.logits}
    ),
    "dataclass_holding_a_distribution": Case(
        ActorCritic,
        torch.randn(5, 4),
        lambda out: {
            "output.dist.base_dist.loc": out.dist.base_dist.loc,
            "output.dist.base_dist.scale": out.dist.base_dist.scale,
            "output.value": out.value,
        },
    ),
    "plain_object": Case(
        Detector,
        torch.randn(5, 4),
        lambda out: {
            "output.boxes": out.boxes,
            "output.scores": out.scores,
            "output.extra['features'][0]": out.extra["features"][0],
        },
    ),
    "simple_namespace": Case(
        Namespaced,
        torch.randn(2, 4),
        lambda out: {"output.out": out.out, "output.pair[0]": out.pair[0]},
    ),
}


def oracle(case: Case) -> dict[str, tuple[int, ...]]:
    model = case.model()
    expected = {path: tuple(t.shape) for path, t in case.where(model(case.input)).items()}
    assert expected, "the oracle names no tensor"
    return expected


@pytest.mark.parametrize("name", CASES)
def test_summary_sees_every_output_tensor(name: str) -> None:
    case = CASES[name]
    expected = oracle(case)  # before the snapshot: building a model draws from the RNG
    model = case.model()
    before = snapshot(model)
    result = torchscope.summary(model, case.input)
    assert result.output_shapes == tuple(expected.values())
    assert_unchanged(before, model)


@pytest.mark.parametrize("name", CASES)
def test_module_graph_has_a_node_per_output_tensor(name: str) -> None:
    case = CASES[name]
    expected = oracle(case)  # before the snapshot: building a model draws from the RNG
    model = case.model()
    before = snapshot(model)
    graph = torchscope.module_graph(model, case.input)
    outputs = {node.label: node.shapes[0] for node in graph.nodes_of("output")}
    assert outputs == expected
    # each output node is fed by the module that produced it
    fed = {edge.dst for edge in graph.edges}
    assert all(node.key in fed for node in graph.nodes_of("output"))
    assert_unchanged(before, model)


@pytest.mark.parametrize("name", CASES)
def test_autograd_graph_of_reaches_every_output_tensor(name: str) -> None:
    case = CASES[name]
    expected = oracle(case)  # before the snapshot: building a model draws from the RNG
    model = case.model()
    before = snapshot(model)
    graph = torchscope.autograd_graph_of(model, case.input)
    outputs = {node.label: node.shapes[0] for node in graph.nodes_of("output")}
    assert outputs == expected
    # every parameter the output depends on is a leaf of the graph
    parameters = {node.label for node in graph.nodes_of("parameter")}
    assert parameters == {name for name, _ in model.named_parameters()}
    assert graph.warnings == ()
    assert_unchanged(before, model)


def test_a_distribution_output_is_trained_through_in_train_mode() -> None:
    # mode="train" runs backward from the outputs: a distribution's parameters are those
    model = GaussianPolicy()
    result = torchscope.summary(model, torch.randn(5, 4), mode="train")
    assert result.backward_flops is not None and result.backward_flops > 0


# --- forwards that return no tensor (issue 25, class 3) ---


class Logger(nn.Module):
    """Runs its layers and returns ``returns``: None, a string, a class, a dict of strings."""

    def __init__(self, returns: Any) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.returns = returns

    def forward(self, x: torch.Tensor) -> Any:
        self.fc(x)
        return self.returns


NO_TENSOR = {
    "none": (None, "returned None"),
    "string": ("done", "returned a str,"),
    "class": (nn.Linear, "returned the class Linear,"),
    "dict_of_strings": ({"status": "ok", "tags": ["a", "b"]}, "returned a dict holding no tensor"),
}


@pytest.mark.parametrize("name", NO_TENSOR)
def test_autograd_graph_of_a_forward_returning_no_tensor_is_empty_with_a_note(name: str) -> None:
    returns, says = NO_TENSOR[name]
    model = Logger(returns)
    before = snapshot(model)
    with pytest.warns(TorchscopeWarning, match=says) as caught:
        graph = torchscope.autograd_graph_of(model, torch.ones(2, 3))
    assert len(caught) == 1
    assert len(graph) == 0 and graph.edges == () and graph.title == "Logger"
    (note,) = graph.warnings
    assert says in note and "module_graph()" in note
    assert "autograd_graph(model(x))" not in note  # advice that would fail the same way
    assert note in str(graph)
    assert_unchanged(before, model)


@pytest.mark.parametrize("name", NO_TENSOR)
def test_summary_and_module_graph_of_a_forward_returning_no_tensor(name: str) -> None:
    model = Logger(NO_TENSOR[name][0])
    before = snapshot(model)
    result = torchscope.summary(model, torch.ones(2, 3))
    assert result.output_shapes == () and result.output_bytes == 0
    assert [layer.name for layer in result.layers] == ["", "fc"]
    graph = torchscope.module_graph(model, torch.ones(2, 3))
    assert graph.nodes_of("output") == ()
    assert [node.key for node in graph.nodes_of("module")] == ["fc"]
    assert_unchanged(before, model)


def test_autograd_graph_given_no_tensor_still_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match="outputs contains no tensor"):
        torchscope.autograd_graph(None)


# --- objects passed in: seen, and copied before the forward like tensors ---


class Batch:
    def __init__(self, image: torch.Tensor) -> None:
        self.image = image
        self.source = "camera"


class EditsItsInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, batch: Batch) -> torch.Tensor:
        batch.image.mul_(0)  # in place, on what it was given
        batch.seen = True
        return self.fc(batch.image)


def test_an_object_input_is_seen_and_neither_it_nor_its_tensors_are_changed() -> None:
    image = torch.ones(3, 4)
    batch = Batch(image)
    model = EditsItsInput()
    result = torchscope.summary(model, batch)
    assert result.input_shapes == ((3, 4),) and result.output_shapes == ((3, 2),)
    graph = torchscope.module_graph(model, batch)
    assert [node.label for node in graph.nodes_of("input")] == ["batch.image"]
    assert torch.equal(image, torch.ones(3, 4)) and batch.image is image
    assert vars(batch) == {"image": image, "source": "camera"}


# --- outputs that autograd cannot reach: the reason given, and no advice that cannot help ---


class TokensAndFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.fc(x)
        with torch.no_grad():
            frozen = self.fc(x)
        return logits, logits.argmax(-1), frozen


def test_autograd_graph_of_says_why_an_output_has_no_grad_fn_without_useless_advice() -> None:
    model = TokensAndFrozen()
    with pytest.warns(TorchscopeWarning) as caught:
        graph = torchscope.autograd_graph_of(model, torch.randn(2, 4))
    messages = [str(w.message) for w in caught]
    assert messages == list(graph.warnings)
    tokens, frozen = graph.warnings
    assert tokens.startswith("output[1] has no grad_fn: it is a int64 tensor")
    assert frozen.startswith("output[2] has no grad_fn: grad mode was on")
    # autograd_graph_of runs the forward with gradients enabled itself
    assert not any("run the forward with gradients enabled" in m for m in messages)
    assert [n.label for n in graph.nodes_of("output")] == ["output[0]"]


def test_autograd_graph_of_a_forward_run_under_no_grad_still_advises_enabling_it() -> None:
    model = TokensAndFrozen()
    with torch.no_grad(), torchscope.capture(model) as cap:
        outputs = model(torch.randn(2, 4))
    with pytest.warns(
        TorchscopeWarning, match=r"^output has no grad_fn.*run the forward with gradients"
    ):
        torchscope.autograd_graph(outputs[0], params=model, module=cap)
