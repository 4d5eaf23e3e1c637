from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from torchscope import _nested


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
