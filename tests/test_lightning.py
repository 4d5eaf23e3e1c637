"""TorchscopeCallback: summary, gradient health and freezing inside real Lightning fits (CPU)."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch.optim.optimizer as optimizer_module
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.callbacks import ModelSummary  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from torchscope import GradientHealthError  # noqa: E402
from torchscope.integrations.lightning import TorchscopeCallback  # noqa: E402

# Lightning's own notices, not ours: few dataloader workers on a tiny CPU run, and its use of
# a torch pytree API that torch deprecates
pytestmark = [
    pytest.mark.filterwarnings("ignore:The '\\w+_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

PARAMS = 8 * 16 + 16 + 16 * 2 + 2  # layer1 + layer2


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)  # model initialisation: the same weights in every run


class TinyModule(pl.LightningModule):
    """A 2-layer MLP classifier; ``detach`` plants a bug: layer1 never gets a gradient."""

    def __init__(self, *, detach: bool = False, fail_at: int | None = None) -> None:
        super().__init__()
        self.layer1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.layer2 = nn.Linear(16, 2)
        self.detach = detach
        self.fail_at = fail_at
        self.optimizer_kind = "sgd"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.layer1(x))
        if self.detach:
            hidden = hidden.detach()
        return self.layer2(hidden)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == self.fail_at:
            raise RuntimeError("planted failure in training_step")
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_kind == "trainable_only":
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)
        # momentum and weight decay move any parameter that still has a (zero) gradient
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)


class ValidatedModule(TinyModule):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def loader(samples: int = 32, *, batch_size: int = 8, shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(samples, 8, generator=g), torch.randint(0, 2, (samples,), generator=g)
    )
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def fit(
    model: pl.LightningModule,
    callback: TorchscopeCallback,
    tmp_path: Any,
    train: Any = None,
    val: Any = None,
    also: list[pl.Callback] | None = None,
    **trainer_options: Any,
) -> pl.Trainer:
    options: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    options.update(trainer_options)
    trainer = pl.Trainer(callbacks=[callback, *(also or [])], **options)
    trainer.fit(model, train if train is not None else loader(), val)
    return trainer


def assert_no_hooks_left(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
    for name, param in model.named_parameters():
        assert not param._backward_hooks, name
    assert not optimizer_module._global_optimizer_pre_hooks
    assert not optimizer_module._global_optimizer_post_hooks
    assert torch._C._len_torch_function_stack() == 0  # the monitor's TorchFunctionMode


# -- summary ----------------------------------------------------------------------------------


def test_summary_of_the_first_train_batch_is_printed(tmp_path, capsys):
    callback = TorchscopeCallback(gradient_health=False)
    fit(TinyModule(), callback, tmp_path)
    out = capsys.readouterr().out
    assert f"Total params: {PARAMS:,}" in out
    assert callback.model_summary is not None
    assert callback.model_summary.total_params == sum(p.numel() for p in TinyModule().parameters())
    assert callback.model_summary.input_shapes == ((8, 8),)  # one batch of 8 samples


def test_summary_uses_example_input_array_at_fit_start(tmp_path, capsys):
    model = TinyModule()
    model.example_input_array = torch.zeros(3, 8)
    printed_before_training: list[bool] = []

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            printed_before_training.append("Total params" in capsys.readouterr().out)

    callback = TorchscopeCallback(gradient_health=False)
    fit(model, callback, tmp_path, also=[Probe()])
    assert printed_before_training == [True]
    assert callback.model_summary is not None
    assert callback.model_summary.input_shapes == ((3, 8),)


class NoisyDataset(Dataset):
    """Random augmentation in __getitem__: reading a sample consumes the global RNG."""

    def __init__(self) -> None:
        self.base = loader(24).dataset

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return x + 0.1 * torch.randn(8), y


def test_summary_leaves_the_training_run_unchanged(tmp_path):
    weights = []
    for summary in (True, False):
        torch.manual_seed(0)
        model = TinyModule()
        train = DataLoader(NoisyDataset(), batch_size=8, shuffle=True)
        fit(model, TorchscopeCallback(summary=summary, gradient_health=False), tmp_path, train)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_summary_explains_when_it_cannot_read_an_iterable_dataset(tmp_path, capsys):
    class Stream(IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(3):
                yield torch.randn(8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)

    callback = TorchscopeCallback(gradient_health=False)
    fit(TinyModule(), callback, tmp_path, DataLoader(Stream(), batch_size=None))
    out = capsys.readouterr().out
    assert "no summary of TinyModule" in out and "example_input_array" in out
    assert callback.model_summary is None


# Lightning's ModelSummary callback logs its table through the "lightning.pytorch" logger: to
# stderr in a terminal, to the root logger's handlers (caplog here) where it has some
LIGHTNING_TABLE = "Total estimated model params size (MB)"
# "Total params: N" is in Lightning's rich table too (RichModelSummary, used when rich is
# installed): ours is the table with the multiply-add line
OUR_TABLE = "Forward MACs: "


def printed(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_our_summary_replaces_lightnings_for_the_fit(tmp_path, capfd, caplog):
    callback = TorchscopeCallback(gradient_health=False)
    trainer = fit(TinyModule(), callback, tmp_path, enable_model_summary=True)
    text = printed(capfd, caplog)
    assert text.count(OUR_TABLE) == 1
    assert LIGHTNING_TABLE not in text
    # put back after the fit, where it was (RichModelSummary, a subclass, when rich is installed)
    assert sum(isinstance(c, ModelSummary) for c in trainer.callbacks) == 1


def test_without_our_summary_lightnings_prints(tmp_path, capfd, caplog):
    fit(TinyModule(), TorchscopeCallback(summary=False), tmp_path, enable_model_summary=True)
    text = printed(capfd, caplog)
    assert text.count(LIGHTNING_TABLE) == 1 and OUR_TABLE not in text


def test_lightnings_summary_prints_when_ours_cannot(tmp_path, capfd, caplog):
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.randn(8, 8), torch.randint(0, 2, (8,))

    callback = TorchscopeCallback(gradient_health=False)
    fit(
        TinyModule(),
        callback,
        tmp_path,
        DataLoader(Stream(), batch_size=None),
        enable_model_summary=True,
    )
    text = printed(capfd, caplog)
    assert "no summary of TinyModule" in text
    assert text.count(LIGHTNING_TABLE) == 1 and OUR_TABLE not in text


# -- gradient health --------------------------------------------------------------------------


def test_clean_fit_is_healthy_and_the_report_is_printed(tmp_path, capsys):
    model = ValidatedModule()  # validation between epochs: eval mode, no gradients
    callback = TorchscopeCallback(summary=False)
    fit(model, callback, tmp_path, loader(), loader(16, shuffle=False), max_epochs=2)
    report = callback.report
    assert report is not None
    assert report.ok, str(report)
    assert (report.steps, report.backward_passes) == (8, 8)
    assert "Gradient health: 8 optimizer step(s)" in capsys.readouterr().out
    assert_no_hooks_left(model)


def test_planted_bug_is_found(tmp_path):
    callback = TorchscopeCallback(summary=False)
    fit(TinyModule(detach=True), callback, tmp_path)
    report = callback.report
    assert report is not None
    assert report.kinds == {"no_grad"}
    assert {f.where for f in report.findings} == {"layer1.weight", "layer1.bias"}


def test_planted_bug_is_found_in_a_compiled_module(tmp_path):
    # Lightning trains a torch.compile'd LightningModule through its compiled forward
    import torch._dynamo
    from torch._dynamo.utils import counters

    graphs = []
    for health in (False, True):  # the same fit without the monitor, then with it
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        module = TinyModule(detach=True)
        callback = TorchscopeCallback(summary=False, gradient_health=health)
        fit(torch.compile(module, backend="aot_eager"), callback, tmp_path)
        graphs.append(counters["stats"]["unique_graphs"])
    report = callback.report
    assert report is not None
    assert report.kinds == {"no_grad"}
    assert {f.where for f in report.findings} == {"layer1.weight", "layer1.bias"}
    assert graphs[1] == graphs[0]  # the monitor adds no graph
    assert_no_hooks_left(module)


def test_findings_go_to_the_trainers_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    callback = TorchscopeCallback(summary=False)
    trainer = fit(
        TinyModule(detach=True),
        callback,
        tmp_path,
        logger=[tensorboard, csv_logger],
        log_every_n_steps=1,
    )
    assert callback.report is not None
    errors = sum(f.severity == "error" for f in callback.report.findings)
    assert errors == 2  # layer1.weight and layer1.bias never got a gradient

    events = EventAccumulator(tensorboard.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    assert [(e.step, e.value) for e in scalars["torchscope/errors"]] == [(trainer.global_step, 2)]
    assert [e.value for e in scalars["torchscope/warnings"]] == [0]
    (text,) = events.Tensors("torchscope/gradient_health/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "no_grad" in table and "layer1.weight" in table

    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("torchscope/errors")]
    assert len(rows) == 1
    assert float(rows[0]["torchscope/errors"]) == 2 and float(rows[0]["torchscope/warnings"]) == 0
    assert int(rows[0]["step"]) == trainer.global_step


def test_the_report_of_a_fit_that_raises_is_logged_too(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    with pytest.raises(RuntimeError, match="planted failure"):
        fit(
            TinyModule(detach=True, fail_at=2),
            TorchscopeCallback(summary=False),
            tmp_path,
            logger=csv_logger,
            log_every_n_steps=1,
        )
    with open(f"{csv_logger.log_dir}/metrics.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("torchscope/errors")]
    assert [(int(r["step"]), float(r["torchscope/errors"])) for r in rows] == [(2, 2)]


def test_fail_on_error_fails_the_fit_and_removes_the_hooks(tmp_path):
    model = TinyModule(detach=True)
    callback = TorchscopeCallback(summary=False, fail_on_error=True)
    with pytest.raises(GradientHealthError, match="no_grad") as raised:
        fit(model, callback, tmp_path)
    assert raised.value.report is callback.report
    assert_no_hooks_left(model)


def test_warnings_do_not_fail_the_fit(tmp_path):
    callback = TorchscopeCallback(summary=False, fail_on_error=True)
    model = TinyModule()
    model.layer2.weight.data.mul_(1e5)  # exploding gradients: a warning, not an error
    fit(model, callback, tmp_path)
    assert callback.report is not None
    assert {f.severity for f in callback.report.findings} == {"warning"}


def test_a_fit_that_raises_removes_the_hooks_and_keeps_the_report(tmp_path, capsys):
    model = TinyModule(fail_at=2)
    callback = TorchscopeCallback(summary=False)
    with pytest.raises(RuntimeError, match="planted failure"):
        fit(model, callback, tmp_path)
    assert_no_hooks_left(model)
    assert callback.report is not None and callback.report.steps == 2
    assert "gradient health up to the RuntimeError" in capsys.readouterr().out


def test_gradient_accumulation_is_respected(tmp_path):
    callback = TorchscopeCallback(summary=False)
    # 5 batches per epoch: windows of 2, 2 and a short last one, in each of two epochs
    fit(TinyModule(), callback, tmp_path, loader(40), accumulate_grad_batches=2, max_epochs=2)
    report = callback.report
    assert report is not None
    assert report.ok, str(report)
    assert (report.steps, report.backward_passes) == (6, 10)


def test_bf16_mixed_precision_on_cpu_is_healthy(tmp_path):
    callback = TorchscopeCallback()
    fit(TinyModule(), callback, tmp_path, precision="bf16-mixed")
    assert callback.report is not None
    assert callback.report.ok, str(callback.report)
    assert callback.report.steps == 4


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fp16_grad_scaler_with_skipped_steps_is_healthy(tmp_path, capsys, accumulate):
    # Lightning's 16-mixed is CUDA-only; its plugin runs on the CPU with a CPU GradScaler. The
    # scale starts so high that the first steps overflow and the scaler skips them.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**23, growth_interval=1000)
    callback = TorchscopeCallback(summary=False)
    trainer = fit(
        TinyModule(),
        callback,
        tmp_path,
        loader(128),
        accumulate_grad_batches=accumulate,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )
    report = callback.report
    assert report is not None
    assert report.ok, str(report)
    skipped = trainer.global_step - report.steps
    assert 0 < skipped < trainer.global_step
    assert f"the GradScaler skipped {skipped} of {trainer.global_step}" in capsys.readouterr().out
    # gradients were judged unscaled: a gradient of ~1 scaled by 2**23 would be "exploding"
    assert max(max(h.grad_norm) for h in report.parameters) < 100


# -- freezing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_kind", ["sgd", "trainable_only"])
def test_frozen_layers_stay_bit_identical(tmp_path, optimizer_kind):
    model = TinyModule()
    model.optimizer_kind = optimizer_kind
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = TorchscopeCallback(summary=False, freeze=["layer1"])
    trainer = fit(model, callback, tmp_path)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == name.startswith("layer1."), name
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    if optimizer_kind == "trainable_only":  # frozen before configure_optimizers ran
        assert held == {id(model.layer2.weight), id(model.layer2.bias)}
    assert callback.report is not None
    assert callback.report.ok, str(callback.report)


class LateHead(TinyModule):
    def setup(self, stage: str) -> None:
        self.head = nn.Linear(2, 2)  # built after the callbacks' setup hook
        self.head_at_setup = [p.detach().clone() for p in self.head.parameters()]
        self.layer2_at_setup = self.layer2.weight.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(super().forward(x))


def test_freezing_a_layer_built_in_setup(tmp_path):
    model = LateHead()
    callback = TorchscopeCallback(summary=False, freeze="head")
    fit(model, callback, tmp_path)
    assert callback.report is not None
    assert callback.report.ok, str(callback.report)
    assert not callback.report.history["head.weight"].trainable
    assert all(
        torch.equal(p, at_setup)
        for p, at_setup in zip(model.head.parameters(), model.head_at_setup, strict=True)
    )
    assert not torch.equal(model.layer2.weight, model.layer2_at_setup)


def test_freeze_target_that_matches_nothing_fails_the_fit(tmp_path):
    with pytest.raises(ValueError, match="layer3"):
        fit(TinyModule(), TorchscopeCallback(summary=False, freeze=["layer3"]), tmp_path)


def test_options_are_checked():
    with pytest.raises(ValueError, match="names no target"):
        TorchscopeCallback(freeze=[])
    with pytest.raises(TypeError, match="freeze= takes"):
        TorchscopeCallback(freeze=[3])
    with pytest.raises(ValueError, match="gradient_health=True"):
        TorchscopeCallback(gradient_health=False, fail_on_error=True)
    with pytest.raises(TypeError):
        TorchscopeCallback(True, True, None, True)  # type: ignore[misc]  # fail_on_error is keyword-only


# -- Lightning stays optional -----------------------------------------------------------------


def test_lightning_is_optional_and_pytorch_lightning_is_a_fallback():
    script = textwrap.dedent(
        """
        import sys
        import torchscope, torchscope.collect.gradients
        assert not {"lightning", "pytorch_lightning"} & set(sys.modules), "imported lightning"

        sys.modules.update({"lightning": None, "lightning.pytorch": None, "pytorch_lightning": None})
        try:
            import torchscope.integrations.lightning
        except ImportError as e:
            assert "pip install lightning" in str(e), e
        else:
            raise AssertionError("no ImportError without lightning")

        del sys.modules["pytorch_lightning"]
        from torchscope.integrations.lightning import TorchscopeCallback
        import pytorch_lightning
        assert issubclass(TorchscopeCallback, pytorch_lightning.Callback)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_max_copy_bytes_reaches_the_monitor(tmp_path):
    callback = TorchscopeCallback(summary=False, max_copy_bytes=0)
    fit(TinyModule(), callback, tmp_path)
    report = callback.report
    assert report is not None and report.ok, str(report)
    assert all(r is None for p in report.parameters for r in p.update_ratio)  # no copy
    with pytest.raises(ValueError, match="max_copy_bytes"):
        TorchscopeCallback(max_copy_bytes=-1)
    with pytest.raises(ValueError, match="gradient_health=True"):
        TorchscopeCallback(gradient_health=False, max_copy_bytes=2**20)
