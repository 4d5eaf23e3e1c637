"""Hypothesis: random stacks of layers keep the totals and the side-effect invariants."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchscope

from .state import assert_unchanged, snapshot

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.GELU, nn.Identity, lambda: nn.Dropout(0.3))


class RandomStack(nn.Module):
    """Calls `layers` in `plan` order; a plan may call one layer several times (shared layer)."""

    def __init__(
        self, widths: list[int], plan: list[int], activations: list[int], norm: bool, tie: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1)
        )
        self.acts = nn.ModuleList(ACTIVATIONS[a]() for a in activations)
        self.norm = nn.BatchNorm1d(widths[-1]) if norm else None
        self.plan = plan
        if (
            tie
            and len(self.layers) >= 2
            and self.layers[0].weight.shape == self.layers[-1].weight.shape
        ):
            self.layers[-1].weight = self.layers[0].weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step, index in enumerate(self.plan):
            x = self.acts[step % len(self.acts)](self.layers[index](x))
        return self.norm(x) if self.norm is not None else x


@st.composite
def random_stacks(draw: st.DrawFn) -> tuple[RandomStack, int]:
    square = draw(st.booleans())  # square stacks allow repeats and ties in any order
    count = draw(st.integers(1, 5))
    if square:
        width = draw(st.integers(1, 12))
        widths = [width] * (count + 1)
        plan = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=8))
    else:
        widths = draw(st.lists(st.integers(1, 12), min_size=count + 1, max_size=count + 1))
        plan = list(range(count))
    activations = draw(st.lists(st.integers(0, len(ACTIVATIONS) - 1), min_size=1, max_size=4))
    model = RandomStack(
        widths, plan, activations, norm=draw(st.booleans()), tie=draw(st.booleans())
    )
    frozen = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    for layer, freeze in zip(model.layers, frozen, strict=True):
        if freeze:
            layer.bias.requires_grad_(False)
    if draw(st.booleans()):
        model.eval()
    return model, widths[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    random_stacks(),
    st.integers(2, 4),
    st.sampled_from(["eval", "train", "same"]),
    st.integers(0, 3),
)
def test_totals_and_invariants_hold_for_random_stacks(stack, batch, mode, depth):
    model, in_width = stack
    before = snapshot(model)
    result = torchscope.summary(model, input_size=(batch, in_width), mode=mode, depth=depth)
    assert_unchanged(before, model)

    unique = {id(p): p for p in model.parameters()}
    assert result.total_params == sum(p.numel() for p in unique.values())
    assert result.trainable_params == sum(p.numel() for p in unique.values() if p.requires_grad)
    assert len(result.parameters) == len(unique)
    # one call per planned step and activation, plus the root and (if any) the norm
    layer_calls = [layer for layer in result.layers if layer.name.startswith("layers.")]
    assert [layer.name for layer in layer_calls] == [f"layers.{i}" for i in model.plan]
    assert [layer.is_repeat for layer in layer_calls] == [
        i in model.plan[:step] for step, i in enumerate(model.plan)
    ]
    assert result.output_shapes == ((batch, model.layers[model.plan[-1]].out_features),)
    text = str(result)
    assert f"Total params: {result.total_params:,}" in text
