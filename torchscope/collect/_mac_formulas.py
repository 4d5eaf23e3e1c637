"""The MAC formulas of torchscope's cost counter, one per op family, and the table of aten ops
they price (``MAC_FORMULAS``).

Each formula takes an op's ``(args, kwargs, out)`` (``out``: the first output when an op
returns several) and returns its multiply-accumulates; the counter charges 2 FLOPs per MAC.
The conventions are in :mod:`torchscope.collect.costs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["MAC_FORMULAS", "MAC_FORMULAS_BY_NAME", "MacFormula", "packets"]

aten = torch.ops.aten
MacFormula = Callable[[Sequence[Any], dict[str, Any], Any], int]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


# -- matrix products ---------------------------------------------------------------------------


def _mm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, offset: int = 0) -> int:
    a, b = _shape(args[offset]), _shape(args[offset + 1])
    return a[0] * a[1] * b[1]


def _bmm(args: Sequence[Any], kwargs: dict[str, Any], out: Any, offset: int = 0) -> int:
    a, b = _shape(args[offset]), _shape(args[offset + 1])
    return a[0] * a[1] * a[2] * b[2]


def _matmul(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    inner = int(args[0].size(-1))  # every output element is a dot product of this length
    return int(out.numel()) * inner  # numel, not shape: nested (ragged) tensors have one too


def _grouped_mm(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    """``_grouped_mm`` and its scaled kin: G independent products in one kernel (MoE experts).

    (M, K) x (G, K, N) with ``offs`` over M, (G, M, K) x (G, K, N), and (G, M, K) x (K, N)
    with ``offs`` over N: every output element is a dot product of length K. (M, K) x (K, N)
    with ``offs`` over K gives G outputs (M, N) whose lengths add up to K: M * K * N in all.
    Rows that ``offs`` leaves out (an ``offs[-1]`` below M) are counted too: reading it would
    synchronise with the device, and MoE layers fill every row.
    """
    a, b = _shape(args[0]), _shape(args[1])
    if len(a) == 2 and len(b) == 2:
        return a[0] * a[1] * b[1]
    return int(out.numel()) * a[-1]


def _weight_packed_mm(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    """Quantised matmuls whose weight is packed (int4/int8): the activation (M, K) gives K,
    the output (M, N) the number of dot products."""
    return int(out.numel()) * int(args[0].size(-1))


def _deform_conv2d(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    """torchvision's deformable convolution: a convolution's MACs (the bilinear sampling of
    the offsets is not multiply-accumulate work on the weight)."""
    weight = _shape(args[1])  # [C_out, C_in/groups, kh, kw]
    return int(out.numel()) * _numel(weight[1:])


def _linear(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    weight = _shape(args[1])  # [out_features, in_features]
    return int(args[0].numel()) // weight[1] * weight[0] * weight[1]


# -- convolution -------------------------------------------------------------------------------


def _conv_macs(
    input_shape: Sequence[int], weight: Sequence[int], out_shape: Sequence[int], transposed: bool
) -> int:
    # weight: [C_out, C_in/groups, *k] (or [C_in, C_out/groups, *k] when transposed); every
    # output element of a convolution (every input element of a transposed one) is a dot
    # product of weight.shape[1] * prod(k) terms: groups and depthwise need no special case
    per_element = _numel(weight[1:])
    return _numel(input_shape if transposed else out_shape) * per_element


def _convolution(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    return _conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), transposed)


def _conv_plain(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), transposed=False)


def _conv_transposed(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), transposed=True)


def _convolution_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
    #  output_padding, groups, output_mask): the input gradient is a (transposed)
    # convolution of the same size as the forward one, and so is the weight gradient
    grad_output, inp, weight = _shape(args[0]), _shape(args[1]), _shape(args[2])
    transposed, mask = bool(args[7]), args[10]
    forward = _conv_macs(inp, weight, grad_output, transposed)
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


# -- attention -----------------------------------------------------------------------------------


def _attention_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> int:
    # [B, H, L, E] x [B, H, S, E] -> scores [B, H, L, S]; scores x [B, H, S, Ev]
    batch_heads = _numel(q[:-2])
    length, embed, source, value_embed = q[-2], q[-1], k[-2], v[-1]
    return batch_heads * length * source * (embed + value_embed)


def _sdpa(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _attention_macs(_shape(args[0]), _shape(args[1]), _shape(args[2]))


def _sdpa_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # fused kernels recompute the scores (1 product) and form dV, dP, dQ, dK (4 products)
    q, k, v = _shape(args[1]), _shape(args[2]), _shape(args[3])
    batch_heads = _numel(q[:-2])
    length, embed, source, value_embed = q[-2], q[-1], k[-2], v[-1]
    return batch_heads * length * source * (3 * embed + 2 * value_embed)


def _lengths(t: torch.Tensor) -> list[int]:
    """Sequence length of each batch element of a [B, L, E] tensor, nested ones included."""
    if t.is_nested:
        return [int(size[0]) for size in t._nested_tensor_size()]
    return [int(t.shape[1])] * int(t.shape[0])


def _mha_macs(query_lengths: list[int], key_lengths: list[int], embed: int) -> int:
    total = 0
    for length, source in zip(query_lengths, key_lengths, strict=True):
        total += length * embed * embed  # query projection
        total += 2 * source * embed * embed  # key and value projections
        total += 2 * length * source * embed  # scores and weighted sum, over all heads
        total += length * embed * embed  # output projection
    return total


def _native_mha(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    query, key, embed = args[0], args[1], int(args[3])
    return _mha_macs(_lengths(query), _lengths(key), embed)


def _encoder_layer_fwd(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    src, embed = args[0], int(args[1])
    hidden = int(args[14].shape[0])  # ffn_weight_1: [dim_feedforward, embed]
    lengths = _lengths(src)
    return _mha_macs(lengths, lengths, embed) + sum(2 * n * embed * hidden for n in lengths)


# -- recurrent layers ------------------------------------------------------------------------------


def _mkldnn_rnn_layer(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (input, weight_ih, weight_hh, bias_ih, bias_hh, hx, cx, reverse, batch_sizes, mode, ...)
    weight_ih = _shape(args[1])  # [gates * hidden, input]
    steps_times_batch = _numel(_shape(args[0])) // weight_ih[1]
    return steps_times_batch * (_numel(weight_ih) + _numel(_shape(args[2])))


def _mkldnn_rnn_layer_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (input, weight_ih, weight_hh, ...): input/hidden gradients and weight gradients
    return 2 * _mkldnn_rnn_layer(args, kwargs, out)


def _cudnn_rnn(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (input, weight list, weight_stride0, weight_buf, hx, cx, mode, hidden_size, proj_size,
    #  num_layers, batch_first, dropout, train, bidirectional, batch_sizes, dropout_state)
    inp, weights, stride = args[0], args[1], int(args[2])
    batch_sizes = args[14]
    if batch_sizes is not None and len(batch_sizes):
        steps_times_batch = int(sum(int(b) for b in batch_sizes))
    else:
        steps_times_batch = int(inp.shape[0]) * int(inp.shape[1])
    projected = (
        args[8] is not None and int(args[8]) > 0
    )  # LSTM proj_size: w_hr is the last of each run
    total = 0
    for start in range(0, len(weights), stride):
        total += _numel(_shape(weights[start])) + _numel(_shape(weights[start + 1]))
        if projected:
            total += _numel(_shape(weights[start + stride - 1]))
    return steps_times_batch * total


def _cudnn_rnn_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (input, weight, weight_stride0, weight_buf, hx, cx, output, grad_output, grad_hy,
    #  grad_cy, mode, hidden_size, proj_size, num_layers, batch_first, dropout, train,
    #  bidirectional, batch_sizes, dropout_state, reserve, output_mask)
    forward_args = list(args[:6]) + [None, None, args[12]] + [None] * 5 + [args[18]]
    return 2 * _cudnn_rnn(forward_args, kwargs, out)


def _addmv(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    matrix = _shape(args[1])  # (self, mat [n, m], vec [m])
    return matrix[0] * matrix[1]


def _addbmm(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _bmm(args, kwargs, out, offset=1)  # (self, batch1 [b, n, m], batch2 [b, m, p])


def _addr(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return int(args[1].numel()) * int(args[2].numel())  # outer product: n * m products


def _trilinear(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim): each input is unsqueezed
    # at its expand dims, and every element of their broadcast product is one
    # multiply-accumulate (nn.Bilinear: batch x out x in1 x in2)
    shapes = [_unsqueezed(_shape(args[i]), list(args[3 + i])) for i in range(3)]
    return _numel([max(dims) for dims in zip(*shapes, strict=True)])


def _unsqueezed(shape: tuple[int, ...], expand: list[int]) -> list[int]:
    dims = list(shape)
    for position in sorted(int(d) for d in expand):
        dims.insert(position, 1)
    return dims


def _cdist(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (x1 [.., P, M], x2 [.., R, M], p, compute_mode): one difference-and-accumulate per
    # coordinate of every pair
    return int(out.numel()) * int(args[0].shape[-1])


def _cdist_backward(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    # (grad, x1, x2, p, cdist): gradients for x1 from every pair's coordinates
    return int(args[4].numel()) * int(args[1].shape[-1])


def _zero(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return 0


def packets(*names: str) -> list[Any]:
    return [getattr(aten, name) for name in names if hasattr(aten, name)]


def _addmm(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _mm(args, kwargs, out, offset=1)  # (bias, a, b)


def _baddbmm(args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> int:
    return _bmm(args, kwargs, out, offset=1)


# formula -> the aten ops it prices (names missing from this torch build are skipped)
_REGISTRY: tuple[tuple[MacFormula, tuple[str, ...]], ...] = (
    (_mm, ("mm",)),
    (_addmm, ("addmm", "_addmm_activation")),
    (_bmm, ("bmm",)),
    (_baddbmm, ("baddbmm",)),
    (_matmul, ("matmul", "dot", "mv", "vdot", "_scaled_mm", "_scaled_mm_v2", "_int_mm")),
    (_grouped_mm, ("_grouped_mm", "_scaled_grouped_mm", "_scaled_grouped_mm_v2")),
    (
        _weight_packed_mm,
        (
            "_weight_int4pack_mm",
            "_weight_int4pack_mm_for_cpu",
            "_weight_int4pack_mm_with_scales_and_zeros",
            "_weight_int8pack_mm",
            "_mixed_dtypes_linear",
            "_dyn_quant_matmul_4bit",
        ),
    ),
    (_linear, ("linear",)),
    (_convolution, ("convolution", "_convolution")),
    (
        _conv_plain,
        ("cudnn_convolution", "mkldnn_convolution", "_slow_conv2d_forward", "miopen_convolution"),
    ),
    (_conv_transposed, ("cudnn_convolution_transpose", "miopen_convolution_transpose")),
    (_convolution_backward, ("convolution_backward",)),
    (
        _sdpa,
        (
            "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention",
            "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_fused_attention_overrideable",
        ),
    ),
    (
        _sdpa_backward,
        (
            "_scaled_dot_product_flash_attention_backward",
            "_scaled_dot_product_efficient_attention_backward",
            "_scaled_dot_product_cudnn_attention_backward",
            "_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_fused_attention_overrideable_backward",
        ),
    ),
    (_native_mha, ("_native_multi_head_attention",)),
    (_encoder_layer_fwd, ("_transformer_encoder_layer_fwd",)),
    (_mkldnn_rnn_layer, ("mkldnn_rnn_layer",)),
    (_mkldnn_rnn_layer_backward, ("mkldnn_rnn_layer_backward",)),
    (_cudnn_rnn, ("_cudnn_rnn",)),
    (_cudnn_rnn_backward, ("_cudnn_rnn_backward",)),
    (_addmv, ("addmv",)),
    (_addbmm, ("addbmm",)),
    (_addr, ("addr",)),
    (_trilinear, ("_trilinear",)),
    (_cdist, ("_cdist_forward", "_euclidean_dist")),
    (_cdist_backward, ("_cdist_backward",)),
    # lookups and scatter-adds: no multiply-accumulate, but counted (not "uncounted")
    (
        _zero,
        (
            "embedding",
            "embedding_dense_backward",
            "_embedding_bag",
            "_embedding_bag_forward_only",
            "_embedding_bag_backward",
            "_embedding_bag_dense_backward",
            "embedding_backward",
        ),
    ),
)
MAC_FORMULAS: dict[Any, MacFormula] = {
    packet: formula for formula, names in _REGISTRY for packet in packets(*names)
}
#: formulas of ops outside aten, by their packet's name (their library may not be loaded)
MAC_FORMULAS_BY_NAME: dict[str, MacFormula] = {"torchvision.deform_conv2d": _deform_conv2d}
