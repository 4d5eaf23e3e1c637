"""FLOP/MAC counting: analytic oracles, the same totals on every execution path, no silent zeros."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import torchscope
from torchscope.collect.costs import op_cost
from torchscope.render.table import rows

from .zoo import BY_NAME


def meta(build):
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (torchvision.models.resnet18, 1_814_073_344),
        (torchvision.models.resnet50, 4_089_184_256),
    ],
    ids=["resnet18", "resnet50"],
)
def test_torchvision_cnns_match_the_published_figures(build, expected):
    result = torchscope.summary(meta(build), input_size=(1, 3, 224, 224))
    assert result.total_macs == expected  # 1.814 G and 4.089 G
    assert result.total_flops == 2 * expected
    assert result.uncounted_ops == {}


def vit_b_16_analytic_macs(
    image: int = 224, patch: int = 16, dim: int = 768, mlp: int = 3072, layers: int = 12
) -> int:
    tokens = (image // patch) ** 2 + 1
    patch_embedding = (image // patch) ** 2 * dim * 3 * patch * patch
    attention = 4 * tokens * dim * dim + 2 * tokens * tokens * dim
    return patch_embedding + layers * (attention + 2 * tokens * dim * mlp) + dim * 1000


def test_vit_b_16_within_one_percent_of_the_analytic_count():
    result = torchscope.summary(meta(torchvision.models.vit_b_16), input_size=(1, 3, 224, 224))
    expected = vit_b_16_analytic_macs()
    assert abs(result.total_macs - expected) / expected < 0.01
    assert 17.5e9 < result.total_macs < 17.6e9  # 17.56 G


def rnn_analytic_macs(
    gates: int, input_size: int, hidden: int, layers: int, steps: int, batch: int
) -> int:
    return sum(
        steps * batch * gates * hidden * ((input_size if layer == 0 else hidden) + hidden)
        for layer in range(layers)
    )


@pytest.mark.parametrize(("cell", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_recurrent_layers_match_the_analytic_formula(cell, gates, mode):
    model = cell(input_size=12, hidden_size=20, num_layers=2, batch_first=True)
    result = torchscope.summary(model, input_size=(3, 7, 12), mode=mode)
    expected = rnn_analytic_macs(gates, 12, 20, 2, 7, 3)
    assert abs(result.total_macs - expected) / expected < 0.01
    assert result.uncounted_ops == {}


def test_depthwise_convolution_backward_is_about_twice_the_forward():
    model = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=32))
    result = torchscope.summary(model, input_size=(2, 32, 28, 28), mode="train")
    forward = {layer.name: layer.macs for layer in result.layers}
    assert forward["1"] == 2 * 28 * 28 * 32 * 9  # depthwise: one 3x3 filter per channel
    # backward: weight gradients of both convs, input gradient of the depthwise one only
    assert result.backward_macs == 2 * forward["1"] + forward["0"]


def test_convolution_variants():
    def macs(layer: nn.Module, shape: tuple[int, ...]) -> int:
        return torchscope.summary(layer, input_size=shape).total_macs

    assert macs(nn.Conv1d(4, 6, 3), (2, 4, 10)) == 2 * 6 * 8 * 4 * 3
    assert macs(nn.Conv2d(4, 8, 3, groups=2), (1, 4, 6, 6)) == 8 * 4 * 4 * 2 * 9
    assert macs(nn.Conv3d(2, 3, 2), (1, 2, 3, 3, 3)) == 3 * 8 * 2 * 8
    # transposed: every input element scatters to C_out/groups * k outputs
    assert macs(nn.ConvTranspose2d(4, 6, 3), (1, 4, 5, 5)) == 4 * 25 * 6 * 9


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "small_vit", "lstm", "gru", "transformer", "tied_lm"]
)
def test_totals_agree_across_eval_train_and_meta_and_any_depth(name):
    entry = BY_NAME[name]
    model = entry.build()
    inputs = entry.make_input()
    eval_macs = torchscope.summary(model, inputs, mode="eval").total_macs
    train_macs = torchscope.summary(model, inputs, mode="train").total_macs
    assert eval_macs == train_macs > 0
    on_meta = meta(entry.build)
    meta_inputs = torch.utils._pytree.tree_map(
        lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, entry.make_input()
    )
    assert torchscope.summary(on_meta, meta_inputs).total_macs == eval_macs
    for depth in (0, 1, 5):
        result = torchscope.summary(model, inputs, depth=depth)
        column = [r.cells["macs"] for r in rows(result)]
        assert result.total_macs == eval_macs
        assert sum(layer.self_macs for layer in result.layers) == eval_macs
        assert column[0] == "--" or depth == 0


def test_layer_macs_are_inclusive_and_self_macs_add_up():
    result = torchscope.summary(torchvision.models.resnet18(), input_size=(1, 3, 64, 64))
    by_index = {layer.index: layer for layer in result.layers}
    for layer in result.layers:
        children = [c for c in result.layers if c.parent == layer.index]
        assert layer.macs == layer.self_macs + sum(c.macs for c in children)
    assert by_index[0].macs == result.total_macs


class Sorts(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs() + torch.linalg.inv(x[..., :4, :4]).sum()


def test_ops_without_a_formula_are_listed_never_silent():
    result = torchscope.summary(Sorts(), input_size=(4, 4, 8))
    assert result.uncounted_ops  # FFT and matrix inverse: no formula
    assert any("fft" in name for name in result.uncounted_ops)
    text = str(result)
    assert "totals are lower bounds" in text and "fft" in text


def test_all_ops_adds_non_mac_flops_but_not_macs():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8), nn.Softmax(dim=-1))
    plain = torchscope.summary(model, input_size=(4, 8))
    everything = torchscope.summary(model, input_size=(4, 8), all_ops=True)
    assert plain.total_macs == everything.total_macs == 4 * 8 * 8
    assert plain.total_flops == 2 * plain.total_macs
    assert everything.total_flops > plain.total_flops
    relu = next(layer for layer in everything.layers if layer.type == "ReLU")
    assert relu.flops == 32 and relu.macs == 0
    assert "(all ops)" in str(everything)


def test_embedding_is_counted_as_zero_macs():
    result = torchscope.summary(
        nn.Embedding(100, 16), torch.zeros(2, 5, dtype=torch.long), mode="train"
    )
    assert result.total_macs == 0 and result.uncounted_ops == {}


def test_backward_is_reported_only_in_train_mode_and_leaves_grads_alone():
    model = BY_NAME["resnet18"].build()
    result = torchscope.summary(model, input_size=(2, 3, 32, 32), mode="train")
    assert result.backward_macs is not None and result.backward_macs > result.total_macs
    assert all(p.grad is None for p in model.parameters())
    assert torchscope.summary(model, input_size=(1, 3, 32, 32)).backward_macs is None
    assert "Backward MACs" in str(result)


def test_fused_attention_formulas():
    q = torch.empty(2, 3, 5, 8, device="meta")
    k = torch.empty(2, 3, 7, 8, device="meta")
    v = torch.empty(2, 3, 7, 4, device="meta")
    func = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    macs, flops, counted = op_cost(func, (q, k, v), {}, None, all_ops=False)
    assert counted and macs == 2 * 3 * 5 * 7 * (8 + 4) and flops == 2 * macs


def test_transformer_fast_path_matches_the_decomposed_path():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    fast = torchscope.summary(model, input_size=(2, 6, 32))  # eval + no_grad: fused kernel
    slow = torchscope.summary(model, input_size=(2, 6, 32), mode="train")
    expected = 2 * (2 * 6 * (4 * 32 * 32 + 2 * 6 * 32 + 2 * 32 * 64))
    assert fast.total_macs == slow.total_macs == expected


def test_a_7b_decoder_on_meta_is_sized_exactly():
    from torchscope.models import DecoderConfig, DecoderOnly

    config = DecoderConfig()
    with torch.device("meta"):
        model = DecoderOnly(config)
    result = torchscope.summary(
        model, input_size=(1, 512), dtypes=torch.long, depth=1, memory=True, optimizer="adamw"
    )
    assert result.total_params == config.parameter_count() == 6_738_415_616
    assert result.total_macs == config.forward_macs(512)
    assert result.uncounted_ops == {}
    assert result.memory is not None
    assert result.memory.optimizer_state == 2 * result.memory.gradients == 2 * result.param_bytes
    assert result.memory.training_peak > result.memory.parameters + result.memory.gradients


def schema_args(op, **named):
    """Positional arguments for ``op`` laid out by its schema; unnamed ones are None."""
    names = [argument.name for argument in op._schema.arguments if not argument.kwarg_only]
    unknown = set(named) - set(names)
    assert not unknown, f"{op} has no argument(s) {unknown}"
    return tuple(named.get(name) for name in names)


def cudnn_lstm_args(op, x, weights, *, stride, hidden, proj, layers, **extra):
    """Arguments of a cuDNN LSTM op (forward or backward) for a unidirectional, time-major LSTM."""
    return schema_args(
        op,
        input=x,
        weight=weights,
        weight_stride0=stride,
        mode=2,
        hidden_size=hidden,
        proj_size=proj,
        num_layers=layers,
        batch_first=False,
        dropout=0.0,
        train=True,
        bidirectional=False,
        batch_sizes=[],
        **extra,
    )


def test_cudnn_rnn_formulas_without_a_gpu():
    """cuDNN kernels cannot run here; their formulas are checked on meta tensors of their arguments."""
    steps, batch, inp, hidden = 7, 3, 12, 20
    x = torch.empty(steps, batch, inp, device="meta")
    weights = [
        torch.empty(4 * hidden, inp, device="meta"),
        torch.empty(4 * hidden, hidden, device="meta"),
        torch.empty(4 * hidden, device="meta"),
        torch.empty(4 * hidden, device="meta"),
        torch.empty(4 * hidden, hidden, device="meta"),
        torch.empty(4 * hidden, hidden, device="meta"),
        torch.empty(4 * hidden, device="meta"),
        torch.empty(4 * hidden, device="meta"),
    ]
    forward, backward_op = (
        torch.ops.aten._cudnn_rnn.default,
        torch.ops.aten._cudnn_rnn_backward.default,
    )
    shape = {"stride": 4, "hidden": hidden, "proj": 0, "layers": 2}
    macs, _, counted = op_cost(
        forward, cudnn_lstm_args(forward, x, weights, **shape), {}, None, all_ops=False
    )
    assert counted and macs == rnn_analytic_macs(4, inp, hidden, 2, steps, batch)
    args = cudnn_lstm_args(backward_op, x, weights, **shape, output_mask=[True] * 4)
    backward, _, _ = op_cost(backward_op, args, {}, None, all_ops=False)
    assert backward == 2 * macs


def test_cuda_attention_kernels_share_the_formula():
    q = torch.empty(2, 4, 16, 32, device="meta")
    expected = 2 * 4 * 16 * 16 * (32 + 32)
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"):
        func = getattr(torch.ops.aten, name).default
        macs, _, counted = op_cost(func, (q, q, q), {}, None, all_ops=False)
        assert counted and macs == expected, name
    backward = torch.ops.aten._scaled_dot_product_flash_attention_backward.default
    grad = torch.empty_like(q)
    macs, _, _ = op_cost(backward, (grad, q, q, q), {}, None, all_ops=False)
    assert macs == 2 * 4 * 16 * 16 * (3 * 32 + 2 * 32)


# -- review findings, each kept fixed ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v3_small",
        "mobilenet_v2",
        "efficientnet_b0",
        "resnet18",
        "densenet121",
        "shufflenet_v2_x0_5",
    ],
)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_no_false_alarms_on_torchvision_models(name, mode):
    model = getattr(torchvision.models, name)(num_classes=10)
    assert torchscope.summary(model, input_size=(2, 3, 64, 64), mode=mode).uncounted_ops == {}


def test_packed_sequences_and_embedding_bags_are_not_uncounted():
    packed = nn.utils.rnn.pack_padded_sequence(
        torch.ones(2, 4, 3), torch.tensor([4, 2]), batch_first=True
    )
    assert torchscope.summary(nn.LSTM(3, 5), packed, mode="train").uncounted_ops == {}
    bag = nn.EmbeddingBag(10, 4)
    assert torchscope.summary(bag, torch.zeros(2, 3, dtype=torch.long)).uncounted_ops == {}


def test_distance_and_less_common_products_have_formulas():
    class Ops(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
            m, v = torch.ones(4, 5), torch.ones(5)
            return (
                torch.cdist(a, b),
                torch.addmv(torch.zeros(4), m, v),
                torch.addbmm(torch.zeros(4, 6), torch.ones(3, 4, 5), torch.ones(3, 5, 6)),
                torch.addr(torch.zeros(4, 5), torch.ones(4), torch.ones(5)),
            )

    result = torchscope.summary(Ops(), (torch.randn(2, 10, 8), torch.randn(2, 12, 8)))
    assert result.uncounted_ops == {}
    assert result.total_macs == 2 * 10 * 12 * 8 + 4 * 5 + 3 * 4 * 5 * 6 + 4 * 5
    bilinear = torchscope.summary(nn.Bilinear(3, 4, 5), (torch.randn(2, 3), torch.randn(2, 4)))
    assert bilinear.uncounted_ops == {} and bilinear.total_macs == 2 * 5 * 3 * 4


def test_cudnn_lstm_with_projection():
    with torch.device("meta"):
        lstm = nn.LSTM(12, 20, proj_size=8)
    x = torch.empty(7, 3, 12, device="meta")
    forward = torch.ops.aten._cudnn_rnn.default
    args = cudnn_lstm_args(
        forward, x, list(lstm._flat_weights), stride=5, hidden=20, proj=8, layers=1
    )
    macs, _, _ = op_cost(forward, args, {}, None, all_ops=False)
    assert macs == 7 * 3 * (4 * 20 * 12 + 4 * 20 * 8 + 8 * 20)
    assert macs == torchscope.summary(lstm, x).total_macs  # the decomposed path agrees


def test_activation_checkpointing_adds_no_layers_in_train_mode():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(2)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x

    result = torchscope.summary(Checkpointed(), input_size=(4, 16), mode="train")
    assert len(result.layers) == 7 and not any(layer.failed for layer in result.layers)
    assert result.backward_macs > 0


@pytest.mark.parametrize(
    "name",
    [
        "alexnet",
        "googlenet",
        "inception_v3",
        "squeezenet1_1",
        "mnasnet1_0",
        "shufflenet_v2_x1_0",
        "efficientnet_b1",
        "efficientnet_v2_s",
        "convnext_tiny",
        "swin_v2_t",
        "maxvit_t",
        "wide_resnet50_2",
    ],
)
def test_torchvision_models_at_native_resolution_match_published_counts(name):
    weights = next(iter(torchvision.models.get_model_weights(name)))
    size = weights.transforms().crop_size[0]
    # googlenet/inception warn about their default initialisation unless it is chosen
    options = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        model = torchvision.models.get_model(name, **options)
    result = torchscope.summary(model, input_size=(1, 3, size, size), depth=0)
    published = weights.meta["_ops"] * 1e9  # GMACs, rounded to 3 decimals
    assert abs(result.total_macs - published) / published < 0.005
    assert result.uncounted_ops == {}


# -- grouped, scaled and quantised matrix products (MoE experts, fp8, int8/int4) ----------------


def _grouped(a_shape, b_shape, offs=None):
    """The MACs torchscope gives one ``_grouped_mm`` call, and the sum over its groups."""
    a, b = torch.randn(*a_shape), torch.randn(*b_shape)
    func = torch.ops.aten._grouped_mm.default
    out = func(a, b, offs=offs) if offs is not None else func(a, b)
    macs, _, counted = op_cost(func, (a, b), {"offs": offs}, out, all_ops=False)
    assert counted
    return macs, out


def test_grouped_matmuls_count_every_group_as_its_own_product():
    # (M, K) x (G, K, N), rows split by offs: each row meets one expert's (K, N)
    offs = torch.tensor([3, 8, 8, 12], dtype=torch.int32)  # an expert may get no rows
    macs, out = _grouped((12, 16), (4, 16, 8), offs)
    assert out.shape == (12, 8) and macs == 12 * 16 * 8
    # (G, M, K) x (G, K, N): a batched product
    macs, _ = _grouped((4, 5, 16), (4, 16, 8))
    assert macs == 4 * 5 * 16 * 8
    # (M, K) x (K, N), K split by offs: G outputs whose reductions add up to K
    offs = torch.tensor([4, 10, 16], dtype=torch.int32)
    macs, out = _grouped((5, 16), (16, 8), offs)
    assert out.shape == (3, 5, 8) and macs == sum(5 * k * 8 for k in (4, 6, 6))  # the per-group sum


def test_a_moe_layer_counts_its_experts(caplog):
    from tests.test_memory import Experts

    model, x = Experts(experts=4, dim=16, hidden=32), torch.randn(64, 16)
    result = torchscope.summary(model, x, mode="train")
    assert result.uncounted_ops == {}
    assert result.total_macs == 64 * 16 * 32 + 64 * 32 * 16
    # the weights' gradients of both products, and the hidden activations' gradient (the
    # input does not require one): three products of the same size, each a grouped matmul
    assert result.backward_macs == 3 * 64 * 16 * 32


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (
            "_int_mm",
            lambda: (torch.empty(32, 64, dtype=torch.int8), torch.empty(64, 48, dtype=torch.int8)),
        ),
        ("_scaled_mm", lambda: (torch.empty(32, 64), torch.empty(64, 48))),
        ("_weight_int8pack_mm", lambda: (torch.empty(32, 64), torch.empty(48, 64))),
        ("_mixed_dtypes_linear", lambda: (torch.empty(32, 64), torch.empty(64, 48))),
    ],
)
def test_quantised_and_scaled_products_are_priced_from_their_shapes(name, args):
    """M x K activations against a K -> N weight, whatever its storage: 32 * 64 * 48 MACs.
    Priced from the shapes (the kernels need hardware this machine may not have)."""
    func = getattr(torch.ops.aten, name).default
    out = torch.empty(32, 48, device="meta")
    macs, _, counted = op_cost(func, args(), {}, out, all_ops=False)
    assert counted and macs == 32 * 64 * 48


def test_ops_without_multiply_adds_are_not_uncounted():
    """MoE routing (histc, floor_divide), weight norm, unique and detection's nms/roi_align
    do no multiply-accumulate: they are classified, so the totals stay exact, not lower bounds."""

    class Router(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.utils.weight_norm(nn.Conv1d(4, 4, 3))

        def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
            counts = torch.histc(ids.float(), bins=4, min=0, max=3)
            slot = torch.floor_divide(ids, 2)
            return self.conv(x), counts, slot, torch.unique(ids)

    with pytest.warns(FutureWarning):  # weight_norm's own deprecation
        model = Router()
    result = torchscope.summary(model, (torch.randn(2, 4, 8), torch.tensor([0, 3, 1, 3])))
    assert result.uncounted_ops == {}
    assert result.total_macs == 2 * 4 * 6 * 4 * 3
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])

    class Detector(nn.Module):
        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            kept = torchvision.ops.nms(boxes, scores, 0.5)
            rois = torch.cat([torch.zeros(len(kept), 1), boxes[kept]], dim=1)
            return kept, torchvision.ops.roi_align(features, rois, output_size=2)

    found = torchscope.summary(Detector(), torch.randn(1, 3, 32, 32), all_ops=True)
    assert (
        found.uncounted_ops == {} and found.total_flops > 0
    )  # roi_align's samples, as a reduction


# -- recurrent modules priced from their weights, their fused kernel run without Python modes ----


def _recurrent_cases() -> list[object]:
    packed = nn.utils.rnn.pack_padded_sequence(
        torch.randn(3, 9, 6), torch.tensor([9, 5, 2]), batch_first=True
    )
    return [
        pytest.param(
            nn.GRU(6, 10, num_layers=2, bidirectional=True), torch.randn(4, 7, 6), id="bigru"
        ),
        pytest.param(
            nn.LSTM(6, 10, batch_first=True, proj_size=4), torch.randn(4, 7, 6), id="lstm-proj"
        ),
        pytest.param(nn.RNN(6, 10, nonlinearity="relu"), torch.randn(7, 6), id="rnn-unbatched"),
        pytest.param(nn.LSTM(6, 10, num_layers=3, bidirectional=True), packed, id="lstm-packed"),
    ]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize(("rnn", "x"), _recurrent_cases())
def test_recurrent_modules_priced_from_weights_match_the_op_by_op_count(rnn, x, mode):
    """all_ops=True counts every op the recurrent kernels run, one by one; the default prices
    the module from its weights with the fused kernel: the MACs must agree exactly."""
    fast = torchscope.summary(rnn, (x,), mode=mode)
    op_by_op = torchscope.summary(rnn, (x,), mode=mode, all_ops=True)
    assert fast.total_macs == op_by_op.total_macs > 0
    assert fast.layers[0].macs == fast.total_macs
    assert fast.uncounted_ops == {}
    if mode == "train":
        assert fast.backward_macs == op_by_op.backward_macs > 0


def test_a_recurrent_forward_is_not_run_op_by_op_under_the_counter(monkeypatch):
    """A 50-step LSTM under the cost counter ran hundreds of aten ops through Python; priced
    from its weights, its forward is one fused call the counter does not see."""
    from torchscope.collect.costs import CostCounter

    seen: list[str] = []
    original = CostCounter.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        seen.append(str(func))
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(CostCounter, "__torch_dispatch__", counting)
    model = nn.Sequential(nn.LSTM(8, 16, num_layers=2, batch_first=True))
    result = torchscope.summary(model, torch.randn(2, 50, 8))
    assert len(seen) < 20, seen[:30]
    assert result.total_macs == 2 * 50 * (4 * 16 * 8 + 4 * 16 * 16 + 4 * 16 * 16 + 4 * 16 * 16)
    assert "forward" not in model[0].__dict__  # the summary's wrapper is gone


def test_a_recurrent_subclass_is_counted_op_by_op():
    class Scaled(nn.GRU):
        def forward(self, x, h=None):
            out, h = super().forward(x, h)
            return out @ torch.ones(out.shape[-1], 3), h

    result = torchscope.summary(Scaled(4, 8, batch_first=True), torch.randn(2, 5, 4))
    assert result.total_macs == 2 * 5 * (3 * 8 * 4 + 3 * 8 * 8) + 2 * 5 * 8 * 3
