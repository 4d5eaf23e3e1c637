"""GradientMonitor on torch.compile'd models: no crash, no recompilation, the eager findings.

The fast ``aot_eager`` backend compiles through dynamo and AOTAutograd like inductor does,
without generating C++: what matters here (graph capture, guards, the compiled backward that
calls parameter hooks with None) is the same.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch._dynamo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch._dynamo.utils import counters

import torchscope
from torchscope.collect.gradients.compiled import EAGER_EVERY


class Detached(nn.Module):
    """The first layer's output is detached: a and its bias never get a gradient."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.act = act
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)).detach())


class Healthy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(),
                                 nn.Linear(32, 4))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _train(model: nn.Module, how: str, steps: int) -> tuple[set, dict, torchscope.GradientReport]:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if how == "compile":
        runner = torch.compile(model, backend="aot_eager")
    elif how == "fullgraph":
        runner = torch.compile(model, backend="aot_eager", fullgraph=True)
    elif how == "method":
        model.compile(backend="aot_eager")
        runner = model
    else:
        runner = model
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    with torchscope.GradientMonitor(runner, optimizer) as monitor:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(runner(x), y).backward()
            optimizer.step()
    report = monitor.report()
    found = {(f.kind, f.where) for f in report.findings if f.severity != "info"}
    return found, dict(counters["stats"]), report


@pytest.mark.parametrize("how", ["compile", "method", "fullgraph"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.GELU], ids=["relu", "gelu"])
def test_the_bug_is_found_as_in_eager_mode_without_a_crash(how: str, act: type) -> None:
    eager, _, _ = _train(Detached(act()), "eager", 6)
    compiled, stats, _ = _train(Detached(act()), how, 6)
    assert eager == {("no_grad", "a.weight"), ("no_grad", "a.bias")}
    assert compiled == eager
    assert stats.get("unique_graphs") == 1, stats


def test_no_recompilation_and_no_graph_break_across_many_steps() -> None:
    steps = 2 * EAGER_EVERY + 5  # crosses two eager samples
    found, stats, report = _train(Healthy(), "compile", steps)
    assert found == set(), report
    assert stats.get("unique_graphs") == 1, stats  # as many as without the monitor
    assert report.steps == steps


def _graphs_over_batches(model: nn.Module, sizes: list[int], watch: bool) -> tuple[int, set]:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    runner = torch.compile(model, backend="aot_eager")
    monitor = torchscope.GradientMonitor(runner, optimizer)
    with monitor if watch else contextlib.nullcontext():
        for n in sizes:
            optimizer.zero_grad()
            x, y = torch.randn(n, 8), torch.randint(0, 4, (n,))
            nn.functional.cross_entropy(runner(x), y).backward()
            optimizer.step()
    found = {(f.kind, f.where) for f in monitor.report().findings} if watch else set()
    return dict(counters["stats"]).get("unique_graphs", 0), found


def test_a_new_batch_shape_is_observed_eagerly_and_compiled_as_without_the_monitor() -> None:
    # epochs of 3 batches whose last is a batch of one: the odd batch is the first call of a
    # new shape, run eagerly, so BatchNorm's batch of one is seen; dynamo compiles exactly
    # the graphs it compiles without the monitor
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.bn = nn.Conv1d(2, 16, 3, padding=1), nn.BatchNorm1d(16)
            self.b = nn.Linear(16 * 4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.bn(self.a(x.view(-1, 2, 4)))).flatten(1))

    sizes = [32, 32, 1] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BatchNorm's batch of one may warn
        bare, _ = _graphs_over_batches(Normed(), sizes, watch=False)
        watched, found = _graphs_over_batches(Normed(), sizes, watch=True)
    assert watched == bare
    assert ("batchnorm_batch_of_one", "bn") in found, found


def test_the_compiled_and_eager_histories_agree_on_what_they_saw() -> None:
    _, _, eager = _train(Healthy(), "eager", 8)
    _, _, compiled = _train(Healthy(), "compile", 8)
    assert [p.name for p in compiled.parameters] == [p.name for p in eager.parameters]
    assert all(len(p.steps) == 8 for p in compiled.parameters)


def test_the_stance_is_restored_after_the_block() -> None:
    from torch._dynamo import eval_frame

    before = eval_frame._stance
    _train(Healthy(), "compile", 3)
    assert eval_frame._stance == before


def _compiled_step_run(watch: bool, model: nn.Module, steps: int) -> tuple[dict, object]:
    torch._dynamo.reset()
    counters.clear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 8)
    y = x[:, :4].argmax(dim=1)  # learnable: a healthy run leaves chance behind

    @torch.compile(backend="aot_eager")
    def train_step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    monitor = torchscope.GradientMonitor(model, optimizer) if watch else None
    if monitor is None:
        for _ in range(steps):
            train_step()
        return dict(counters["stats"]), None
    with monitor:
        for _ in range(steps):
            train_step()
    return dict(counters["stats"]), monitor.report()


def test_a_compiled_training_step_is_observed_without_extra_graphs() -> None:
    steps = EAGER_EVERY + 5
    torch.manual_seed(0)
    bare, _ = _compiled_step_run(False, Healthy(), steps)
    torch.manual_seed(0)
    watched, report = _compiled_step_run(True, Healthy(), steps)
    assert watched.get("unique_graphs") == bare.get("unique_graphs"), (watched, bare)
    assert report.step_unit == "optimizer step" and report.steps == steps  # type: ignore[union-attr]
    assert report.ok, report  # type: ignore[union-attr]
    torch.manual_seed(0)
    _, buggy = _compiled_step_run(True, Detached(nn.ReLU()), 6)
    assert {(f.kind, f.where) for f in buggy.findings} == {  # type: ignore[union-attr]
        ("no_grad", "a.weight"),
        ("no_grad", "a.bias"),
    }


