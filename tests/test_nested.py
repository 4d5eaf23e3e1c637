from __future__ import annotations

import collections
import types
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    TransformedDistribution,
)
from torch.utils import _pytree

from torchscope._util import nested as _nested


class Point(NamedTuple):
    x: torch.Tensor
    label: str


@dataclass
class Batch:
    images: torch.Tensor
    meta: dict
    size: int = 3


def test_tensors_in_order_through_every_container():
    a, b, c, d = (torch.zeros(i + 1) for i in range(4))
    nested = {"p": Point(a, "cat"), "batch": Batch(b, {"k": [c, None, 5]}), "last": (d,)}
    assert [t.shape[0] for t in _nested.tensors(nested)] == [1, 2, 3, 4]
    assert _nested.shapes(nested) == ((1,), (2,), (3,), (4,))


def test_cycles_and_deep_nesting_do_not_recurse_forever():
    cyclic: list = [torch.ones(2)]
    cyclic.append(cyclic)
    assert _nested.shapes(cyclic) == ((2,),)
    deep: list = [torch.ones(1)]
    for _ in range(20_000):
        deep = [deep]
    assert _nested.shapes(deep) == ((1,),)


def test_tensor_bytes_counts_a_tensor_once():
    t = torch.ones(10, dtype=torch.float64)
    assert _nested.tensor_bytes((t, t, {"again": t})) == 80
    assert _nested.tensor_bytes([torch.ones(3, dtype=torch.int8), "text"]) == 3


def test_map_tensors_rebuilds_without_touching_the_original():
    original = {
        "p": Point(torch.ones(2), "dog"),
        "b": Batch(torch.ones(3), {"n": 1}),
        "l": [torch.ones(1), 7],
    }
    mapped = _nested.map_tensors(original, lambda t: t * 2)
    assert isinstance(mapped["p"], Point) and mapped["p"].label == "dog"
    assert isinstance(mapped["b"], Batch) and mapped["b"].meta == {"n": 1} and mapped["b"].size == 3
    assert torch.equal(mapped["b"].images, torch.full((3,), 2.0))
    assert mapped["l"][1] == 7
    assert torch.equal(original["l"][0], torch.ones(1))


def test_is_namedtuple():
    assert _nested.is_namedtuple(Point(torch.ones(1), "x"))
    assert not _nested.is_namedtuple((1, 2))


# --- tensors inside objects (issue 25, class 2) ---


class Cache:
    """A Hugging Face-style cache: a plain object with lists of tensors."""

    def __init__(self, layers: int) -> None:
        self.key_cache = [torch.zeros(1, 2, i + 1) for i in range(layers)]
        self.value_cache = [torch.ones(1, 2, i + 1) for i in range(layers)]
        self.seen_tokens = layers


class Slotted:
    __slots__ = ("__private", "hidden", "unset")

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden
        self.__private = hidden * 2


class Node:
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value
        self.parent: Node | None = None
        self.children: list[Node] = []


