"""GradientMonitor's tensor statistics on a stride of steps (``_state.measured_step``): every
step of the first ``MEASURE_EVERY_STEP``, then every ``MEASURE_STRIDE``-th; the first
non-finite value of a run is still named at the step it arose.

The constants are lowered here (dense for 5 steps, then every 3rd) so that the stride shows
in a few steps of a small model.
"""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchscope
import torchscope.collect.gradients._state as state
import torchscope.collect.gradients.monitor as monitor_module

from .bugs import CLASSES, MLP

DENSE, STRIDE = 5, 3
MEASURED = (0, 1, 2, 3, 4, 6, 9, 12)  # of steps 0..13


@pytest.fixture
def short_stride(monkeypatch):
    monkeypatch.setattr(state, "MEASURE_EVERY_STEP", DENSE)
    monkeypatch.setattr(state, "MEASURE_STRIDE", STRIDE)


def _train(model, steps, *, before_step=None, optimizer=True, inputs=None, low_class=0):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05) if optimizer else None
    x = inputs if inputs is not None else torch.randn(32, 10)
    y = torch.randint(low_class, CLASSES, (x.shape[0],))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(steps):
            if before_step is not None:
                before_step(step, model)
            if opt is not None:
                opt.zero_grad()
            else:
                model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if opt is not None:
                opt.step()
    return monitor


def test_statistics_follow_the_stride(short_stride):
    assert [s for s in range(14) if state.measured_step(s)] == list(MEASURED)
    monitor = _train(MLP(), 14)
    # module outputs are checked at every step (to name where a NaN arose), read back in
    # batches (history.Folds); ReLU units and the output gradients a bias sums on the stride
    assert len(monitor._folds._forwards) == 14
    report = monitor.report()
    for history in report.history.values():
        assert history.steps == MEASURED
        assert all(math.isfinite(v) for v in history.grad_norm + history.grad_mean_abs)
        assert all(r is not None for r in history.update_ratio)
    # a row per step all the same (max |grad| is taken at every one), full ones on the stride
    rows = monitor._rows
    assert len(rows) == 14
    assert tuple(r.clock.step for r in rows if r.measured) == MEASURED
    for row in rows:  # off the stride, the max |grad| row only
        assert row.grad_stats.shape[0] == (3 if row.measured else 1)
        *l1_l2, top = row.grad_stats.tolist()
        assert all(math.isfinite(v) for v in top)
        assert all(math.isfinite(v) for norms in l1_l2 for v in norms)
    assert not report.findings


def test_without_an_optimizer_the_stride_counts_backward_passes(short_stride):
    monitor = _train(MLP(), 14, optimizer=False)
    history = next(iter(monitor.report().history.values()))
    assert history.steps == MEASURED
    assert len(monitor._rows) == 14


@pytest.mark.parametrize("step", [7, 8, 10])  # steps off the stride
def test_a_nan_weight_between_measured_steps_is_named_at_its_step(short_stride, step):
    def poison(at, model):
        if at == step:
            with torch.no_grad():
                model.fc1.weight[0, 0] = float("nan")

    findings = _train(MLP(), 14, before_step=poison).report().findings
    first = [f for f in findings if f.severity == "error"]
    assert [(f.kind, f.where, f.step) for f in first] == [("nonfinite_activation", "fc1", step)]


class _SqrtAtZero(nn.Module):
    """sqrt(|h|) has an infinite derivative where h is 0: a NaN gradient with a finite loss."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).abs().sqrt())


def test_a_nan_gradient_between_measured_steps_is_named_at_its_step(short_stride):
    def zero_weights_at_step_8(at, model):
        if at == 8:  # fc1's output is exactly 0 from here: sqrt's derivative there is inf
            with torch.no_grad():
                model.fc1.weight.zero_()
                model.fc1.bias.zero_()

    findings = _train(_SqrtAtZero(), 14, before_step=zero_weights_at_step_8).report().findings
    first = [f for f in findings if f.severity == "error"]
    assert first and {f.kind for f in first} == {"nan_grad"}
    assert {f.step for f in first} == {8}


class _Gated(nn.Module):
    """A branch that contributes only when ``gate`` is on: its gradient is exactly zero on
    the other steps."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(10, CLASSES)
        self.branch = nn.Linear(10, CLASSES)
        self.gate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.gate * self.branch(x)


