"""GradientMonitor and check_gradients: planted bugs are named, healthy loops are not, and
the monitor leaves the loop it watches exactly as it would have run without it."""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torch.utils._python_dispatch import TorchDispatchMode

import torchscope
from torchscope import GradientHealthError, GradientMonitor, GradientReport, check_gradients
from torchscope.records import FINDING_KINDS

from .bugs import BUGS, CLASSES, MLP, Setup, cnn_setup, mlp_setup, standard_loop
from .state import assert_unchanged, snapshot


def monitored(setup: Setup, loop: Any = standard_loop, **options: Any) -> GradientReport:
    with GradientMonitor(setup.model, optimizer=setup.optimizer, **options) as monitor:
        loop(setup)
    return monitor.report()


# -- every planted bug is named, by exactly its kind ---------------------------------------------

# where the finding must point (a prefix of Finding.where)
WHERE = {
    "unused_layer": "aux.",
    "detach_in_forward": "fc1.",
    "round_in_forward": "fc1.",
    "dead_relu": "act (after fc1)",
    "log_of_negative": "fc2",
    "sqrt_at_zero": "fc2.weight",
    "sqrt_of_parameter_at_zero": "offset",
    "optimizer_before_new_head": "head.",
    "zero_learning_rate": "head.",
    "frozen_mid_run": "fc1.",
    "batchnorm_batch_of_one": "bn1",
    "softmax_into_cross_entropy": "cross_entropy",
    "log_of_zero_in_loss": "loss",
    "deep_sigmoid": "body.0.",
    "exploding_init": "layers.",
}


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_planted_bug_is_named_by_exactly_its_kind(bug):
    report = monitored(bug.setup(), bug.loop, **bug.monitor)
    assert report.kinds == {bug.kind}, str(report)
    assert not report.ok
    found = [f for f in report.findings if f.kind == bug.kind]
    assert all(f.message and f.where for f in found)
    if bug.name in WHERE:
        assert any(f.where.startswith(WHERE[bug.name]) for f in found), str(report)


def test_findings_name_the_step_value_and_threshold():
    bug = next(b for b in BUGS if b.name == "exploding_init")
    report = monitored(bug.setup(), bug.loop)
    finding = report.findings[0]
    assert finding.step == 0
    assert finding.threshold == 1e3
    assert finding.value is not None and finding.value > finding.threshold
    assert f"{finding.value:.3g}" in finding.message


def test_nonfinite_activation_names_the_first_module_and_its_neighbour():
    bug = next(b for b in BUGS if b.name == "log_of_negative")
    report = monitored(bug.setup())
    (finding,) = report.findings
    assert finding.where == "fc2" and math.isnan(finding.value)
    assert "(fc1) was finite" in finding.message


class _Block(nn.Module):
    """A container returning its child's output after planting a NaN in it at its
    ``poison_at``-th call: in place, or through ``.data``, which leaves no new version."""

    def __init__(self, through_data: bool, poison_at: int) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.through_data = through_data
        self.poison_at = poison_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.calls += 1
        factor = math.nan if self.calls == self.poison_at else 1.0
        if self.through_data:
            out.data.mul_(factor)
        else:
            out.mul_(factor)
        return out