class Pair:
    """Registered with torch's pytree (as torch.export users do): walked by its keys."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        self.first, self.second = first, second


_pytree.register_pytree_node(
    Pair,
    lambda p: ([p.first, p.second], None),
    lambda values, _: Pair(*values),
    flatten_with_keys_fn=lambda p: (
        [(_pytree.GetAttrKey("first"), p.first), (_pytree.GetAttrKey("second"), p.second)],
        None,
    ),
)


def named_shapes(obj: object) -> dict[str, tuple[int, ...]]:
    return {path: tuple(t.shape) for path, t in _nested.named_tensors(obj, "out")}


def test_distributions_are_walked_by_the_parameters_they_were_given():
    loc, scale = torch.zeros(2, 3), torch.ones(2, 3)
    assert named_shapes(Normal(loc, scale)) == {"out.loc": (2, 3), "out.scale": (2, 3)}
    categorical = Categorical(logits=torch.zeros(4, 5))
    # probs is computed lazily on first read: the walk must not compute (and cache) it, and
    # the alias _param (the logits again) is not listed twice
    assert named_shapes(categorical) == {"out.logits": (4, 5)}
    assert "probs" not in vars(categorical)
    assert named_shapes(Categorical(probs=torch.full((3,), 1 / 3))) == {"out.probs": (3,)}


def test_wrapping_distributions_are_walked_to_the_ones_they_wrap():
    normal = Normal(torch.zeros(2, 3), torch.ones(2, 3))
    assert named_shapes(Independent(normal, 1)) == {
        "out.base_dist.loc": (2, 3),
        "out.base_dist.scale": (2, 3),
    }
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(2, 3)), normal)
    assert list(named_shapes(mixture)) == [
        "out._mixture_distribution.logits",
        "out._component_distribution.loc",
        "out._component_distribution.scale",
    ]
    shifted = TransformedDistribution(normal, [AffineTransform(torch.ones(3), 2.0)])
    assert named_shapes(shifted) == {
        "out.transforms[0].loc": (3,),
        "out.base_dist.loc": (2, 3),
        "out.base_dist.scale": (2, 3),
    }


def test_plain_objects_are_walked_by_attribute_path():
    output = types.SimpleNamespace(logits=torch.zeros(2, 7), cache=Cache(2), note="text")
    assert named_shapes(output) == {
        "out.logits": (2, 7),
        "out.cache.key_cache[0]": (1, 2, 1),
        "out.cache.key_cache[1]": (1, 2, 2),
        "out.cache.value_cache[0]": (1, 2, 1),
        "out.cache.value_cache[1]": (1, 2, 2),
    }
    assert _nested.shapes(output) == tuple(named_shapes(output).values())
    slotted = Slotted(torch.ones(3))
    assert named_shapes(slotted) == {"out.hidden": (3,), "out._Slotted__private": (3,)}


def test_modules_classes_functions_and_lookalike_proxies_are_not_walked_into():
    class Proxy:  # answers every attribute (a mock, a lazy proxy): never asked
        def __getattr__(self, name: str) -> torch.Tensor:
            return torch.ones(1)

    holder = types.SimpleNamespace(
        model=nn.Linear(3, 4), kind=nn.Linear, fn=torch.relu, proxy=Proxy(), out=torch.ones(2)
    )
    assert named_shapes(holder) == {"out.out": (2,)}


def test_pytree_registered_types_are_walked_by_their_keys():
    assert named_shapes(Pair(torch.zeros(1), torch.zeros(2))) == {
        "out.first": (1,),
        "out.second": (2,),
    }
    assert named_shapes(collections.deque([torch.zeros(3)])) == {"out[0]": (3,)}


def test_object_cycles_are_walked_once():
    root = Node(torch.zeros(1))
    child = Node(torch.zeros(2))
    child.parent, root.children = root, [child]
    root.parent = root
    assert named_shapes(root) == {"out.value": (1,), "out.children[0].value": (2,)}


def test_object_walks_are_bounded_in_depth_and_size():
    # a chain deeper than MAX_OBJECT_DEPTH: the tensors down there are not reached
    chain = Node(torch.zeros(0))
    for _ in range(_nested.MAX_OBJECT_DEPTH):
        outer = Node(torch.zeros(0))
        outer.children = [chain]
        chain = outer
    assert len(list(_nested.tensors(chain))) == _nested.MAX_OBJECT_DEPTH
    # a lattice of 100 attributes per level all pointing at the next: 100**6 paths unbounded
    level: object = types.SimpleNamespace(t=torch.ones(1))
    for _ in range(8):
        level = types.SimpleNamespace(**{f"a{i}": level for i in range(100)})
    assert len(list(_nested.tensors(level))) <= _nested.MAX_OBJECT_VALUES
    # a huge container behind an object is a leaf; the same container on its own is walked
    many = [torch.zeros(0)] * (_nested.MAX_OBJECT_VALUES + 1)
    assert list(_nested.tensors(types.SimpleNamespace(many=many))) == []
    assert len(list(_nested.tensors(many))) == len(many)


def test_map_tensors_copies_objects_holding_tensors_and_keeps_the_rest():
    output = types.SimpleNamespace(cache=Cache(1), config=types.SimpleNamespace(size=3))
    mapped = _nested.map_tensors(output, lambda t: t + 1)
    assert mapped is not output and mapped.cache is not output.cache
    assert mapped.config is output.config  # nothing to replace: not copied
    assert torch.equal(mapped.cache.value_cache[0], torch.full((1, 2, 1), 2.0))
    assert torch.equal(output.cache.value_cache[0], torch.ones(1, 2, 1))  # original untouched
    assert mapped.cache.seen_tokens == 1
    normal = Normal(torch.zeros(2), torch.ones(2))
    moved = _nested.map_tensors(normal, lambda t: t.double())
    assert isinstance(moved, Normal) and moved.mean.dtype == torch.float64
    assert normal.loc.dtype == torch.float32
    slotted = _nested.map_tensors(Slotted(torch.ones(1)), lambda t: t * 3)
    assert torch.equal(slotted.hidden, torch.full((1,), 3.0))
    pair = _nested.map_tensors(Pair(torch.ones(1), torch.ones(2)), lambda t: t * 0)
    assert isinstance(pair, Pair) and torch.equal(pair.second, torch.zeros(2))


def test_map_tensors_survives_cycles_and_deep_nesting():
    root = Node(torch.ones(1))
    root.parent = root
    mapped = _nested.map_tensors(root, lambda t: t * 2)
    assert torch.equal(mapped.value, torch.full((1,), 2.0))
    assert mapped.parent is root  # where the cycle closes, the original
    cyclic: list = [torch.ones(2)]
    cyclic.append(cyclic)
    assert torch.equal(_nested.map_tensors(cyclic, lambda t: t * 2)[0], torch.full((2,), 2.0))
    deep: list = [torch.ones(1)]
    for _ in range(20_000):
        deep = [deep]
    inner = _nested.map_tensors(deep, lambda t: t * 5)
    for _ in range(20_000):
        inner = inner[0]
    assert torch.equal(inner[0], torch.full((1,), 5.0))


def test_every_path_evaluates_back_to_its_tensor_and_the_walk_reads_no_property():
    class Watched:
        reads = 0

        def __init__(self) -> None:
            self.state = {"h": torch.zeros(1), 3: [torch.zeros(2)]}

        @property
        def computed(self) -> torch.Tensor:
            type(self).reads += 1
            return torch.zeros(9)

    out = types.SimpleNamespace(
        dist=Independent(Normal(torch.zeros(2), torch.ones(2)), 1),
        slots=Slotted(torch.ones(3)),
        pair=Pair(torch.ones(1), torch.ones(4)),
        watched=Watched(),
        points=[Point(torch.ones(5), "p")],
    )
    found = list(_nested.named_tensors(out, "out"))
    assert len(found) == 9
    for path, tensor in found:
        assert eval(path, {"out": out}) is tensor, path
    assert Watched.reads == 0