def test_zero_grad_reads_every_step_not_only_the_measured_ones(short_stride):
    def gate(at, model):
        model.gate = 1.0 if at in (7, 8) else 0.0  # both off the stride

    findings = _train(_Gated(), 14, before_step=gate).report().findings
    assert not [f for f in findings if f.kind == "zero_grad"]
    # and a branch that never contributes is still found
    findings = _train(_Gated(), 14).report().findings
    assert [f.where for f in findings if f.kind == "zero_grad"] == ["branch.weight", "branch.bias"]


def test_two_optimizers_stepping_in_turn_are_each_measured_on_the_stride(short_stride):
    torch.manual_seed(0)
    model = MLP()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    first = torch.optim.SGD(layers[0].parameters(), lr=0.05)
    rest = torch.optim.SGD([p for m in layers[1:] for p in m.parameters()], lr=0.05)
    x, y = torch.randn(32, 10), torch.randint(0, CLASSES, (32,))
    with torchscope.GradientMonitor(model) as monitor:
        for _ in range(14):
            first.zero_grad()
            rest.zero_grad()
            F.cross_entropy(model(x), y).backward()
            first.step()
            rest.step()
    history = monitor.report().history
    for name, h in history.items():
        measured = [r for r in h.update_ratio if r is not None]
        assert len(measured) == len(MEASURED), name  # each optimizer's steps 0-4, 6, 9, 12


# -- module outputs off the stride: held to the end of the forward, read in one call --------------


