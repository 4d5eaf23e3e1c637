"""Do samples of a batch influence each other? A one-shot check on an eval-mode copy."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import torchscope._util.nested as _nested
from torchscope._util.inputs import split_inputs
from torchscope.collect.hooks import preserved_rng
from torchscope.errors import TorchscopeError
from torchscope.records.independence import BatchIndependenceReport, Leak

__all__ = ["check_batch_independence"]


def check_batch_independence(
    model: nn.Module, inputs: Any, *, samples: int = 4, train: bool = False
) -> BatchIndependenceReport:
    """The gradient of a few samples' outputs with respect to every sample's input: for a
    model whose samples are independent it is zero outside the sample's own row.

    Runs on a deep copy (in eval mode unless ``train=True``, where BatchNorm mixes the batch
    by design); the model, its gradients and the global RNGs are untouched. Catches ``view``
    or ``reshape`` where ``permute`` was meant across the batch dim, RNN or attention layers
    without ``batch_first=True`` fed ``(batch, time, ...)``, and reductions over dim 0.

    Args:
        model: the model to check.
        inputs: the forward's input, as in :func:`torchscope.summary`: a tensor, a tuple of
            positional arguments or a dict of keyword arguments. Its floating-point tensors
            whose dim 0 is the batch are probed; a model that takes only integer ids (token
            ids, batch first) is probed at the outputs of its ``nn.Embedding`` layers, which
            turn them into vectors.
        samples: how many output samples to take the gradient of (spread over the batch).
        train: check the model in training mode (dropout and BatchNorm active).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_batch_independence needs an nn.Module, got {type(model).__name__}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    with preserved_rng():
        try:
            copied, copied_inputs = copy.deepcopy((model, inputs))
        except Exception as e:
            raise TorchscopeError(
                f"check_batch_independence could not deep-copy the model ({type(e).__name__}: "
                f"{e}); it runs a copy so that yours is untouched"
            ) from e
        copied.train(train)
        given = [t for t in _nested.tensors(copied_inputs) if t.dim() >= 1]
        probed = [t for t in given if t.is_floating_point()]
        embedded: list[torch.Tensor] = []  # token ids: the embeddings' outputs are probed
        handles = []
        if probed:
            batch = probed[0].shape[0]
            probed = [t for t in probed if t.shape[0] == batch]
            for t in probed:
                t.requires_grad_(True)
        elif given:
            batch = given[0].shape[0]

            def leaf(module: nn.Module, args: Any, out: Any) -> Any:
                # the embedding of the ids, batch first, as a leaf to differentiate against
                if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == batch:
                    out = out.detach().requires_grad_(True)
                    embedded.append(out)
                return out

            handles = [
                m.register_forward_hook(leaf)
                for m in copied.modules()
                if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
            ]
        args, kwargs = split_inputs(copied_inputs)
        try:
            with torch.enable_grad():
                output = copied(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        probed = probed or embedded
        if not probed:
            raise TorchscopeError(
                "check_batch_independence needs a floating-point input tensor, or integer "
                "ids (batch first) that an nn.Embedding turns into vectors, to take the "
                "gradient with respect to; this input has neither"
            )
        outputs = [
            o
            for o in _nested.tensors(output)
            if o.requires_grad and o.dim() >= 1 and o.shape[0] == batch
        ]
        if not outputs or batch < 2:
            raise TorchscopeError(
                f"check_batch_independence needs a batch of at least 2 samples and an output "
                f"whose dim 0 is the batch; got batch {batch} and outputs of shapes "
                f"{[list(o.shape) for o in _nested.tensors(output)]}"
            )
        chosen = sorted({round(k * (batch - 1) / max(samples - 1, 1)) for k in range(samples)})
        leaks: list[Leak] = []
        for i in chosen:
            total = torch.stack([o[i].float().sum() for o in outputs]).sum()
            grads = torch.autograd.grad(total, probed, retain_graph=True, allow_unused=True)
            for grad in grads:
                if grad is None:
                    continue
                per_sample = grad.detach().abs().reshape(batch, -1).amax(dim=1)
                own = float(per_sample[i])
                for j, value in enumerate(per_sample.tolist()):
                    # relative to the sample's own gradient: rounding in a batched kernel
                    # can leave ~1e-7 of it on other rows without any real dependence
                    if j != i and value > 1e-5 * max(own, 1e-12):
                        leaks.append(Leak(i, j, value))
    leaks.sort(key=lambda leak: -leak.value)
    note = ""
    if train and any(isinstance(m, _BatchNorm) for m in copied.modules()):
        note = "BatchNorm in training mode normalises with batch statistics: it mixes by design"
    return BatchIndependenceReport(batch, tuple(chosen), tuple(leaks), note)
