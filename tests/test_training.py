"""torchscope.training.fit: the reference loop does what it documents."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from torchscope import TorchscopeError
from torchscope.training import CHECKPOINT_NAME, fit, load_checkpoint, save_checkpoint


def data(n: int = 128, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def mlp(dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def train(model, *, epochs=1, batch_size=16, shuffle=True, **kwargs):
    kwargs.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    kwargs.setdefault("progress", False)
    return fit(
        model,
        DataLoader(data(), batch_size=batch_size, shuffle=shuffle),
        loss_fn=F.cross_entropy,
        epochs=epochs,
        **kwargs,
    )


def test_resume_is_bit_exact(tmp_path):
    def run(plan, folder):
        torch.manual_seed(0)
        model = mlp()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
        history = None
        for i, epochs in enumerate(plan):
            torch.manual_seed(100 + i)  # a restarted process has another RNG state
            history = train(
                model,
                epochs=epochs,
                optimizer=optimizer,
                scheduler=scheduler,
                checkpoint_dir=folder,
                resume=i > 0,
                val_loader=DataLoader(data(64, seed=1), batch_size=32),
            )
        return model, history

    straight, history = run([2], tmp_path / "a")
    resumed, resumed_history = run([1, 2], tmp_path / "b")
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed_history.resumed_from == 1
    assert [e.train_loss for e in history.epochs] == [e.train_loss for e in resumed_history.epochs]
    assert resumed_history.epochs[-1].lr == pytest.approx(0.01 * 0.25)


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    model = mlp()
    history = train(model, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert history.checkpoint == str(tmp_path / CHECKPOINT_NAME)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng"}
    assert state["epoch"] == 1 and state["step"] == 8
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)


def test_a_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def torn_write(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


class Unsafe:
    """Any class: weights_only loading refuses to build it (no code runs on load)."""


def test_unsafe_checkpoint_is_refused(tmp_path):
    torch.save({"x": Unsafe()}, tmp_path / "evil.pt")
    with pytest.raises(TorchscopeError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    big = mlp(dropout=0.0)
    small = mlp(dropout=0.0)
    small.load_state_dict(big.state_dict())
    train(big, batch_size=64, shuffle=False, optimizer=torch.optim.SGD(big.parameters(), lr=0.1))
    history = train(
        small,
        batch_size=16,
        shuffle=False,
        accumulation_steps=4,
        optimizer=torch.optim.SGD(small.parameters(), lr=0.1),
    )
    assert history.last.optimizer_steps == 2  # 8 batches of 16, a step every 4
    for a, b in zip(big.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert history.gradient_report.ok  # no false grad_accumulation finding


def test_partial_accumulation_group_steps_at_epoch_end():
    history = train(mlp(), batch_size=16, accumulation_steps=3)  # 8 batches: 3 + 3 + 2
    assert history.last.optimizer_steps == 3


def test_amp_on_cpu_autocasts_to_bfloat16():
    model = mlp()
    seen = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    history = train(model, amp=True)
    assert seen and set(seen) == {torch.bfloat16}
    assert history.last.train_loss == history.last.train_loss  # finite, not NaN


def test_schedulers_step_at_their_granularity():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    per_epoch = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    train(model, epochs=2, optimizer=optimizer, scheduler=per_epoch)
    assert per_epoch.last_epoch == 2 and optimizer.param_groups[0]["lr"] == 0.25

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=16)
    history = train(model, epochs=2, optimizer=optimizer, scheduler=one_cycle)
    assert one_cycle.last_epoch == history.last.optimizer_steps == 16


def test_clipping_bounds_the_gradient_norm_at_every_step():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    norms = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: norms.append(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        )
    )
    train(model, optimizer=optimizer, clip_grad_norm=0.01)
    assert len(norms) == 8 and max(norms) <= 0.01 + 1e-6


def test_evaluation_runs_in_eval_mode_without_grad():
    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()
            self.calls: list[tuple[bool, bool]] = []

        def forward(self, x):
            self.calls.append((self.training, torch.is_grad_enabled()))
            return self.body(x)

    model = Spy()
    history = train(model, val_loader=DataLoader(data(32), batch_size=32))
    assert model.calls[-1] == (False, False)  # the validation batch
    assert all(call == (True, True) for call in model.calls[:-1])
    assert history.last.val_accuracy is not None and history.last.val_loss is not None


def test_monitor_report_names_a_planted_bug():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(10, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)).detach())

    history = train(Detached())
    assert "no_grad" in history.gradient_report.kinds
    assert "Gradient health: problems found (no_grad" in str(history)
    assert train(mlp(), monitor=False).gradient_report is None


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        history = train(
            mlp(), epochs=2, writer=writer, val_loader=DataLoader(data(32), batch_size=8)
        )
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    losses = [s.value for s in events.Scalars("train/loss")]
    assert losses == pytest.approx([e.train_loss for e in history.epochs])
    assert {"val/accuracy", "train/lr", "gradients/loss"} <= set(events.Tags()["scalars"])


def test_bad_batches_and_arguments_are_clear_errors():
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        fit(
            mlp(),
            DataLoader(torch.randn(8, 10), batch_size=4),
            loss_fn=F.cross_entropy,
            optimizer=torch.optim.SGD(mlp().parameters(), lr=0.1),
            epochs=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="epochs"):
        train(mlp(), epochs=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(mlp(), resume=True)


def test_no_progress_bar_when_not_a_terminal(capsys):
    train(mlp(), progress=True)  # pytest's stderr is not a TTY
    assert capsys.readouterr().err == ""


def test_ddp_kwargs_are_checked_against_ddp_options_in_every_run():
    """ddp_kwargs is used only under torchrun, but a typo must not wait for the cluster run."""
    with pytest.raises(ValueError, match=r"'find_unused_params'.*find_unused_parameters"):
        train(mlp(), ddp_kwargs={"find_unused_params": True})
    with pytest.raises(TypeError, match=r'ddp_kwargs=\{"find_unused_parameters": True\}'):
        train(mlp(), ddp_kwargs=[("find_unused_parameters", True)])
    # a single process ignores valid DDP options: the same script runs with and without torchrun
    history = train(mlp(), ddp_kwargs={"find_unused_parameters": True})
    assert history.epochs[-1].optimizer_steps == 8