class _InPlace(nn.Module):
    """Linear, an in-place ReLU (a module, or the functional form in this forward), Linear:
    the first layer's output is changed in place after its module returned."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(16, CLASSES)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h.relu_() if self.functional else self.act(h)
        return self.fc2(h)


def _poison_fc1_at(step):
    def poison(at, model):
        if at == step:
            with torch.no_grad():
                model.fc1.weight[0, 0] = float("nan")

    return poison


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize("step", [7, 9])  # off the stride, on it
def test_an_output_changed_in_place_is_named_at_the_layer_that_made_the_nan(
    short_stride, functional, step
):
    findings = _train(_InPlace(functional), 14, before_step=_poison_fc1_at(step)).report().findings
    first = [f for f in findings if f.severity == "error"]
    assert [(f.kind, f.where, f.step) for f in first] == [("nonfinite_activation", "fc1", step)]


@pytest.mark.parametrize("held", [0, 16, monitor_module.HELD_OUTPUT_NUMEL])
def test_large_outputs_are_read_on_the_spot_with_the_same_finding(short_stride, monkeypatch, held):
    """Outputs past HELD_OUTPUT_NUMEL elements (fc2's 32x32 here with 16) are reduced when
    their module returns, the others at the end of the forward: the finding is the same."""
    monkeypatch.setattr(monitor_module, "HELD_OUTPUT_NUMEL", held)
    findings = _train(MLP(), 14, before_step=_poison_fc1_at(8)).report().findings
    first = [f for f in findings if f.severity == "error"]
    assert [(f.kind, f.where, f.step) for f in first] == [("nonfinite_activation", "fc1", 8)]


def test_held_outputs_are_let_go_when_the_forward_ends(short_stride):
    model, opt, x, y = _mlp_sgd_batch()
    outputs: list[weakref.ref[torch.Tensor]] = []
    handle = model.fc2.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
    try:
        with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
            for step in range(8):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                assert monitor._forward_checks == []  # read when the root's forward ended
                loss.backward()
                opt.step()
                del loss
                gc.collect()
                assert outputs[-1]() is None, step  # nothing of the monitor's keeps it
    finally:
        handle.remove()


class _Masked(nn.Module):
    """Scores with -inf where a mask is off (a legitimate value), normalised after."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, CLASSES)
        self.register_buffer("mask", torch.arange(CLASSES) == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).masked_fill(self.mask, -math.inf)


def test_minus_inf_in_an_output_is_a_mask_on_and_off_the_stride(short_stride):
    # class 0 is masked: no target is
    findings = _train(nn.Sequential(_Masked()), 14, low_class=1).report().findings
    assert not [f for f in findings if f.kind.startswith("nonfinite")]


def test_a_submodule_called_alone_off_the_stride_is_read_at_the_end_of_its_backward(
    short_stride,
):
    """A loop that calls a part of the watched model (a LightningModule's training_step
    calling self.net): no root forward ends, the end of the backward pass reads the outputs."""
    torch.manual_seed(0)
    outer = nn.ModuleDict({"net": MLP()})
    opt = torch.optim.SGD(outer.parameters(), lr=0.05)
    x, y = torch.randn(32, 10), torch.randint(0, CLASSES, (32,))
    with torchscope.GradientMonitor(outer, optimizer=opt) as monitor:
        for step in range(14):
            _poison_fc1_at(7)(step, outer["net"])
            opt.zero_grad()
            F.cross_entropy(outer["net"](x), y).backward()
            opt.step()
    first = [f for f in monitor.report().findings if f.severity == "error"]
    assert [(f.kind, f.where, f.step) for f in first] == [("nonfinite_activation", "net.fc1", 7)]


class _PlantsInPlace(nn.Module):
    """A layer whose output the forward fills in place with +Inf or NaN where a mask is on,
    then reduces so that those values never flow on (masked_fill_ before an amin, NaN
    before a nanmean): a legitimate use, nothing to report."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 8)
        self.head = nn.Linear(1, CLASSES)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.fc(x)
        mask = torch.arange(8) < 2
        if math.isnan(self.value):
            d[:, mask] = math.nan
            pooled = d.nanmean(dim=1, keepdim=True)
        else:
            pooled = d.masked_fill_(mask, self.value).amin(dim=1, keepdim=True)
        return self.head(pooled)


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_inf_or_nan_written_in_place_and_never_read_is_no_finding(short_stride, value):
    findings = _train(_PlantsInPlace(value), 14).report().findings
    assert not [f for f in findings if f.kind.startswith("nonfinite")]


class _CachedTable(nn.Module):
    """Returns a table it built under torch.inference_mode() (a positional cache): an
    inference tensor, which has no version counter."""

    def __init__(self) -> None:
        super().__init__()
        self.table: torch.Tensor | None = None

    def forward(self, n: int) -> torch.Tensor:
        if self.table is None:
            with torch.inference_mode():
                self.table = torch.linspace(0, 1, 10).expand(n, 10).contiguous()
        return self.table


class _WithTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = _CachedTable()
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.pos(x.shape[0]))


def test_a_module_returning_an_inference_tensor_is_read_off_the_stride(short_stride):
    report = _train(_WithTable(), 14).report()
    assert report.steps == 14 and not report.findings


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 3:
            raise ValueError("a bad batch")
        return self.fc(x)


class _CallsItsBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _Body()

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # not forward: the root's hooks stay out
        return self.body(x)


def test_a_forward_that_raised_leaves_nothing_behind(short_stride):
    """A loop that calls a submodule (never the root), where one batch raises inside it and
    is skipped: the next forward starts afresh (the mode still sees every loss), and the
    outputs the failed forward held are let go when the next forward begins."""
    torch.manual_seed(0)
    model = _CallsItsBody()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(12):
            if step in (5, 7):  # off the stride: the body's output is held when it raises
                with pytest.raises(ValueError):
                    model.logits(torch.randn(3, 10))
            opt.zero_grad()
            loss = F.cross_entropy(model.logits(x), y)
            # this forward's outputs only (held to the end of its backward: no root ends
            # it); the failed batch's were read when this forward began
            assert all(v.dim() == 0 or len(v) == 16 for _, v, _ in monitor._forward_checks)
            if step == 10:  # off the stride
                loss = loss * math.nan
            loss.backward()
            opt.step()
    assert len(monitor._losses) == 12
    first = [f for f in monitor.report().findings if f.severity == "error"]
    assert [(f.kind, f.step) for f in first] == [("nonfinite_loss", 10)]


class _RaisesAfterFc1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 64)
        self.fc2 = nn.Linear(64, CLASSES)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.fail:
            raise RuntimeError("out of memory (as a loop might catch it)")
        return self.fc2(h)


def test_outputs_held_by_a_forward_that_raised_are_let_go(short_stride):
    torch.manual_seed(0)
    model = _RaisesAfterFc1()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 10), torch.randint(0, CLASSES, (16,))
    outputs: list[weakref.ref[torch.Tensor]] = []
    model.fc1.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
    failed = None
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(8):
            model.fail = step in (5, 7)  # both off the stride; 7 is the last step
            opt.zero_grad()
            try:
                loss = F.cross_entropy(model(x), y)
            except RuntimeError:
                failed = outputs[-1]
                assert monitor._forward_checks  # held, as the forward did not end
                continue
            if step == 6:  # step 5's fc1 output was read when this forward began
                gc.collect()
                assert failed is not None and failed() is None
            loss.backward()
            opt.step()
    gc.collect()
    assert outputs[-1]() is None  # step 7's: read when the with block ended
    assert monitor._forward_checks == []


def test_a_params_list_edited_in_place_is_followed(short_stride):
    """Stage 2 of a run trains the head instead of the first layer, by editing the
    optimizer's params list in place (the same list, the same length)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, CLASSES))
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    x, y = torch.randn(32, 10), torch.randint(0, CLASSES, (32,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(14):
            if step == 5:
                opt.param_groups[0]["params"][:] = [model[2].weight, model[2].bias]
                opt.state.clear()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    report = monitor.report()
    assert not [f for f in report.findings if f.severity == "error"], report.findings
    held = {e.name for e in monitor._params if e.index in monitor._held_indices}
    assert held == {"0.weight", "0.bias", "2.weight", "2.bias"}


class _LossInside(nn.Module):
    """Computes its own loss when given labels (the Hugging Face way)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 8)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(x), labels)


@pytest.mark.parametrize("learnable", [False, True])
def test_a_loss_computed_inside_the_forward_is_judged_over_every_step(short_stride, learnable):
    """Off the stride the mode rests through the forward, so the loss function's calls are
    seen on measured steps only; the value handed to backward() stands for the others."""
    torch.manual_seed(0)
    model = _LossInside()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(64, 10)
    y = x[:, :8].argmax(dim=1) if learnable else torch.randint(0, 8, (64,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(60):
            opt.zero_grad()
            model(torch.randn(64, 10) if not learnable else x, y).backward()
            opt.step()
    report = monitor.report()
    chance = [f for f in report.findings if f.kind == "loss_at_chance"]
    if learnable:
        assert not chance
    else:
        (finding,) = chance
        assert "of 60 steps" in finding.message


def _nan_step(model, step_with_nan, forward, steps=12):
    """Train ``model`` with ``forward(model, x)`` giving the logits; the inputs of
    ``step_with_nan`` carry a NaN. Returns the non-finite findings as (kind, where, step)."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    y = torch.randint(0, CLASSES, (8,))
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for step in range(steps):
            x = torch.randn(8, 10)
            if step == step_with_nan:
                x[0, 0] = math.nan
            opt.zero_grad()
            F.cross_entropy(forward(model, x), y).backward()
            opt.step()
    findings = monitor.report().findings
    return [(f.kind, f.where, f.step) for f in findings if f.kind.startswith("nonfinite")]


def _encode_shift_decode(model, x):
    h = model.encoder(x)  # the loop calls two parts; it changes the first's output in place
    h += 0.01
    return model.decoder(h)


def _last_layer_then_in_place(model, x):
    logits = model(x)
    logits /= 2.0  # in place, in the loop, after the model's last layer
    return logits


@pytest.mark.parametrize("step", [6, 7, 8, 10])  # measured, off, off, off (the first: 5)
@pytest.mark.parametrize(
    ("build", "forward", "where"),
    [
        (
            lambda: nn.ModuleDict({"encoder": nn.Linear(10, 16), "decoder": nn.Linear(16, 3)}),
            _encode_shift_decode,
            "encoder",
        ),
        (lambda: nn.Sequential(nn.Linear(10, 3)), _last_layer_then_in_place, "0"),
        (
            lambda: nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3), nn.ReLU(True)),
            lambda model, x: model(x),
            "0",
        ),
    ],
    ids=["split_forward", "in_place_after_the_model", "sequential_ending_in_place"],
)
def test_a_nan_in_an_output_changed_in_place_later_is_named_where_it_arose(
    short_stride, step, build, forward, where
):
    assert _nan_step(build(), step, forward) == [("nonfinite_activation", where, step)]


class _PlantsThenHeadFails(_PlantsInPlace):
    """+inf written in place on purpose (never read on), and at one step a NaN that the
    head makes itself: the head is named."""

    def __init__(self) -> None:
        super().__init__(math.inf)
        self.poison = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * math.nan if self.poison else out


@pytest.mark.parametrize("step", [6, 7, 10])
def test_a_deliberate_in_place_inf_is_not_blamed_for_a_later_nan(short_stride, step):
    model = _PlantsThenHeadFails()
    model.head.register_forward_hook(lambda m, a, out: out * math.nan if model.poison else None)

    def forward(model, x):
        model.poison = model.calls == step
        model.calls += 1
        return model(x)

    model.calls = 0
    errors = _nan_step(model, -1, forward, steps=12)
    assert errors[:1] == [("nonfinite_activation", "head", step)]


def test_checkpointed_blocks_leave_the_call_stack_as_it_was(short_stride):
    """Activation checkpointing runs the blocks' forwards again inside the backward pass
    (and stops them early by raising): those are not forwards of the loop."""
    from torch.utils.checkpoint import checkpoint

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(16, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return self.head(x)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(14):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, CLASSES, (8,))).backward()
            assert monitor._stack == []
            opt.step()
    assert len(monitor._losses) == 14
    assert sorted(site.name for site in monitor._relu_sites.values()) == [
        "blocks.0.act (after blocks.0.fc)",
        "blocks.1.act (after blocks.1.fc)",
    ]