@pytest.mark.parametrize("through_data", [False, True])
def test_a_nan_a_container_plants_in_its_childs_output_is_named_at_the_container(through_data):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), _Block(through_data, poison_at=3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 4), torch.randn(8, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradientMonitor(model, optimizer=opt) as monitor:
            for _ in range(5):
                opt.zero_grad()
                F.mse_loss(model(x), y).backward()
                opt.step()
    (finding,) = [f for f in monitor.report().findings if f.kind == "nonfinite_activation"]
    # the third forward: step 2, counted from 0
    assert finding.where == "2" and finding.step == 2 and "(2.inner) was finite" in finding.message


def test_zero_grad_between_backward_and_step_gets_its_own_hint():
    bug = next(b for b in BUGS if b.name == "zero_grad_before_step")
    report = monitored(bug.setup(), bug.loop)
    assert all("between backward() and step()" in f.message for f in report.findings)
    bug = next(b for b in BUGS if b.name == "round_in_forward")
    report = monitored(bug.setup())
    assert all("round, argmax" in f.message for f in report.findings)


def test_dead_layer_folds_the_zero_gradients_it_causes():
    bug = next(b for b in BUGS if b.name == "dead_relu")
    (finding,) = monitored(bug.setup()).findings
    assert finding.value == 1.0
    assert "3 parameter tensor(s) get exactly zero gradients" in finding.message


# -- healthy loops report nothing ----------------------------------------------------------------


class TinyLM(nn.Module):
    """Embedding tied to the output layer, causal -inf mask, dropout, functional ReLU inside."""

    def __init__(self, vocab: int = 40, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.out(self.encoder(self.embed(tokens), mask=mask, is_causal=True))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(10, 16, batch_first=True)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _resnet_setup() -> Setup:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=CLASSES, zero_init_residual=True)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (4,), generator=g))
        for _ in range(3)
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return Setup(model, opt, F.cross_entropy, batches)


def _lm_setup() -> Setup:
    torch.manual_seed(0)
    model = TinyLM()
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        tokens = torch.randint(0, 40, (4, 12), generator=g)
        batches.append((tokens, torch.roll(tokens, -1, dims=1)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    return Setup(model, opt, loss_fn, batches)


def _lstm_setup() -> Setup:
    torch.manual_seed(0)
    model = Recurrent()
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 5, 10, generator=g), torch.randint(0, CLASSES, (8,), generator=g))
        for _ in range(4)
    ]
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.cross_entropy, batches)


CLEAN = {
    "resnet18_zero_init_residual": _resnet_setup,
    "transformer_tied_causal_mask": _lm_setup,
    "cnn_batchnorm_conv_bias_dropout": cnn_setup,
    "lstm": _lstm_setup,
    "mlp": mlp_setup,
}


@pytest.mark.parametrize("name", list(CLEAN))
def test_healthy_loops_report_nothing(name):
    report = monitored(CLEAN[name]())
    assert report.ok, str(report)
    assert report.steps >= 3 and report.backward_passes == report.steps
    assert all(p.steps for p in report.parameters), "every parameter had a gradient"


