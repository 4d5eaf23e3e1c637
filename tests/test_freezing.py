"""Freezing must mean bit-identical: parameters, norm statistics and optimizer state included."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchscope
from torchscope.collect.freezing import is_frozen


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5)


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g))
        for _ in range(n)
    ]


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, *, set_to_none: bool
) -> None:
    model.train()
    for x, y in batches(steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def tensors_of(model: nn.Module, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.clone() for k, v in state.items() if k.startswith(prefixes)}


OPTIMIZERS = {
    "sgd_momentum_wd": lambda params: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=1e-2
    ),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-1),
    "rmsprop": lambda params: torch.optim.RMSprop(params, lr=1e-3, momentum=0.9, weight_decay=1e-2),
}
FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.")


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("tell_optimizer", [True, False], ids=["optimizer=opt", "no-optimizer"])
def test_frozen_parameters_and_buffers_stay_bit_identical(
    optimizer_name, set_to_none, tell_optimizer
):
    model = resnet()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())  # holds every parameter
    train(model, optimizer, 1, set_to_none=set_to_none)  # momentum / Adam moments now exist
    frozen = torchscope.freeze(
        model, "conv1", "bn1", "layer1", "layer2", optimizer=optimizer if tell_optimizer else None
    )
    assert frozen and all(name.startswith(FROZEN) for name in frozen)
    before = tensors_of(model, FROZEN)
    head_before = model.fc.weight.detach().clone()

    train(model, optimizer, 5, set_to_none=set_to_none)

    after = tensors_of(model, FROZEN)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert not torch.equal(model.fc.weight, head_before), "the trainable part must still train"
    assert model.layer1[0].bn1.training is False and model.layer3[0].bn1.training is True


def test_frozen_norm_layers_stay_in_eval_through_train():
    model = resnet()
    torchscope.freeze(model, nn.BatchNorm2d)
    model.train()
    model.train(True)
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.training and model.layer1.training
    model.eval()
    model.train()
    assert not model.bn1.training


def test_bn_train_leaves_norm_layers_trainable():
    model = resnet()
    names = torchscope.freeze(model, "layer1", bn="train")
    assert names and not any(".bn" in name for name in names)
    assert (
        model.layer1[0].bn1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    )
    stats = model.layer1[0].bn1.running_mean.clone()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), 2, set_to_none=True)
    assert not torch.equal(stats, model.layer1[0].bn1.running_mean)


def test_unfreeze_adds_a_param_group_and_parameters_move_next_step():
    model = resnet()
    torchscope.freeze(model)
    torchscope.unfreeze(model, "fc")
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9
    )
    train(model, optimizer, 2, set_to_none=True)
    layer4 = model.layer4[1].conv2.weight.detach().clone()

    names = torchscope.unfreeze(model, "layer4", optimizer=optimizer, lr=0.01)
    assert "layer4.1.conv2.weight" in names
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["lr"] == 0.01
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {
        id(p) for p in model.layer4.parameters()
    }
    assert model.layer4[0].bn1.training  # pinned eval released, follows the model again
    train(model, optimizer, 1, set_to_none=True)
    assert not torch.equal(layer4, model.layer4[1].conv2.weight)

    torchscope.unfreeze(model, "layer4", optimizer=optimizer)  # already held: no new group
    assert len(optimizer.param_groups) == 2


def test_unfreeze_parameters_the_optimizer_already_holds():
    model = resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torchscope.freeze(model, "layer3", optimizer=optimizer)
    train(model, optimizer, 2, set_to_none=False)
    weight = model.layer3[0].conv1.weight.detach().clone()
    torchscope.unfreeze(model, "layer3", optimizer=optimizer)
    assert len(optimizer.param_groups) == 1
    train(model, optimizer, 1, set_to_none=False)
    assert not torch.equal(weight, model.layer3[0].conv1.weight)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (("layer1.0",), {"layer1.0."}),
        (("layer[12].*",), {"layer1.", "layer2."}),
        (
            ("*.bn2",),
            {
                "layer1.0.bn2.",
                "layer1.1.bn2.",
                "layer2.0.bn2.",
                "layer2.1.bn2.",
                "layer3.0.bn2.",
                "layer3.1.bn2.",
                "layer4.0.bn2.",
                "layer4.1.bn2.",
            },
        ),
        ((nn.Linear,), {"fc."}),
    ],
)
def test_target_kinds(targets, expected):
    model = resnet()
    names = torchscope.freeze(model, *targets)
    assert names and all(name.startswith(tuple(expected)) for name in names)
    assert {prefix for prefix in expected if any(n.startswith(prefix) for n in names)} == expected
    for name, param in model.named_parameters():
        assert param.requires_grad == (name not in names)


def test_module_object_target_and_whole_model():
    model = resnet()
    assert torchscope.freeze(model, model.layer3[1]) == tuple(
        f"layer3.1.{n}" for n, _ in model.layer3[1].named_parameters()
    )
    torchscope.freeze(model)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(is_frozen(p) for p in model.parameters())
    torchscope.unfreeze(model)
    assert all(p.requires_grad for p in model.parameters()) and not any(
        is_frozen(p) for p in model.parameters()
    )


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("layer5", ValueError, r"no module matches 'layer5'; did you mean 'layer4'"),
        ("layer9.*", ValueError, "no module matches"),
        (nn.LSTM, ValueError, "no module of type LSTM in the model; types present: .*BasicBlock"),
        (nn.Linear(2, 2), ValueError, "not part of the model"),
        (3, TypeError, "a target must be"),
    ],
)
def test_bad_targets(target, error, match):
    model = resnet()
    with pytest.raises(error, match=match):
        torchscope.freeze(model, target)
    assert all(p.requires_grad for p in model.parameters()), "a failed call must change nothing"


def test_bad_options():
    model = resnet()
    with pytest.raises(ValueError, match="bn must be 'eval' or 'train'"):
        torchscope.freeze(model, bn="frozen")
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        torchscope.freeze(model, optimizer=[1])
    with pytest.raises(ValueError, match="pass optimizer= too"):
        torchscope.unfreeze(model, lr=0.1)
    with pytest.raises(ValueError, match="did you mean 'layer4'"):
        torchscope.freeze_until(model, "layr4")


def test_freeze_until_resnet_and_vit():
    model = resnet()
    names = torchscope.freeze_until(model, "layer4")
    assert {n.split(".")[0] for n in names} == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert all(p.requires_grad for p in model.layer4.parameters()) and model.fc.weight.requires_grad
    assert model.layer3[1].bn2.training is False and model.layer4[0].bn1.training is True

    vit = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
    )
    names = torchscope.freeze_until(vit, "encoder.layers.encoder_layer_2")
    assert (
        "class_token" in names and "conv_proj.weight" in names and "encoder.pos_embedding" in names
    )
    assert "encoder.layers.encoder_layer_1.mlp.0.weight" in names
    assert (
        vit.encoder.layers.encoder_layer_2.mlp[0].weight.requires_grad
        and vit.heads.head.weight.requires_grad
    )
    assert vit.encoder.ln.weight.requires_grad


def test_frozen_context_restores_everything_also_on_error():
    model = resnet()
    model.layer2.eval()
    model.fc.bias.requires_grad_(False)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.step()
    grad = model.conv1.weight.grad
    momentum = optimizer.state[model.conv1.weight]["momentum_buffer"]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    with pytest.raises(RuntimeError, match="inside"):
        with torchscope.frozen(model, "conv1", "layer1", optimizer=optimizer) as names:
            assert "conv1.weight" in names and model.conv1.weight.grad is None
            assert model.conv1.weight not in optimizer.state
            model.train()
            assert not model.layer1[0].bn1.training
            raise RuntimeError("inside")

    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.conv1.weight.grad is grad and not is_frozen(model.conv1.weight)
    assert optimizer.state[model.conv1.weight]["momentum_buffer"] is momentum
    model.train()
    assert model.layer1[0].bn1.training, "no pin may outlive the block"


def test_trainable_report(golden):
    model = resnet()
    torchscope.freeze_until(model, "layer4")
    report = torchscope.trainable_report(model)
    assert report.frozen_params == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.rows[0].pinned_eval == 15
    assert [row.name for row in report.rows][:3] == ["", "conv1", "bn1"]
    assert report.to_dict()["rows"][0]["frozen_params"] == report.frozen_params
    golden("trainable_report_resnet18.txt", str(report) + "\n")
    with pytest.raises(ValueError, match="depth"):
        torchscope.trainable_report(model, depth=-1)


def test_pins_survive_deepcopy_and_pickle(tmp_path):
    model = resnet()
    torchscope.freeze(model, "layer1")
    clone = copy.deepcopy(model)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    for copy_ in (clone, loaded):
        copy_.train()
        assert not copy_.layer1[0].bn1.training and copy_.layer2[0].bn1.training


# -- properties ------------------------------------------------------------------------------------


@st.composite
def module_trees(draw: st.DrawFn) -> nn.Module:
    """Random nesting of Sequential blocks with Linear, BatchNorm1d and Dropout leaves."""

    def block(level: int) -> nn.Module:
        kind = draw(
            st.sampled_from(
                ["linear", "bn", "drop", "seq"] if level < 3 else ["linear", "bn", "drop"]
            )
        )
        if kind == "linear":
            return nn.Linear(4, 4, bias=draw(st.booleans()))
        if kind == "bn":
            return nn.BatchNorm1d(4, track_running_stats=draw(st.booleans()))
        if kind == "drop":
            return nn.Dropout()
        return nn.Sequential(*(block(level + 1) for _ in range(draw(st.integers(1, 3)))))

    model = nn.Sequential(*(block(1) for _ in range(draw(st.integers(1, 4)))))
    for module in model.modules():
        if draw(st.integers(0, 4)) == 0:
            module.training = False
    for param in model.parameters():
        if draw(st.integers(0, 4)) == 0:
            param.requires_grad_(False)
    return model


def _flags(model: nn.Module) -> tuple[list[bool], list[bool], list[bool]]:
    return (
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        [is_frozen(p) for p in model.parameters()],
    )


@settings(max_examples=60, deadline=None)
@given(module_trees(), st.data())
def test_random_freeze_sequences_inside_frozen_restore_flags_exactly(model, data):
    names = [name for name, _ in model.named_modules() if name]
    before = _flags(model)
    outer = data.draw(st.lists(st.sampled_from(names), max_size=2))
    with torchscope.frozen(model, *outer, bn=data.draw(st.sampled_from(["eval", "train"]))):
        for _ in range(data.draw(st.integers(0, 5))):
            op = data.draw(st.sampled_from(["freeze", "unfreeze", "train", "eval", "nested"]))
            targets = data.draw(st.lists(st.sampled_from(names), max_size=2))
            if op == "freeze":
                torchscope.freeze(model, *targets, bn=data.draw(st.sampled_from(["eval", "train"])))
            elif op == "unfreeze":
                torchscope.unfreeze(model, *targets)
            elif op == "train":
                model.train()
            elif op == "eval":
                model.eval()
            else:
                with torchscope.frozen(model, *targets):
                    model.train()
    assert _flags(model) == before
    model.train()
    assert all(m.training for m in model.modules()), "no eval pin outlives frozen()"


@settings(max_examples=40, deadline=None)
@given(module_trees(), st.data())
def test_freeze_then_unfreeze_everything_leaves_all_trainable(model, data):
    names = [name for name, _ in model.named_modules() if name]
    inside: dict[int, nn.Module] = {}
    for _ in range(data.draw(st.integers(1, 4))):
        targets = data.draw(st.lists(st.sampled_from(names), max_size=3))
        torchscope.freeze(model, *targets)
        for target in targets or [""]:
            inside.update((id(m), m) for m in model.get_submodule(target).modules())
    pinned = [m for m in inside.values() if isinstance(m, nn.BatchNorm1d) and m.track_running_stats]
    model.train()
    assert all(not m.training for m in pinned)
    torchscope.unfreeze(model)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


# -- review findings, each kept fixed ------------------------------------------------------------


def test_a_norm_layer_rebuilt_after_freezing_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    torchscope.freeze(model, "0", "1")
    assert torchscope.trainable_report(model).unpinned_frozen_norms == ()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # new module objects, no pin
    model.train()
    report = torchscope.trainable_report(model)
    assert report.unpinned_frozen_norms == ("1",)
    assert "Freeze them again after the conversion: 1" in str(report)
    torchscope.freeze(model, "1")
    model.train()
    assert torchscope.trainable_report(model).unpinned_frozen_norms == () and not model[1].training


def test_other_buffer_updating_layers_are_pinned_too():
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Linear(64, 32)), nn.Linear(32, 2))
    power_iteration = model[0].parametrizations.weight[0]  # holds the _u/_v buffers
    torchscope.freeze(model, "0")
    model.train()
    assert not power_iteration.training
    state = {k: v.clone() for k, v in model[0].state_dict().items()}
    model(torch.randn(3, 64))
    assert all(torch.equal(state[k], v) for k, v in model[0].state_dict().items())
    torchscope.unfreeze(model, "0")
    model.train()
    assert power_iteration.training  # released: power iteration runs again in training


def test_lazy_modules_are_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyBatchNorm1d(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="run one forward pass first"):
        torchscope.freeze(model)
    assert model[0].weight.requires_grad and "train" not in model[1].__dict__
    report = torchscope.trainable_report(nn.Sequential(nn.Linear(2, 3), nn.LazyLinear(3)))
    assert report.trainable_params == 9


def test_unfreeze_with_lr_but_no_optimizer_changes_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    torchscope.freeze(model)
    with pytest.raises(ValueError, match="pass optimizer= too"):
        torchscope.unfreeze(model, lr=0.1)
    assert not any(p.requires_grad for p in model.parameters()) and "train" in model[1].__dict__


def test_frozen_parameters_survive_copies(tmp_path):
    from torchscope.collect.freezing import frozen_parameters

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    torchscope.freeze(model, "0")
    assert set(frozen_parameters(model)) == {"0.weight", "0.bias"}
    clone = copy.deepcopy(model)
    assert set(frozen_parameters(clone)) == {"0.weight", "0.bias"}
    model.load_state_dict(model.state_dict(), assign=True)
    assert set(frozen_parameters(model)) == {"0.weight", "0.bias"}
    torchscope.unfreeze(model, "0")
    assert frozen_parameters(model) == {}
    with torchscope.frozen(model, "1"):
        assert set(frozen_parameters(model)) == {"1.weight", "1.bias"}
    assert frozen_parameters(model) == {}


def test_pinned_layers_are_freed_by_reference_counting():
    import gc
    import weakref

    model = resnet()
    torchscope.freeze(model)
    refs = [weakref.ref(b) for b in model.buffers()]
    gc.disable()
    try:
        del model
        assert all(r() is None for r in refs)
    finally:
        gc.enable()