@pytest.mark.parametrize(("paired", "penalty"), [(True, 1.0), (False, 1e-4)])
def test_two_backward_passes_a_step_judge_loss_at_chance_on_the_loss_function(paired, penalty):
    """cross_entropy's backward, then a hand-written term's (a reconstruction): the chance
    level is judged on cross_entropy's values, not on every value handed to backward()."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))
    model = nn.ModuleDict({"encoder": encoder, "decoder": nn.Linear(10, 20)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(256, 20)
    y = x[:, :10].argmax(1)
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(80):
            if not paired:  # fresh, unpaired batches: nothing to learn
                x, y = torch.randn(256, 20), torch.randint(0, 10, (256,))
            opt.zero_grad()
            z = encoder(x)
            F.cross_entropy(z, y).backward(retain_graph=True)
            (penalty * ((model["decoder"](z) - x) ** 2).sum(1).mean()).backward()
            opt.step()
    chance = [f for f in monitor.report().findings if f.kind == "loss_at_chance"]
    assert bool(chance) == (not paired)


# -- the function mode rests between an optimizer step and the next forward -----------------------


def _mode():
    return torch.overrides._get_current_function_mode()


def _mlp_sgd_batch() -> tuple[MLP, torch.optim.SGD, torch.Tensor, torch.Tensor]:
    """The MLP, plain SGD on its parameters and one batch of 8: what the mode's tests train."""
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return model, optimizer, torch.randn(8, 10), torch.randint(0, CLASSES, (8,))