def test_bias_before_batchnorm_is_not_reported():
    setup = cnn_setup()
    # the premise, with PyTorch as the oracle: the bias gradient is the sum of conv1's output
    # gradients, mathematically zero under batch statistics; what is left is float32 rounding,
    # bounded by n x eps x the summed magnitudes (n terms per channel, in any order), whatever
    # kernels this CPU picks. (Against another parameter's gradient it has no fixed size:
    # 6.1e-9 on an AVX-512 EPYC, under 5.9e-9 with AVX2.)
    outputs = []

    def keep_output_gradient(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        out.register_hook(lambda g: outputs.append(g.detach()))

    hook = setup.model.conv1.register_forward_hook(keep_output_gradient)
    x, y = setup.batches[0]
    try:
        setup.loss_fn(setup.model(x), y).backward()
    finally:
        hook.remove()
    grad_out = outputs[0].double()
    terms = grad_out.numel() // grad_out.shape[1]
    bound = terms * torch.finfo(torch.float32).eps * grad_out.abs().sum(dim=(0, 2, 3))
    bias_grad = setup.model.conv1.bias.grad.double()
    assert (bias_grad.abs() <= bound).all()
    assert bias_grad.abs().max() < 1e-3 * grad_out.sum(dim=(0, 2, 3)).abs().max() + bound.max()
    setup = cnn_setup()
    report = monitored(setup)
    assert report.ok, str(report)
    assert not [f for f in report.findings if f.where.startswith("conv1.bias")]


class _FunctionalBatchNorm(nn.Module):
    """Conv with bias into F.batch_norm: no normalisation module for hooks to see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(8))
        self.beta = nn.Parameter(torch.zeros(8))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(self.conv(x), None, None, self.gamma, self.beta, training=True)
        return self.head(F.relu(y).mean(dim=(2, 3)))


class _TransposedBatchNorm(nn.Module):
    """Linear over features of a sequence, transposed into BatchNorm1d's channel dim."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.flatten(2).transpose(1, 2)  # (N, H*W, 3)
        y = self.norm(self.proj(seq).transpose(1, 2))
        return self.head(torch.relu(y).mean(dim=2))


class _InstanceNormed(nn.Module):
    """Conv with bias into GroupNorm with one channel per group, then InstanceNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(8, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gn(self.conv1(x)))
        x = torch.relu(self.inorm(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    "model", [_FunctionalBatchNorm, _TransposedBatchNorm, _InstanceNormed], ids=lambda m: m.__name__
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_cancelled_by_any_normalisation_is_not_reported(model, dtype):
    # whatever way the normalisation is reached, its bias gradient is rounding: no finding,
    # and the verdict must not depend on how small this CPU's rounding happens to be
    setup = cnn_setup()
    torch.manual_seed(0)
    setup.model = model().to(dtype)
    setup.optimizer = torch.optim.SGD(setup.model.parameters(), lr=0.05, momentum=0.9)
    setup.batches = [(x.to(dtype), y) for x, y in setup.batches]
    report = monitored(setup)
    assert report.ok and not report.findings, str(report)


class _SmallBiasGradient(nn.Module):
    """A bias whose gradient is real but tiny: every output unit is squashed by sigmoids."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(10, 32)
        self.body = nn.Sequential(
            *[nn.Sequential(nn.Linear(32, 32), nn.Sigmoid()) for _ in range(14)]
        )
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.sigmoid(self.first(x))))


def test_a_small_but_real_bias_gradient_is_still_vanishing():
    # the look-alike: tiny against the largest gradient, but not rounding against its own
    # output gradients, so the rounding rule must not hide it
    report = monitored(mlp_setup(_SmallBiasGradient()))
    vanishing = {f.where for f in report.findings if f.kind == "vanishing"}
    assert "first.bias" in vanishing and "first.weight" in vanishing, str(report)


def test_cleared_gradients_are_not_taken_for_rounding():
    # zero_grad(set_to_none=False) between backward and step: biases are exactly zero too, and
    # named with the weights, not excused as a cancelled bias
    bug = next(b for b in BUGS if b.name == "zero_grad_before_step")
    report = monitored(bug.setup(), bug.loop)
    named = {f.where for f in report.findings if f.kind == "zero_grad"}
    assert {"fc1.bias", "fc2.bias", "head.bias"} <= named, str(report)


def test_frozen_with_torchscope_freeze_is_intentional():
    setup = cnn_setup()
    torchscope.freeze(setup.model, "conv1", "bn1", optimizer=setup.optimizer)
    report = monitored(setup)
    assert report.ok, str(report)
    assert not report.history["conv1.weight"].trainable


def test_frozen_option_covers_parameters_left_out_of_the_optimizer():
    setup = mlp_setup()
    body = [p for n, p in setup.model.named_parameters() if not n.startswith("fc1.")]
    setup.optimizer = torch.optim.SGD(body, lr=0.05)
    assert monitored(setup).kinds == {"not_updated"}
    for how in ("name", "glob", "module", "tensors"):
        setup = mlp_setup()
        fc1 = setup.model.fc1
        body = [p for n, p in setup.model.named_parameters() if not n.startswith("fc1.")]
        setup.optimizer = torch.optim.SGD(body, lr=0.05)
        frozen = {
            "name": ["fc1"],
            "glob": ["fc1.*"],
            "module": [fc1],
            "tensors": [fc1.weight, fc1.bias],
        }[how]
        assert monitored(setup, frozen=frozen).ok, how