class _Random(nn.Module):
    def __init__(self, widths: list[int], acts: list[str], detach_at: int | None) -> None:
        super().__init__()
        table = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip([8, *widths], [*widths, 4], strict=False)
        )
        self.acts = nn.ModuleList(table[a]() for a in acts)
        self.detach_at = detach_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.acts):
                x = self.acts[i](x)
            if i == self.detach_at:
                x = x.detach()
        return x


def _planted(model: nn.Module, bug: str, compiled: bool, steps: int) -> set[tuple[str, str]]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    runner = torch.compile(model, backend="aot_eager") if compiled else model
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with torchscope.GradientMonitor(runner, optimizer) as monitor:
        for _ in range(steps):
            if bug != "forgot_zero_grad":
                optimizer.zero_grad()
            nn.functional.cross_entropy(runner(x), y).backward()
            optimizer.step()
            if bug == "double_step":
                optimizer.step()
    # the kinds observed every step, outside the graph (docs/gradients.md, Under torch.compile)
    outside = {"no_grad", "grad_accumulation", "step_without_backward", "nan_grad", "inf_grad",
               "nonfinite_loss", "exploding", "not_updated", "frozen_but_updated"}  # fmt: skip
    return {(f.kind, f.where) for f in monitor.report().findings if f.kind in outside}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(2, 12), min_size=1, max_size=3),
    acts=st.lists(st.sampled_from(["relu", "gelu", "tanh", "silu"]), min_size=0, max_size=3),
    bug=st.sampled_from(["none", "detach", "forgot_zero_grad", "double_step"]),
    seed=st.integers(0, 2**16),
)
def test_random_models_with_planted_bugs_never_crash_and_match_eager(widths, acts, bug, seed):
    acts = acts[: len(widths)]
    detach_at = 0 if bug == "detach" and len(widths) > 0 else None
    torch.manual_seed(seed)
    model = _Random(widths, acts, detach_at)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = _planted(model, bug, False, 4)
    model.load_state_dict(state)
    counters.clear()
    compiled = _planted(model, bug, True, 4)
    assert compiled == eager
    assert dict(counters["stats"]).get("unique_graphs", 0) <= 1


def test_entering_the_monitor_again_and_again_adds_no_graph() -> None:
    # a monitor per epoch around a model compiled once adds no graph: its mode steps off the
    # stack for the compiled call, and its hooks add no guard
    torch._dynamo.reset()
    counters.clear()
    model = Healthy()
    runner = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def train(steps: int) -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(runner(x), y).backward()
            optimizer.step()

    train(2)
    assert counters["stats"]["unique_graphs"] == 1
    for _ in range(4):
        with torchscope.GradientMonitor(runner, optimizer):
            train(3)
        train(2)
    assert counters["stats"]["unique_graphs"] == 1


def test_inductor_gives_the_eager_findings(tmp_path, monkeypatch) -> None:
    # the default backend, once: generated C++ kernels, the same hooks outside the graph. A
    # cache of its own: inductor's precompiled headers from a run with other ATen kernels
    # (make test-cpus sets ATEN_CPU_CAPABILITY) do not compile with these
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Detached(nn.GELU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    runner = torch.compile(model)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with torchscope.GradientMonitor(runner, optimizer) as monitor:
        for _ in range(4):
            optimizer.zero_grad()
            nn.functional.cross_entropy(runner(x), y).backward()
            optimizer.step()
    found = {(f.kind, f.where) for f in monitor.report().findings}
    assert found == {("no_grad", "a.weight"), ("no_grad", "a.bias")}


def test_check_gradients_and_fit_accept_a_compiled_model() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from torchscope.training import fit

    torch._dynamo.reset()
    torch.manual_seed(0)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    report = torchscope.check_gradients(
        torch.compile(Detached(nn.ReLU()), backend="aot_eager"), x, y
    )
    assert {f.kind for f in report.findings} == {"no_grad"}
    model = torch.compile(Healthy(), backend="aot_eager")
    loader = DataLoader(
        TensorDataset(torch.randn(96, 8), torch.randint(0, 4, (96,))), batch_size=32
    )
    history = fit(
        model,
        loader,
        loss_fn=nn.functional.cross_entropy,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        epochs=2,
        progress=False,
    )
    assert history.gradient_report is not None and history.gradient_report.ok
    assert history.gradient_report.steps == 6


def test_a_model_compiled_after_steps_that_kept_their_graphs_is_still_seen_compiled() -> None:
    """The monitor watches the plain model; after two eager steps whose backward kept its graph
    (a habit of some loops), the loop switches to a compiled copy. A backward with no forward
    seen is taken for a second loss of a kept graph only when it reaches that graph's nodes: a
    compiled forward's are all new, so its steps are sampled eagerly and a BatchNorm left in
    eval mode halfway is found."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    fast = torch.compile(model, backend="aot_eager")
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with torchscope.GradientMonitor(model, optimizer) as monitor:
        for step in range(EAGER_EVERY * 3):
            net = model if step < 2 else fast
            if step == EAGER_EVERY:
                model.eval()
            optimizer.zero_grad()
            ((net(x) - y) ** 2).mean().backward(retain_graph=True)
            optimizer.step()
    assert monitor._sampler.active and monitor._sampler.eager_steps >= 2
    assert "eval_mode" in {f.kind for f in monitor.report().findings}
