"""Golden files for the rendered tables (regenerate with `pytest --update-golden`)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

import torchscope
from torchscope import SummaryError
from torchscope.models import LeNet

from .test_summary import Broken
from .zoo import BY_NAME, CallsTwice, TiedLanguageModel, WithUnusedHead


def test_lenet_text(golden):
    result = torchscope.summary(
        LeNet(),
        input_size=(1, 1, 28, 28),
        columns=["input_shape", "output_shape", "params", "params_percent"],
    )
    golden("lenet.txt", str(result) + "\n")


def test_resnet18_depth_2(golden):
    result = torchscope.summary(torchvision.models.resnet18(), input_size=(1, 3, 224, 224), depth=2)
    golden("resnet18_depth2.txt", str(result) + "\n")


def test_resnet18_collapsed_keeps_totals(golden):
    result = torchscope.summary(torchvision.models.resnet18(), input_size=(1, 3, 224, 224), depth=1)
    golden("resnet18_depth1.txt", str(result) + "\n")


def test_tied_weights_repeats_and_uncalled_modules(golden):
    tied = torchscope.summary(TiedLanguageModel(), torch.zeros(2, 5, dtype=torch.long))
    repeated = torchscope.summary(
        CallsTwice(), input_size=(3, 8), columns=["output_shape", "params", "trainable"]
    )
    model = WithUnusedHead()
    model.main.bias.requires_grad_(False)
    unused = torchscope.summary(model, input_size=(2, 4), columns=["params", "trainable"])
    golden("special_cases.txt", "\n\n".join(str(r) for r in (tied, repeated, unused)) + "\n")


def test_recurrent_tuple_outputs(golden):
    entry = BY_NAME["lstm"]
    golden("lstm.txt", str(torchscope.summary(entry.build(), entry.make_input())) + "\n")


def test_markdown(golden):
    golden("lenet.md", torchscope.summary(LeNet(), input_size=(1, 1, 28, 28)).to_markdown())


def test_html(golden):
    golden(
        "lenet.html", torchscope.summary(LeNet(), input_size=(1, 1, 28, 28))._repr_html_() + "\n"
    )


def test_failure_message(golden):
    with pytest.raises(SummaryError) as info:
        torchscope.summary(Broken(), input_size=(1, 3, 16, 16))
    message = str(info.value)
    # the original error's text comes from torch and may change between versions
    first, rest = message.split("\n", 1)
    assert first.startswith(
        "forward pass failed in module 'body.1' (Linear) with input shapes [1, 8, 12, 12]"
    )
    golden("broken_partial.txt", rest + "\n")


def test_html_escapes_names():
    result = torchscope.summary(LeNet(), input_size=(1, 1, 28, 28))
    odd = dataclasses.replace(result, model_type="<script>alert(1)</script>")
    html = odd._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