def test_frozen_option_still_catches_a_frozen_part_that_moves():
    setup = mlp_setup()  # fc1 is in the optimizer and trains: frozen= says it must not
    report = monitored(setup, frozen=["fc1"])
    assert report.kinds == {"frozen_but_updated"}


def test_grad_scaler_and_autocast_loop_is_healthy():
    setup = mlp_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    def loop(s: Setup) -> None:
        for x, y in s.batches[:4]:
            s.optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = s.loss_fn(s.model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), 1.0)
            scaler.step(s.optimizer)
            scaler.update()

    report = monitored(setup, loop)
    assert report.ok, str(report)
    assert report.steps == 4


def test_correct_gradient_accumulation_is_healthy():
    setup = mlp_setup()

    def loop(s: Setup) -> None:
        for i, (x, y) in enumerate(s.batches[:6]):
            (s.loss_fn(s.model(x), y) / 3).backward()
            if i % 3 == 2:
                s.optimizer.step()
                s.optimizer.zero_grad()

    report = monitored(setup, loop, accumulation_steps=3)
    assert report.ok, str(report)
    assert (report.steps, report.backward_passes) == (2, 6)
    # the same loop judged with the default accumulation_steps=1 is fine too: nothing stale
    assert monitored(mlp_setup(), loop).ok


def test_stepping_every_micro_batch_contradicts_accumulation_steps():
    report = monitored(mlp_setup(), accumulation_steps=4)
    assert report.kinds == {"grad_accumulation"}
    assert report.findings[0].severity == "warning"


def test_optimizer_is_found_without_being_passed():
    bug = next(b for b in BUGS if b.name == "optimizer_before_new_head")
    setup = bug.setup()
    with GradientMonitor(setup.model) as monitor:
        standard_loop(setup)
    report = monitor.report()
    assert report.kinds == {"not_updated"}
    assert report.step_unit == "optimizer step" and report.steps == 4


def test_without_an_optimizer_each_backward_pass_is_a_step():
    setup = mlp_setup()
    with GradientMonitor(setup.model) as monitor:
        for x, y in setup.batches[:3]:
            setup.model.zero_grad()
            setup.loss_fn(setup.model(x), y).backward()
    report = monitor.report()
    assert report.step_unit == "backward pass"
    assert report.steps == 3 and report.ok
    assert report.history["fc1.weight"].steps == (0, 1, 2)
    assert report.history["fc1.weight"].update_ratio == (None, None, None)


def test_report_mid_run_sees_the_steps_so_far():
    setup = mlp_setup()
    with GradientMonitor(setup.model, optimizer=setup.optimizer) as monitor:
        standard_loop(setup, steps=2)
        assert monitor.report().steps == 2
        standard_loop(setup, steps=3)
    assert monitor.report().steps == 5


def test_history_matches_pytorch():
    setup = mlp_setup()
    x, y = setup.batches[0]
    with GradientMonitor(setup.model, optimizer=setup.optimizer) as monitor:
        setup.optimizer.zero_grad()
        setup.loss_fn(setup.model(x), y).backward()
        grad = setup.model.fc1.weight.grad.clone()
        before = setup.model.fc1.weight.detach().clone()
        setup.optimizer.step()
    h = monitor.report().history["fc1.weight"]
    # float64 oracles; the monitor sums float32 in whatever order its kernels pick, within
    # the worst-case bound of a float32 sum of n non-negative terms (n x eps), on any CPU
    rel = grad.numel() * torch.finfo(torch.float32).eps
    exact = grad.double()
    assert h.grad_norm[0] == pytest.approx(exact.norm().item(), rel=rel)
    assert h.grad_max_abs[0] == grad.abs().max().item()
    assert h.grad_mean_abs[0] == pytest.approx(exact.abs().mean().item(), rel=rel)
    change = (setup.model.fc1.weight.detach().double() - before.double()).norm()
    assert h.update_ratio[0] == pytest.approx((change / before.double().norm()).item(), rel=2 * rel)


# -- the monitor changes nothing -----------------------------------------------------------------


