"""Every real architecture of tests/real_zoo.py through ``torchscope.summary``, PyTorch the oracle.

For each entry a twin of the model (built again from the same seed) runs a plain forward
under ``torch.no_grad()``; its output gives the shapes the root row must list. The MACs
oracle is ``torch.utils.flop_counter.FlopCounterMode`` on that forward (FLOPs // 2), plus
analytic MACs, written here from the ops' shapes, for the MAC-bearing aten ops that
FlopCounterMode does not count in this torch; a test checks that every MAC-bearing op the
zoo runs is counted by one or the other, so that the oracle misses nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import torchscope

from .real_zoo import FAMILIES, REAL_ZOO, Inputs, RealModel

pytestmark = pytest.mark.slow

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# the oracle


def _output_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a forward's output: tuples, lists, dicts, dataclasses (ModelOutput)
    and plain objects by their attributes (DynamicCache and its layers), a cycle once."""
    found: list[torch.Tensor] = []
    on_path: set[int] = set()

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            found.append(item)
            return
        if item is None or isinstance(item, (str, bytes, int, float, bool, type, torch.Size)):
            return
        if id(item) in on_path:
            return
        on_path.add(id(item))
        if isinstance(item, (tuple, list)):
            children = list(item)
        elif isinstance(item, Mapping):  # ModelOutput is an OrderedDict of its set fields
            children = list(item.values())
        elif dataclasses.is_dataclass(item):
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        else:
            names = list(getattr(item, "__dict__", {}))
            for cls in type(item).__mro__:
                names += [s for s in getattr(cls, "__slots__", ()) if hasattr(item, s)]
            children = [getattr(item, n) for n in names]
        for child in children:
            visit(child)
        on_path.discard(id(item))

    visit(obj)
    return found


def _sdpa_macs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """query (B, H, L, E) times key (B, Hk, S, E), then by value (B, Hk, S, Ev): B*H*L*S*(E+Ev)."""
    query, key, value = args[:3]
    *batch, heads, length, e = query.shape
    s, ev = key.shape[-2], value.shape[-1]
    return math.prod(batch) * heads * length * s * (e + ev)


def _grouped_mm_macs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """(M, K) by (G, K, N) with offsets: M*K*N; (G, M, K) by (G, K, N): G*M*K*N."""
    a, b = args[:2]
    if a.dim() == 2 and b.dim() == 3:
        m, k = a.shape
        return m * k * b.shape[-1]
    if a.dim() == 3 and b.dim() == 3:
        g, m, k = a.shape
        return g * m * k * b.shape[-1]
    raise NotImplementedError(f"_grouped_mm of {tuple(a.shape)} by {tuple(b.shape)}")


# the MAC-bearing aten ops FlopCounterMode does not count on CPU in this torch
_MISSED_BY_FLOP_COUNTER: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], int]] = {
    "aten._scaled_dot_product_flash_attention_for_cpu": _sdpa_macs,
    "aten._grouped_mm": _grouped_mm_macs,
}
_MAC_BEARING = re.compile(r"mm|conv|attention|matmul|einsum|linear|lstm|gru|rnn_")
_NOT_MAC_BEARING = {"aten.upsample_bilinear2d", "aten._upsample_bilinear2d_aa"}


