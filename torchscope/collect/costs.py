"""Exact FLOP/MAC counting at the aten level, with an explicit list of what could not be counted.

A :class:`CostCounter` is a ``TorchDispatchMode``: it sees every aten op that actually runs
(fused kernels included: the transformer fast path, ``mkldnn_rnn_layer``, flash attention)
and prices it with a formula of our own. Conventions:

- a multiply-accumulate (MAC) is one multiplication and one addition: FLOPs = 2 x MACs for
  matrix products, convolutions, attention and recurrent cells;
- ops without multiply-accumulates (elementwise, reductions, normalisation, softmax,
  pooling) cost 0 MACs; with ``all_ops=True`` they add FLOPs: 1 per output element for
  elementwise ops, 1 per input element for reductions and pooling, 5 per element for
  normalisation and softmax (forward and backward alike);
- ops that only move or view data (copies, reshapes, indexing, concatenation, creation)
  cost nothing;
- any other op that returned a tensor has no formula: it is counted in
  :attr:`CostCounter.uncounted` by name, never silently priced at zero.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MAC_FORMULAS", "CostCounter", "op_cost"]

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


def _packets(*names: str) -> list[Any]:
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
    (_matmul, ("matmul", "dot", "mv", "vdot")),
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
    packet: formula for formula, names in _REGISTRY for packet in _packets(*names)
}


# -- ops without multiply-accumulates -------------------------------------------------------------

_DATA_MOVEMENT = frozenset(
    str(p)
    for p in _packets(
        "clone",
        "copy_",
        "_to_copy",
        "contiguous",
        "cat",
        "stack",
        "split",
        "split_with_sizes",
        "unsafe_split",
        "unsafe_split_with_sizes",
        "unbind",
        "chunk",
        "index",
        "index_select",
        "gather",
        "scatter",
        "scatter_",
        "index_put",
        "index_put_",
        "masked_fill",
        "masked_fill_",
        "masked_scatter",
        "constant_pad_nd",
        "reflection_pad2d",
        "replication_pad2d",
        "repeat",
        "roll",
        "flip",
        "narrow",
        "pad",
        "empty",
        "empty_like",
        "empty_strided",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "full",
        "full_like",
        "fill_",
        "zero_",
        "arange",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "new_empty_strided",
        "scalar_tensor",
        "detach",
        "lift_fresh",
        "lift_fresh_copy",
        "alias",
        "_unsafe_view",
        "resize_",
        "set_",
        "randn",
        "rand",
        "randint",
        "randperm",
        "normal_",
        "uniform_",
        "bernoulli",
        "bernoulli_",
        "select_backward",
        "slice_backward",
        "index_select_backward",
        "select_scatter",
        "slice_scatter",
        "as_strided_scatter",
        "_nested_tensor_from_mask",
        "_nested_from_padded",
        "_nested_tensor_from_tensor_list",
        "to_padded_tensor",
        "_local_scalar_dense",
        "nonzero",
        "max_pool2d_with_indices_backward",
        "tril",
        "triu",
        "where",
        "_assert_async",
        "_to_dense",
        "unfold",
        "im2col",
        "col2im",
        "expand_copy",
        "t_copy",
        "view_copy",
        "permute_copy",
        "transpose_copy",
        "_pin_memory",
        "is_pinned",
        "_has_compatible_shallow_copy_type",
        "_unsafe_index",
        "_unsafe_index_put",
        "index_add",
        "index_add_",
        "sort",
        "argsort",
        "topk",
        "kthvalue",
        "cumsum",
        "cumprod",
        "searchsorted",
        "bucketize",
        "one_hot",
        "_fused_dropout",
        "native_dropout",
        "native_dropout_backward",
        "_masked_scale",
        "reflection_pad1d",
        "reflection_pad3d",
        "replication_pad1d",
        "replication_pad3d",
        "reflection_pad1d_backward",
        "reflection_pad2d_backward",
        "replication_pad2d_backward",
        "pixel_shuffle",
        "pixel_unshuffle",
        "channel_shuffle",
        "native_channel_shuffle",
        "randn_like",
        "rand_like",
        "randint_like",
        "normal",
        "empty_permuted",
        "repeat_interleave",
        "masked_select",
        "take",
        "index_copy",
        "index_copy_",
        "index_fill",
        "index_fill_",
        "diag_embed",
        "diagonal_scatter",
        "eye",
        "linspace",
        "logspace",
        "tril_indices",
        "triu_indices",
        "rot90",
        "max_unpool2d",
        "max_unpool3d",
        "upsample_nearest1d",
        "upsample_nearest3d",
        "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d",
        "_upsample_nearest_exact3d",
        "_pack_padded_sequence",
        "_pad_packed_sequence",
        "_pack_padded_sequence_backward",
        "embedding_dense_backward_",
        "new_empty_permuted",
        "transpose_",
        "t_",
        "squeeze_",
        "unsqueeze_",
        "as_strided_",
        "swapdims_",
        "resize_as_",
        "detach_",
        "requires_grad_",
        "embedding_renorm_",
        "_nested_view_from_buffer",
        "_nested_get_values",
        "_nested_view_from_jagged",
    )
)
_REDUCTIONS = frozenset(
    str(p)
    for p in _packets(
        "sum",
        "mean",
        "amax",
        "amin",
        "max",
        "min",
        "var",
        "std",
        "var_mean",
        "std_mean",
        "prod",
        "norm",
        "linalg_vector_norm",
        "logsumexp",
        "argmax",
        "argmin",
        "all",
        "any",
        "count_nonzero",
        "nansum",
        "max_pool1d",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
        "adaptive_max_pool2d",
        "avg_pool2d_backward",
        "_adaptive_avg_pool2d_backward",
        "upsample_nearest2d",
        "upsample_bilinear2d",
        "_upsample_bilinear2d_aa",
        "upsample_nearest2d_backward",
        "upsample_bilinear2d_backward",
    )
)
_NORMALISATION = frozenset(
    str(p)
    for p in _packets(
        "native_batch_norm",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional",
        "native_batch_norm_backward",
        "batch_norm",
        "native_layer_norm",
        "native_layer_norm_backward",
        "native_group_norm",
        "native_group_norm_backward",
        "_softmax",
        "_log_softmax",
        "_softmax_backward_data",
        "_log_softmax_backward_data",
        "_safe_softmax",
        "_fused_rms_norm",
        "_fused_rms_norm_backward",
        "cudnn_batch_norm",
        "cudnn_batch_norm_backward",
        "miopen_batch_norm",
        "_batch_norm_with_update",
        "_batch_norm_no_update",
        "batch_norm_backward",
        "_thnn_fused_lstm_cell",
        "_thnn_fused_gru_cell",
        "_thnn_fused_lstm_cell_backward_impl",
        "_thnn_fused_gru_cell_backward",
        "nll_loss_forward",
        "nll_loss_backward",
        "nll_loss2d_forward",
        "mse_loss",
    )
)


# elementwise ops that carry no `pointwise` tag in aten
_ELEMENTWISE = frozenset(
    str(p)
    for p in _packets(
        "hardswish",
        "hardswish_",
        "hardswish_backward",
        "hardsigmoid_backward",
        "hardtanh_backward",
        "glu",
        "glu_backward",
        "_prelu_kernel",
        "_prelu_kernel_backward",
        "log_sigmoid_forward",
        "log_sigmoid_backward",
        "leaky_relu_backward",
        "elu_backward",
        "softplus_backward",
        "mish_backward",
        "rrelu_with_noise",
        "rrelu_with_noise_backward",
        "softshrink_backward",
        "hardshrink_backward",
        "logit_backward",
    )
)


def _category(func: Any) -> str:
    """How an op without a MAC formula is priced: 'move', 'reduce', 'norm', 'pointwise' or '?'."""
    name = str(func.overloadpacket)
    if name in _DATA_MOVEMENT or func.is_view:
        return "move"
    if name in _REDUCTIONS:
        return "reduce"
    if name in _NORMALISATION:
        return "norm"
    if name in _ELEMENTWISE or torch.Tag.pointwise in func.tags:
        return "pointwise"
    return "?"


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _elements(tensors: list[torch.Tensor]) -> int:
    total = 0
    for t in tensors:
        try:
            total += t.numel()
        except RuntimeError:
            continue
    return total


# What an op is, decided once per OpOverload: a MAC formula, or one of these kinds.
_FREE = "free"  # moves or views data, or has no MACs and all_ops is off
_UNKNOWN = "unknown"  # no formula: listed when it produced a tensor


def _handler(func: Any, all_ops: bool) -> MacFormula | str:
    formula = MAC_FORMULAS.get(func.overloadpacket)
    if formula is not None:
        return formula
    category = _category(func)
    if category == "?":
        return _UNKNOWN
    if category == "move" or not all_ops:
        return _FREE
    return category


def _non_mac_flops(category: str, args: Sequence[Any], out: Any) -> int:
    outputs = _tensors_in(out)
    if category == "pointwise":
        return _elements(outputs)
    inputs = _elements(_tensors_in(args[0])) if args else 0
    if category == "reduce":
        return inputs
    return 5 * max(inputs, _elements(outputs[:1]))  # normalisation, softmax


def op_cost(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any], out: Any, *, all_ops: bool
) -> tuple[int, int, bool]:
    """``(macs, flops, counted)`` of one aten op call; ``counted`` is False for unknown ops."""
    return _priced(_handler(func, all_ops), args, kwargs, out)


def _priced(
    handler: MacFormula | str, args: Sequence[Any], kwargs: dict[str, Any], out: Any
) -> tuple[int, int, bool]:
    if handler is _FREE:
        return 0, 0, True
    if handler is _UNKNOWN:
        return 0, 0, not _tensors_in(out)  # an op that produced no tensor moved no data
    if isinstance(handler, str):
        return 0, _non_mac_flops(handler, args, out), True
    main = out[0] if isinstance(out, (tuple, list)) else out
    try:
        macs = handler(args, kwargs, main)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return 0, 0, False  # a layout the formula cannot read (ragged tensors): listed, not guessed
    return macs, 2 * macs, True


class CostCounter(TorchDispatchMode):
    """Counts MACs and FLOPs of every aten op that runs inside it.

    Args:
        attribute_to: returns the key (a module call index) to charge the op to, or None.
        all_ops: also price ops without multiply-accumulates (see the module docstring).
    """

    def __init__(self, attribute_to: Callable[[], int | None], *, all_ops: bool = False) -> None:
        super().__init__()
        self.attribute_to = attribute_to
        self.all_ops = all_ops
        self.backward = False  # set while the backward pass runs
        self.macs: Counter[int | None] = Counter()
        self.flops: Counter[int | None] = Counter()
        self.backward_macs = 0
        self.backward_flops = 0
        self.uncounted: Counter[str] = Counter()
        self._handlers: dict[Any, MacFormula | str] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        # runs for every aten op: keep the common cases (data movement, no-MAC ops) short
        out = func(*args, **kwargs) if kwargs else func(*args)
        handler = self._handlers.get(func)
        if handler is None:
            handler = self._handlers[func] = _handler(func, self.all_ops)
        if handler is _FREE:
            return out
        macs, flops, counted = _priced(handler, args, kwargs or {}, out)
        if not counted:
            self.uncounted[str(func.overloadpacket)] += 1
        elif self.backward:
            self.backward_macs += macs
            self.backward_flops += flops
        elif macs or flops:
            key = self.attribute_to()
            self.macs[key] += macs
            self.flops[key] += flops
        return out