def _hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    left = []
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            left.append(f"module {name!r}")
    for name, param in model.named_parameters():
        if param._backward_hooks:
            left.append(f"parameter {name!r}")
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        left.append("optimizer")
    if _global_optimizer_pre_hooks or _global_optimizer_post_hooks:
        left.append("global optimizer hooks")
    if torch._C._len_torch_function_stack():
        left.append("torch function mode")
    return left


@pytest.mark.parametrize("pass_optimizer", [True, False])
def test_everything_is_removed_on_exit_also_when_the_loop_raises(pass_optimizer):
    setup = mlp_setup()
    monitor = GradientMonitor(setup.model, optimizer=setup.optimizer if pass_optimizer else None)
    with monitor:
        assert _hooks_left(setup.model, setup.optimizer)
        standard_loop(setup, steps=1)
    assert _hooks_left(setup.model, setup.optimizer) == []

    class Boom(Exception):
        pass

    with pytest.raises(Boom), monitor:
        setup.optimizer.zero_grad()
        setup.loss_fn(setup.model(setup.batches[0][0]), setup.batches[0][1]).backward()
        raise Boom
    assert _hooks_left(setup.model, setup.optimizer) == []
    assert monitor.report().backward_passes == 1  # the report still reads what was seen


def test_entering_twice_is_an_error():
    setup = mlp_setup()
    monitor = GradientMonitor(setup.model)
    with monitor, pytest.raises(torchscope.TorchscopeError, match="already active"):
        monitor.__enter__()
    assert _hooks_left(setup.model, setup.optimizer) == []


def _train(seed: int, depth: int, width: int, dropout: float, watch: bool) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, width)]
    for _ in range(depth):
        layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, CLASSES)]
    model = nn.Sequential(*layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 6), torch.randint(0, CLASSES, (8,))
    monitor = GradientMonitor(model, optimizer=opt) if watch else None
    if monitor is not None:
        monitor.__enter__()
    try:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        if monitor is not None:
            monitor.__exit__(None, None, None)
    return [p.detach().clone() for p in model.parameters()] + [torch.random.get_rng_state()]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    depth=st.integers(0, 3),
    width=st.integers(1, 12),
    dropout=st.sampled_from([0.0, 0.5]),
)
def test_monitored_training_is_bit_identical_to_bare_training(seed, depth, width, dropout):
    bare = _train(seed, depth, width, dropout, watch=False)
    watched = _train(seed, depth, width, dropout, watch=True)
    assert all(torch.equal(a, b) for a, b in zip(bare, watched, strict=True))