def _modes_inside_fc1(steps: int, *, then_forward: bool = False):
    """Train the MLP ``steps`` steps in a monitor, recording the mode on top of the stack
    inside each fc1 forward and after each step; ``then_forward``: one more forward and
    backward with no step after. Returns (the modes in fc1, after each step, after the last
    backward), the mode before the monitor, the monitor's, and the monitor."""
    model, opt, x, y = _mlp_sgd_batch()
    inside: list[object] = []
    after_steps: list[object] = []
    handle = model.fc1.register_forward_hook(lambda *_: inside.append(_mode()))
    before = _mode()
    last = None
    try:
        with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
            watch = _mode()
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                after_steps.append(_mode())
            if then_forward:
                F.cross_entropy(model(x), y).backward()
                last = _mode()
    finally:
        handle.remove()
    assert _mode() is before  # the stack is left as found, resting or not
    return (inside, after_steps, last), before, watch, monitor


def test_the_mode_rests_from_a_step_until_the_next_forward():
    (inside, after_steps, last), before, watch, monitor = _modes_inside_fc1(3, then_forward=True)
    assert watch is not None and watch is not before
    # zero_grad, a scheduler, the DataLoader's indexing: none goes through it
    assert after_steps == [before] * 3
    # a loss computed after the forward and its backward are still seen
    assert last is watch
    assert inside == [watch] * 4
    report = monitor.report()
    assert len(report.losses) == 4 and report.backward_passes == 4


