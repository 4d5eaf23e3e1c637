"""The summary's forward without heavy arithmetic (collect/_shape_only.py): same record as a
real forward, and a real forward whenever a shape or a host value would read garbage."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import torchscope
import torchscope.collect.summary as summary_module
from torchscope.collect._shape_only import ShapeOnly


@pytest.fixture
def attempts(monkeypatch):
    """The shape-only modes the summary made, each with how many ops it answered and
    whether its forward was abandoned for a real one."""
    made: list[Recording] = []

    class Recording(ShapeOnly):
        def __init__(self) -> None:
            super().__init__()
            self.abandoned = False
            made.append(self)

        def call(self, func, args, kwargs=None):  # what the summary's cost counter runs
            try:
                return super().call(func, args, kwargs)
            except BaseException:
                self.abandoned = True
                raise

    monkeypatch.setattr(summary_module, "ShapeOnly", Recording)
    return made


def _real(model: nn.Module, *args, **options) -> torchscope.ModelSummary:
    """The summary on the real values: a forward pre-hook of the user's own keeps them."""
    handle = model.register_forward_pre_hook(lambda module, inputs: None)
    try:
        return torchscope.summary(model, *args, **options)
    finally:
        handle.remove()


def _same_record(a: torchscope.ModelSummary, b: torchscope.ModelSummary) -> None:
    assert a.total_macs == b.total_macs and a.total_flops == b.total_flops
    assert a.backward_macs == b.backward_macs
    assert a.output_shapes == b.output_shapes and a.output_bytes == b.output_bytes
    assert [(r.name, r.input_shapes, r.output_shapes, r.macs) for r in a.layers] == [
        (r.name, r.input_shapes, r.output_shapes, r.macs) for r in b.layers
    ]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        lambda: nn.TransformerEncoder(
            nn.TransformerEncoderLayer(128, 4, 256, batch_first=True), 2, enable_nested_tensor=False
        ),
    ],
    ids=["resnet18", "mobilenet_v3_small", "transformer"],
)
def test_a_forward_without_heavy_arithmetic_gives_the_real_record(build, mode, attempts):
    torch.manual_seed(0)
    model = build()
    x = (
        torch.randn(2, 64, 128)
        if isinstance(model, nn.TransformerEncoder)
        else torch.randn(4, 3, 96, 96)
    )
    fast = torchscope.summary(model, x, mode=mode)
    assert attempts and attempts[0].skipped > 0 and not attempts[0].abandoned
    _same_record(fast, _real(model, x, mode=mode))


class Heavy(nn.Module):
    """A wide layer (its arithmetic is skipped), then something that reads its values."""

    def __init__(self, reads: str) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 512)
        self.reads = reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.reads == "mask":
            return h[h > 0]  # the number of positive values: a data-dependent shape
        if self.reads == "item":
            return h[: 1 + int(h.abs().sum() > 1e9)]  # a host value
        if self.reads == "nms":
            boxes = torch.cat([h[:, :2].abs(), h[:, :2].abs() + h[:, 2:4].abs()], dim=1)
            return torchvision.ops.nms(boxes, h[:, 4], 0.5)  # another library's op
        if self.reads == "input":  # a value of the input, not of the skipped layer
            return h[: int(x[0, 0] > -1e9) + 1]
        raise AssertionError(self.reads)


@pytest.mark.parametrize("reads", ["mask", "item", "nms"])
def test_a_value_read_from_skipped_arithmetic_runs_the_real_forward(reads, attempts):
    torch.manual_seed(0)
    model, x = Heavy(reads), torch.randn(256, 512)
    result = torchscope.summary(model, x)
    assert attempts[0].abandoned  # then the real forward
    again = torchscope.summary(model, x)
    assert len(attempts) == 1  # the same model is not tried without arithmetic again
    assert again.total_macs == result.total_macs and again.output_shapes == result.output_shapes
    with torch.no_grad():
        expected = model(x)
    assert result.output_shapes == (tuple(expected.shape),)
    _same_record(result, _real(model, x))


def test_a_value_of_the_input_is_read_as_it_is(attempts):
    model, x = Heavy("input"), torch.randn(256, 512)
    result = torchscope.summary(model, x)
    assert not attempts[0].abandoned and attempts[0].skipped == 1
    assert result.output_shapes == ((2, 512),)


def test_hooks_of_your_own_see_real_values(attempts):
    model = torchvision.models.resnet18(num_classes=10)
    seen: list[torch.Tensor] = []
    model.fc.register_forward_hook(lambda module, inputs, output: seen.append(output.clone()))
    x = torch.randn(2, 3, 64, 64)
    torchscope.summary(model, x)
    assert not attempts  # the real forward only
    with torch.no_grad():
        assert torch.allclose(seen[0], model.eval()(x))


def test_nothing_of_the_model_changes_in_train_mode(attempts):
    from .state import assert_identical, exact_snapshot

    model, x = torchvision.models.resnet18(num_classes=10), torch.randn(4, 3, 96, 96)
    before = exact_snapshot(model)
    torchscope.summary(model, x, mode="train")
    assert attempts[0].skipped > 0
    assert_identical(before, model)  # BatchNorm statistics updated from garbage: put back