class _CountHostSyncs(TorchDispatchMode):
    """Counts the aten op behind .item(), bool(tensor) and float(tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_monitor_reads_no_value_back_during_the_loop():
    # on a GPU each read would be a host synchronisation; statistics wait for report()
    def run(watch: bool) -> int:
        setup = cnn_setup()
        monitor = GradientMonitor(setup.model, optimizer=setup.optimizer) if watch else None
        with _CountHostSyncs() as counter:
            if monitor is not None:
                monitor.__enter__()
            try:
                standard_loop(setup)
            finally:
                if monitor is not None:
                    monitor.__exit__(None, None, None)
        return counter.count

    assert run(watch=True) == run(watch=False)


@given(depth=st.integers(2, 5), cut=st.data())
@settings(max_examples=12, deadline=None)
def test_a_detach_anywhere_names_exactly_the_layers_before_it(depth, cut):
    k = cut.draw(st.integers(1, depth - 1))

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(depth))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i, layer in enumerate(self.layers):
                x = torch.tanh(layer(x))
                if i == k - 1:
                    x = x.detach()
            return x

    torch.manual_seed(0)
    setup = Setup(
        Chain(), None, F.cross_entropy, [(torch.randn(4, 8), torch.randint(0, 8, (4,)))] * 3
    )  # type: ignore[arg-type]
    setup.optimizer = torch.optim.SGD(setup.model.parameters(), lr=0.1)
    report = monitored(setup, lambda s: standard_loop(s, steps=2))
    assert report.kinds == {"no_grad"}
    named = {f.where for f in report.findings}
    assert named == {f"layers.{i}.{p}" for i in range(k) for p in ("weight", "bias")}


# -- check_gradients -----------------------------------------------------------------------------


def test_check_gradients_leaves_model_optimizer_and_rng_untouched():
    setup = mlp_setup(momentum=0.9)
    standard_loop(setup, steps=1)  # the optimizer has state, the parameters have grads
    before = snapshot(setup.model)
    optimizer_state = json.dumps(
        {k: v["momentum_buffer"].tolist() for k, v in enumerate(setup.optimizer.state.values())}
    )
    x, y = setup.batches[0]
    report = check_gradients(setup.model, x, y, optimizer=setup.optimizer)
    assert report.ok and report.steps == 3
    assert_unchanged(before, setup.model)
    assert optimizer_state == json.dumps(
        {k: v["momentum_buffer"].tolist() for k, v in enumerate(setup.optimizer.state.values())}
    )


@pytest.mark.parametrize(
    ("target", "loss_fn"),
    [
        (torch.randint(0, CLASSES, (16,)), None),  # class indices: cross_entropy
        (torch.randn(16, CLASSES), None),  # values: mse
        (None, None),  # no target: a fixed random projection of the output
        (None, lambda out: out.pow(2).mean()),
    ],
    ids=["classes", "values", "projection", "loss_fn"],
)
def test_check_gradients_default_losses(target, loss_fn):
    torch.manual_seed(0)
    report = check_gradients(MLP(), torch.randn(16, 10), target, loss_fn=loss_fn, steps=2)
    assert report.ok, str(report)
    assert report.steps == 2


def test_check_gradients_finds_model_bugs():
    model = nn.Sequential(MLP(), nn.Softmax(dim=1))
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    assert check_gradients(model, x, y).kinds == {"softmax_into_cross_entropy"}
    torch.manual_seed(0)
    report = check_gradients(
        torchvision.models.resnet18(num_classes=4),
        torch.randn(4, 3, 32, 32),
        torch.tensor([0, 3, 1, 2]),
        steps=2,
    )
    assert report.ok, str(report)


def test_check_gradients_projection_sees_every_output_of_a_softmax_model():
    # the sum of softmax outputs is constant; a plain sum would give zero gradients everywhere
    model = nn.Sequential(nn.Linear(10, CLASSES), nn.Softmax(dim=1))
    assert check_gradients(model, torch.randn(8, 10)).ok


def test_check_gradients_errors_are_clear():
    with pytest.raises(TypeError, match=r"nn.Module"):
        check_gradients("model", torch.randn(2, 10))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        check_gradients(MLP(), torch.randn(2, 10), steps=0)
    frozen = MLP().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        check_gradients(frozen, torch.randn(2, 10))

    class NoCopy(MLP):
        def __deepcopy__(self, memo: Any) -> Any:
            raise RuntimeError("holds a file handle")

    with pytest.raises(torchscope.TorchscopeError, match=r"could not deep-copy.*GradientMonitor"):
        check_gradients(NoCopy(), torch.randn(2, 10))


# -- options -------------------------------------------------------------------------------------


def test_thresholds_are_overridable_and_validated():
    bug = next(b for b in BUGS if b.name == "exploding_init")
    assert "exploding" not in monitored(bug.setup(), thresholds={"exploding_norm": 1e9}).kinds
    relaxed = torchscope.GradientThresholds(exploding_norm=1e9, vanishing_ratio=0.0)
    assert monitored(bug.setup(), thresholds=relaxed).ok
    with pytest.raises(ValueError, match=r"unknown thresholds.*known ones"):
        GradientMonitor(MLP(), thresholds={"exploding": 1})
    with pytest.raises(ValueError, match="non-negative"):
        GradientMonitor(MLP(), thresholds={"dead_fraction": -1})


def test_bad_arguments_get_clear_errors():
    with pytest.raises(TypeError, match=r"nn.Module"):
        GradientMonitor(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch.optim.Optimizer"):
        GradientMonitor(MLP(), optimizer="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accumulation_steps"):
        GradientMonitor(MLP(), accumulation_steps=0)
    with (
        pytest.raises(ValueError, match=r"matches no module or parameter.*fc1"),
        GradientMonitor(MLP(), frozen=["fc"]),
    ):
        pass
    with pytest.raises(TypeError, match="frozen= takes"), GradientMonitor(MLP(), frozen=[3]):
        pass


# -- the report ----------------------------------------------------------------------------------


def _report_of(name: str) -> GradientReport:
    bug = next(b for b in BUGS if b.name == name)
    return monitored(bug.setup(), bug.loop, **bug.monitor)


def test_report_round_trips_through_json():
    report = _report_of("sqrt_at_zero")
    again = GradientReport.from_dict(json.loads(report.to_json()))
    assert again == report or str(again) == str(report)  # NaN != NaN in the values
    assert [f.kind for f in again.findings] == [f.kind for f in report.findings]
    assert again.history.keys() == report.history.keys()


def test_report_text_is_stable(golden):
    golden("gradients_unused_layer.txt", str(_report_of("unused_layer")) + "\n")
    golden("gradients_healthy.txt", str(monitored(mlp_setup())) + "\n")


def test_raise_and_assert():
    report = _report_of("softmax_into_cross_entropy")
    with pytest.raises(GradientHealthError, match="softmax_into_cross_entropy") as caught:
        report.raise_if_unhealthy()
    assert isinstance(caught.value, AssertionError) and caught.value.report is report
    report.assert_healthy(allow=["softmax_into_cross_entropy"])
    with pytest.raises(ValueError, match="unknown finding kinds"):
        report.assert_healthy(allow=["softmax"])
    with pytest.raises(TypeError, match=r"not a string; write \['softmax_into_cross_entropy'\]"):
        report.assert_healthy(allow="softmax_into_cross_entropy")  # type: ignore[arg-type]
    monitored(mlp_setup()).raise_if_unhealthy()


def test_info_findings_do_not_make_a_report_unhealthy():
    setup = mlp_setup()
    setup.model.fc2 = nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.5))
    setup.optimizer = torch.optim.SGD(setup.model.parameters(), lr=0.05)
    setup.model.train()
    setup.model.fc2[1].eval()  # a dropout in eval inside a training model: a note, no more

    def loop(s: Setup) -> None:  # keeps the modes as they are
        for x, y in s.batches[:3]:
            s.optimizer.zero_grad()
            s.loss_fn(s.model(x), y).backward()
            s.optimizer.step()

    report = monitored(setup, loop)
    assert [f.kind for f in report.findings] == ["eval_mode"]
    assert report.findings[0].severity == "info" and report.ok
    assert report.kinds == set()


def test_every_kind_is_covered_by_a_planted_bug():
    # the first kinds by tests/bugs.py, the kinds of real loops by the training zoo
    from tests.training_zoo.harness import load_all

    zoo = {kind for s in load_all().values() for kind in s.kinds}
    assert {b.kind for b in BUGS} | zoo == set(FINDING_KINDS)


def test_plot_writes_a_picture(tmp_path: Path):
    report = _report_of("unused_layer")
    png = report.plot(tmp_path / "flow.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = report.plot(tmp_path / "flow.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert b"aux.weight" in Path(svg).read_bytes()  # labelled, and marked as never reached


def test_log_to_tensorboard_reads_back(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    report = monitored(mlp_setup())
    with SummaryWriter(tmp_path) as writer:
        report.log_to(writer)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert "gradients/norm/fc1.weight" in tags["scalars"]
    assert "gradients/update_ratio/fc1.weight" in tags["scalars"]
    assert "gradients/log10_norm" in tags["histograms"]
    norms = [e.value for e in events.Scalars("gradients/norm/fc1.weight")]
    assert norms == pytest.approx(list(report.history["fc1.weight"].grad_norm), rel=1e-6)
    assert "gradients/findings" in str(tags)


def test_submodule_called_directly_does_not_multiply_relu_sites():
    """Lightning's training_step often calls self.net(x), never the root's forward."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))

    wrapper = Wrapper()
    optimizer = torch.optim.SGD(wrapper.parameters(), lr=0.01)
    with GradientMonitor(wrapper, optimizer) as monitor:
        for _ in range(12):
            optimizer.zero_grad()
            wrapper.net(torch.randn(4, 6)).sum().backward()
            optimizer.step()
    assert len(monitor._relu_sites) == 1  # one site, observed 12 times, not 12 sites
    assert monitor.report().ok