def test_off_the_stride_the_forward_runs_without_the_mode(short_stride):
    """What the mode sees inside a forward (ReLU units, a softmax's output) is read on the
    stride; the loss and backward() that follow are seen at every step."""
    (inside, after_steps, _), before, watch, monitor = _modes_inside_fc1(14)
    assert inside == [watch if step in MEASURED else before for step in range(14)]
    assert after_steps == [before] * 14
    report = monitor.report()
    assert len(report.losses) == 14 and report.backward_passes == 14


def test_a_step_before_backward_keeps_the_mode_for_that_backward():
    """forward, step(), then backward(): the backward of the forward before the step is still
    to come, so the mode stays and the loss handed to backward() is seen."""
    model, opt, x, y = _mlp_sgd_batch()
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(4):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            opt.step()
            loss.backward()
    assert len(monitor.report().losses) == 4


def test_a_compiled_model_keeps_the_mode_as_before():
    model, opt, x, y = _mlp_sgd_batch()
    compiled = torch.compile(model, backend="eager")
    with torchscope.GradientMonitor(compiled, optimizer=opt) as monitor:
        watch = _mode()
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(compiled(x), y).backward()
            opt.step()
            assert _mode() is watch  # no rest: the compiled frames were traced with it
    assert monitor.report().steps == 2


def test_a_user_mode_entered_while_the_mode_rests_keeps_its_place():
    """The user's own mode, entered after step() (while the monitor's rests) around the
    forward: the monitor's mode goes back below it, so the user's with block pops its own."""
    from torch.overrides import TorchFunctionMode

    class Counting(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Counting.calls += 1
            return func(*args, **(kwargs or {}))

    model, opt, x, y = _mlp_sgd_batch()
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        watch = _mode()
        for _ in range(3):
            with Counting():
                out = model(x)
                loss = F.cross_entropy(out, y)
            assert _mode() is watch
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert _mode() is None
    calls = Counting.calls
    torch.ones(2).sum()
    assert Counting.calls == calls  # the user's mode ended with its block
    assert len(monitor.report().losses) == 3


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_a_backward_that_keeps_its_graph_keeps_the_mode_for_the_next():
    """Two losses of one forward, each with its optimizer: the second loss and its backward
    come after the first step, on the graph the first backward kept."""
    model = MLP()
    opt1 = torch.optim.SGD(model.fc1.parameters(), lr=0.05)
    opt2 = torch.optim.SGD(model.head.parameters(), lr=0.05)
    x, y = torch.randn(8, 10), torch.randint(0, CLASSES, (8,))
    with torchscope.GradientMonitor(model) as monitor:
        for _ in range(3):
            opt1.zero_grad()
            opt2.zero_grad()
            out = model(x)
            F.cross_entropy(out, y).backward(retain_graph=True)
            opt1.step()
            F.mse_loss(out, torch.zeros(3)).backward()  # broadcasts: (8, 3) against (3,)
            opt2.step()
            # the second backward had no forward of its own, yet nothing ran compiled: once
            # both graphs are done the mode rests, as in any eager loop
            assert _mode() is None
    report = monitor.report()
    assert len(report.losses) == 6
    found = [f for f in report.findings if f.kind == "loss_broadcast"]
    assert found and found[0].step == 1 and "(3 call(s))" in found[0].message, found


def test_a_gradient_penalty_loop_is_not_taken_for_a_compiled_one():
    """autograd.grad(loss, params, create_graph=True) runs a backward pass of its own (the
    parameters' hooks see it), so the loop's backward() comes with no forward since: its
    graph reaches the eager forward's nodes, so nothing ran compiled and the mode rests."""
    model, opt, x, y = _mlp_sgd_batch()
    with torchscope.GradientMonitor(model, optimizer=opt) as monitor:
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
            penalty = sum(g.pow(2).sum() for g in grads)
            (loss + 0.01 * penalty).backward()
            opt.step()
            assert _mode() is None
    assert not monitor._sampler.active
    report = monitor.report()
    assert report.steps == 3 and not report.findings