class _AtenLog(TorchDispatchMode):
    """Counts every aten op run, and adds the analytic MACs of those FlopCounterMode misses."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.missed_macs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        self.ops[name] += 1
        if name in _MISSED_BY_FLOP_COUNTER:
            self.missed_macs[name] += _MISSED_BY_FLOP_COUNTER[name](args, kwargs)
        return func(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Oracle:
    output_shapes: list[Shape]
    flop_counter_macs: int
    flop_counter_ops: frozenset[str]
    missed_macs: dict[str, int]
    aten_ops: dict[str, int]

    @property
    def macs(self) -> int:
        return self.flop_counter_macs + sum(self.missed_macs.values())


_ORACLES: dict[str, Oracle] = {}


def _oracle(entry: RealModel) -> Oracle:
    """The plain forward of a fresh twin, under FlopCounterMode and the aten log (cached)."""
    if entry.name not in _ORACLES:
        model, call = entry.build(), entry.inputs()
        counter, log = FlopCounterMode(display=False), _AtenLog()
        with torch.no_grad(), counter, log:
            output = model(*call.args, **call.kwargs)
        _ORACLES[entry.name] = Oracle(
            output_shapes=[tuple(t.shape) for t in _output_tensors(output)],
            flop_counter_macs=counter.get_total_flops() // 2,
            flop_counter_ops=frozenset(
                str(op) for op in counter.get_flop_counts().get("Global", {})
            ),
            missed_macs=dict(log.missed_macs),
            aten_ops=dict(log.ops),
        )
    return _ORACLES[entry.name]


def _summary(entry: RealModel, **options: Any) -> torchscope.ModelSummary:
    model, call = entry.build(), entry.inputs()
    if call.args:
        return torchscope.summary(
            model, input=call.args, forward_kwargs=dict(call.kwargs) or None, **options
        )
    return torchscope.summary(model, input=dict(call.kwargs), **options)


_SUMMARIES: dict[str, torchscope.ModelSummary] = {}


def _cached_summary(entry: RealModel) -> torchscope.ModelSummary:
    if entry.name not in _SUMMARIES:
        _SUMMARIES[entry.name] = _summary(entry)
    return _SUMMARIES[entry.name]


# ---------------------------------------------------------------------------------------------
# parametrisation


def _ids(entry: RealModel) -> str:
    return entry.name


# ---------------------------------------------------------------------------------------------
# tests


def test_zoo_covers_every_family() -> None:
    assert {entry.family for entry in REAL_ZOO} == set(FAMILIES)
    assert len({entry.name for entry in REAL_ZOO}) == len(REAL_ZOO)
    assert any(e.data_dependent and e.family == "torchvision_detection" for e in REAL_ZOO)
    assert any(e.data_dependent and e.family == "wav2vec2" for e in REAL_ZOO)
    assert any(e.moe and e.family == "mixtral" for e in REAL_ZOO)


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_entry_is_deterministic_and_in_eval_mode(entry: RealModel) -> None:
    a, b = entry.build(), entry.build()
    assert not a.training and not any(m.training for m in a.modules())
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    first, second = entry.inputs(), entry.inputs()
    assert isinstance(first, Inputs)
    for x, y in zip(
        _output_tensors((first.args, first.kwargs)),
        _output_tensors((second.args, second.kwargs)),
        strict=True,
    ):
        assert torch.equal(x, y)


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_total_params(entry: RealModel) -> None:
    s = _cached_summary(entry)
    model = entry.build()
    assert s.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_root_output_shapes(entry: RealModel) -> None:
    s = _cached_summary(entry)
    expected = _oracle(entry).output_shapes
    assert expected, "the oracle found no tensor in the output"
    root = s.layers[0]
    assert root.depth == 0 and root.parent is None
    got = [tuple(shape) for shape in root.output_shapes]
    assert collections.Counter(got) == collections.Counter(expected)


def test_oracle_counts_every_mac_bearing_op() -> None:
    """Every MAC-bearing aten op the zoo runs is counted by FlopCounterMode or by a formula here."""
    missed: dict[str, set[str]] = {}
    for entry in REAL_ZOO:
        oracle = _oracle(entry)
        for op in oracle.aten_ops:
            if not _MAC_BEARING.search(op) or op in _NOT_MAC_BEARING:
                continue
            if op not in oracle.flop_counter_ops and op not in _MISSED_BY_FLOP_COUNTER:
                missed.setdefault(op, set()).add(entry.name)
            if op in oracle.flop_counter_ops and op in _MISSED_BY_FLOP_COUNTER:
                missed.setdefault(f"{op} (counted twice)", set()).add(entry.name)
    assert not missed, f"MAC-bearing ops the oracle does not count: {missed}"


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_total_macs(entry: RealModel) -> None:
    s = _cached_summary(entry)
    oracle = _oracle(entry)
    expected = oracle.macs
    assert expected > 0
    assert s.total_macs == pytest.approx(expected, rel=0.01), (
        f"{entry.name}: torchscope {s.total_macs:,} MACs, oracle {expected:,} "
        f"(FlopCounterMode {oracle.flop_counter_macs:,} + analytic {oracle.missed_macs}); "
        f"torchscope's uncounted_ops: {s.uncounted_ops}"
    )


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_every_op_is_priced_or_classified(entry: RealModel) -> None:
    """Ops that do no multiply-accumulate (routing counts, nms, weight norm) are classified:
    an uncounted op would turn the totals into lower bounds."""
    assert _cached_summary(entry).uncounted_ops == {}


@pytest.mark.parametrize("entry", REAL_ZOO, ids=_ids)
def test_memory_is_estimated_on_every_model_quietly(entry: RealModel, caplog) -> None:
    """Data-dependent shapes (detection's nonzero, wav2vec2's .item()) are measured on the
    real tensors; a fake kernel stricter than the real one (the MoE's float32 grouped
    matmul) is handled; torch's own loggers print nothing."""
    with caplog.at_level(logging.DEBUG):
        s = _summary(entry, memory=True, depth=0)
    assert s.memory is not None, s.memory_error
    assert not [r for r in caplog.records if r.name.startswith("torch")], caplog.text
    assert s.memory.inference_peak > 0
    assert bool(s.memory.measured) == entry.data_dependent, s.memory.measured
    # detection asks for targets in training mode: its training step cannot be estimated
    assert (s.memory.training_peak is None) == (entry.family == "torchvision_detection"), (
        s.memory.training_error
    )