def test_skipped_step_at_a_window_boundary_is_not_a_clear_inside_the_window():
    """A GradScaler skips optimizer.step() on inf gradients; the loop still clears them."""
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientMonitor(model, optimizer, accumulation_steps=2) as monitor:
        for step in range(4):
            for _ in range(2):
                (model(torch.randn(3, 4)).sum() / 2).backward()
            if step != 1:  # step 1 is skipped, as a scaler skips an overflowing step
                optimizer.step()
            optimizer.zero_grad()
    assert "grad_accumulation" not in monitor.report().kinds


# -- probabilities into a logit loss, ReLU units: read back in report() --------------------------


class _Normalised(nn.Module):
    """Scores made into probabilities without a softmax: positive, divided by their sum."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.fc = nn.Linear(10, CLASSES)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.fc(x)
        if self.how == "logits":
            return scores
        if self.how == "exp_log_softmax":
            return scores.log_softmax(dim=1).exp()
        if self.how == "sum_to_one":
            positive = scores.abs() + 1e-3
            return positive / positive.sum(dim=1, keepdim=True)
        if self.how == "in_range_not_summing":  # in [0, 1], rows not summing to 1
            return torch.sigmoid(scores) * 0.5
        # probabilities, one of them NaN: NaN compares false, so not called probabilities
        probabilities = scores.softmax(dim=1).detach().clone().requires_grad_(True)
        return probabilities.masked_fill(torch.arange(CLASSES) == 0, math.nan) + 0 * scores


@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("logits", False),
        ("exp_log_softmax", True),
        ("sum_to_one", True),
        ("in_range_not_summing", False),
        ("nan", False),
    ],
)
def test_scores_that_look_like_probabilities_are_named(how, named):
    torch.manual_seed(0)
    model = _Normalised(how)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batch = (torch.randn(16, 10), torch.randint(0, CLASSES, (16,)))
    kinds = monitored(Setup(model, opt, F.cross_entropy, [batch] * 3)).kinds
    assert ("softmax_into_cross_entropy" in kinds) == named


def test_a_relu_unit_is_dead_only_when_it_never_fired_and_never_was_nan():
    """Three units: one that fires on one step only, one that never fires, one NaN on one
    step (not known to be dead): only the second is dead."""
    torch.manual_seed(0)
    bias = nn.Parameter(torch.tensor([-1.0, -1.0, -1.0]))

    class Units(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = bias
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            shift = torch.zeros(3)
            if self.calls == 2:
                shift = torch.tensor([2.0, 0.0, math.nan])
            return F.relu(x * 0 + self.bias + shift).sum(dim=1, keepdim=True) + x[:, :1]

    model = Units()
    x = torch.randn(8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradientMonitor(model) as monitor:
            for _ in range(4):
                model.zero_grad()
                model(x).pow(2).mean().backward()
    (site,) = monitor._relu_sites.values()
    assert (~(site.top <= 0)).tolist() == [True, False, True]
    from torchscope.collect.gradients.observations import observe

    (view,) = observe(monitor).relu_sites
    assert (view.units, view.fired_units) == (3, 2)
