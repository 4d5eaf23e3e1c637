"""What the monitor sees of the functional calls around the loss: the loss functions (their
inputs, targets and values), the squashing activations and where their outputs go.

Every statistic stays on the device (a reduction per call at most); shapes and names are
plain Python. :class:`CallSignals` is fed by the monitor's TorchFunctionMode
(:mod:`.functions`) and read once by :func:`..observations.observe`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from torchscope.collect.gradients._state import _Clock
from torchscope.collect.gradients.history import Series, Thinning

__all__ = ["LOSS_FUNCTIONS", "CallSignals", "LossCall", "SquashSite", "chance_level", "loss_floor"]

#: loss function -> (its name, its family)
LOSS_FUNCTIONS: dict[Callable[..., Any], tuple[str, str]] = {
    F.cross_entropy: ("cross_entropy", "classification"),
    F.nll_loss: ("nll_loss", "classification"),
    F.binary_cross_entropy_with_logits: ("binary_cross_entropy_with_logits", "binary"),
    F.binary_cross_entropy: ("binary_cross_entropy", "binary"),
    F.mse_loss: ("mse_loss", "regression"),
    F.l1_loss: ("l1_loss", "regression"),
    F.smooth_l1_loss: ("smooth_l1_loss", "regression"),
    F.huber_loss: ("huber_loss", "regression"),
}
#: losses that expect raw scores (logits), not probabilities or clipped values
LOGIT_LOSSES = ("cross_entropy", "nll_loss", "binary_cross_entropy_with_logits")
# a tanh output within this of +-1 (a sigmoid's within it of 0 or 1) is saturated: the
# derivative there is below 2e-2 (tanh) / 1e-2 (sigmoid) of its peak
SATURATION_MARGIN = 0.01


class _ByStorage:
    """Tensors remembered by where their values live, so that a view of one (``squeeze``,
    ``view``, ``reshape`` of a contiguous tensor) is found too; weak, and bounded."""

    def __init__(self, limit: int = 256) -> None:
        self._items: dict[int, tuple[weakref.ref[torch.Tensor], Any]] = {}
        self._limit = limit

    def add(self, tensor: torch.Tensor, value: Any) -> None:
        if len(self._items) > self._limit:  # only the last forward's matter
            self._items.clear()
        self._items[tensor.data_ptr()] = (weakref.ref(tensor), value)

    def get(self, tensor: torch.Tensor, *, same_size: bool = True) -> Any:
        """The value of the live tensor whose values ``tensor`` starts at, or None; with
        ``same_size=False`` a view that covers part of it (a slice) is found too."""
        entry = self._items.get(tensor.data_ptr())
        if entry is None:
            return None
        ref, value = entry
        source = ref()
        if source is None or source.data_ptr() != tensor.data_ptr():
            return None
        if same_size and source.numel() != tensor.numel():
            return None
        return value


def _clock_attribute(entry: Any) -> _Clock:
    clock: _Clock = entry.clock
    return clock


@dataclass
class LossCall:
    clock: _Clock
    name: str
    family: str
    value: torch.Tensor | None  # the mean loss (reduction="mean" only), float32 on the device
    chance: torch.Tensor | float | None  # the loss of the best constant prediction
    batch: int | None  # the target's first dim
    floor: torch.Tensor | None = None  # the least loss any prediction can get: soft targets'


@dataclass
class SquashSite:
    name: str  # an nn.Tanh/nn.Sigmoid module, or torch.tanh/sigmoid inside a module's forward
    function: str  # "tanh" or "sigmoid"
    saturated: torch.Tensor  # outputs within SATURATION_MARGIN of the limits, summed
    total: int = 0  # outputs seen
    feeds_loss: bool = False  # its output went straight into a loss function (an output layer)
    # called outside every module's forward (in a hand-written loss, or the loop's own
    # code), and whether its output then entered a module: only then is it a hidden layer
    outside: bool = False
    feeds_module: bool = False


class CallSignals:
    """The monitor's record of the calls around its loss (see the module docstring). Its
    per-call lists are bounded series (:mod:`.history`), thinned with the monitor's."""

    def __init__(self, thinning: Thinning) -> None:
        self.losses: Series[LossCall] = thinning.new(clock_of=_clock_attribute)
        # the events of a bug: capped, counted in full
        self.broadcasts: Series[tuple[_Clock, str, tuple[int, ...], tuple[int, ...]]] = (
            thinning.events("broadcasts")
        )
        self.probabilities: Series[tuple[_Clock, str]] = thinning.events(
            "probabilities"
        )  # sigmoid -> logits
        self.clipped: Series[tuple[_Clock, str, str]] = thinning.events(
            "clipped"
        )  # (.., loss, clipper)
        # (clock, loss, softmax dim, class dim, |logsumexp| over the class dim, on the device)
        self.wrong_dim: Series[tuple[_Clock, str, int, int, torch.Tensor]] = thinning.events(
            "wrong_dim"
        )
        self.squash_sites: dict[tuple[str, str], SquashSite] = {}
        # over the run's measured calls, per loss function: how often each class was the
        # label (hard labels), and the targets' count, sum and sum of squares per column
        # (mse_loss): the best constant prediction of the whole run, not of one batch (a
        # time series batched in order, imbalanced labels)
        self.label_counts: dict[str, torch.Tensor] = {}
        self.target_moments: dict[str, tuple[int, torch.Tensor, torch.Tensor] | None] = {}
        self.outside_squashes = 0  # sites called outside every forward (see SquashSite)
        # (clock, the loss handed to backward, the sum of the loss functions' values since
        # the last one)
        self.scaled: Series[tuple[_Clock, torch.Tensor, torch.Tensor]] = thinning.new()
        self._since_backward: list[torch.Tensor] = []
        # the last loss function's output, its version then and the copy of its value:
        # backward() on it, unchanged (the usual next call), reuses the copy
        self.last_loss: tuple[weakref.ref[torch.Tensor], int, torch.Tensor] | None = None
        self._sigmoid_outputs = _ByStorage()
        self._clipped_outputs = _ByStorage()
        self._squash_outputs = _ByStorage()
        # log_softmax outputs -> (their dim, their shape): the loss may get a reshaped view
        self._normalised = _ByStorage(limit=64)

    # -- activations -------------------------------------------------------------------------

    def on_clipped(self, out: Any, how: str) -> None:
        """``out`` is non-negative by construction (relu, clamp(min=0))."""
        if isinstance(out, torch.Tensor) and out.numel():
            self._clipped_outputs.add(out, how)

    def on_normalised(self, source: Any, out: Any, dim: Any, *, log: bool) -> None:
        """A softmax (``log=False``) or log_softmax over ``dim``."""
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            return
        if dim is None:  # nn.Softmax() / nn.LogSoftmax() with no dim: torch's implicit choice
            dim = 0 if out.dim() in (1, 3) else 1
        if not isinstance(dim, int):
            return
        how = self._clipped_outputs.get(source) if isinstance(source, torch.Tensor) else None
        if how is not None:  # log_softmax(relu(x)): the scores were clipped before it
            self._clipped_outputs.add(out, how)
        if not log:
            return
        self._normalised.add(out, (dim % out.dim(), out.shape))

    def on_squash(self, function: str, site_name: str, out: Any, *, outside: bool = False) -> None:
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor)):
            return
        if not out.is_floating_point() or out.numel() == 0:
            return
        if function == "sigmoid":
            self._sigmoid_outputs.add(out, True)
            values = out.detach()
            near = (values < SATURATION_MARGIN) | (values > 1 - SATURATION_MARGIN)
        else:
            near = out.detach().abs() > 1 - SATURATION_MARGIN
        key = (site_name, function)
        site = self.squash_sites.get(key)
        count = near.sum()
        if site is None:
            self.squash_sites[key] = site = SquashSite(site_name, function, count, outside=outside)
            self.outside_squashes += outside
        else:
            site.saturated = site.saturated + count
        site.total += out.numel()
        self._squash_outputs.add(out, site)

    def on_module_input(self, tensor: torch.Tensor) -> None:
        """A module's forward got ``tensor``: a squash called outside every forward whose
        output this is was a hidden layer of a model written in the loop."""
        site = self._squash_outputs.get(tensor)
        if site is not None:
            site.feeds_module = True

    # -- losses ------------------------------------------------------------------------------

    def _count_labels(self, name: str, scores: torch.Tensor, target: torch.Tensor) -> None:
        classes = scores.shape[1] if scores.dim() >= 2 else scores.shape[0]
        if classes < 2 or target.is_floating_point() or target.numel() == 0:
            return
        with torch.no_grad():
            t = target.detach().reshape(-1).long()
            # an ignore_index (-100: padding) goes to a last bin, dropped; no host sync
            index = torch.where((t >= 0) & (t < classes), t, torch.full_like(t, classes))
            counts = torch.zeros(classes + 1, device=t.device).scatter_add_(
                0, index, torch.ones_like(index, dtype=torch.float32)
            )[:classes]
        seen = self.label_counts.get(name)
        if seen is None or seen.shape != counts.shape:
            self.label_counts[name] = counts
        else:
            self.label_counts[name] = seen + counts

    def _add_moments(self, name: str, target: torch.Tensor) -> None:
        if name in self.target_moments and self.target_moments[name] is None:
            return  # targets of changing widths: the per-batch level stands
        if target.dim() == 0 or not target.is_floating_point() or target.shape[0] < 1:
            return
        with torch.no_grad():
            t = target.detach().float().reshape(target.shape[0], -1)
            total, squares = t.sum(dim=0), t.square().sum(dim=0)
        seen = self.target_moments.get(name)
        if seen is None:
            self.target_moments[name] = (t.shape[0], total, squares)
        elif seen[1].shape != total.shape:
            self.target_moments[name] = None
        else:
            self.target_moments[name] = (seen[0] + t.shape[0], seen[1] + total, seen[2] + squares)

    def population_chance(self) -> dict[str, torch.Tensor]:
        """Per loss function, the chance level over every measured call of the run: the
        labels' entropy (classification), the targets' variance per column (mse_loss)."""
        out = {}
        for name, counts in self.label_counts.items():
            p = counts / counts.sum().clamp_min(1)
            out[name] = -(p * p.clamp_min(1e-12).log()).sum()
        for name, moments in self.target_moments.items():
            if moments is not None and moments[0] > 1:
                n, total, squares = moments
                out[name] = (squares / n - (total / n).square()).clamp_min(0).mean()
        return out

    def on_loss(
        self, clock: _Clock, func: Any, args: Any, kwargs: Any, out: Any, *, measured: bool = True
    ) -> None:
        name, family = LOSS_FUNCTIONS[func]
        scores = args[0] if args else kwargs.get("input")
        target = args[1] if len(args) > 1 else kwargs.get("target")
        if not isinstance(scores, torch.Tensor) or not isinstance(target, torch.Tensor):
            return
        if not torch.is_grad_enabled() or not scores.requires_grad:
            return  # evaluation: not what trains
        site = self._squash_outputs.get(scores)
        if site is not None:
            site.feeds_loss = True
        if family == "regression" and scores.shape != target.shape:
            self.broadcasts.append((clock, name, tuple(scores.shape), tuple(target.shape)))
        if name == "binary_cross_entropy_with_logits" and self._sigmoid_outputs.get(scores):
            self.probabilities.append((clock, name))
        if name in LOGIT_LOSSES:
            how = self._clipped_outputs.get(scores)
            if how is not None:
                self.clipped.append((clock, name, how))
        if family == "classification":
            self._check_normalised_dim(clock, name, scores)
        if measured:
            if family == "classification" and not _soft(scores, target):
                self._count_labels(name, scores, target)
            elif name == "mse_loss" and scores.shape == target.shape:
                self._add_moments(name, target)
        reduction = kwargs.get("reduction", "mean")
        value = None
        if reduction == "mean" and isinstance(out, torch.Tensor) and out.dim() == 0:
            value = loss_copy(out)
            self._since_backward.append(value)
            self.last_loss = (weakref.ref(out), out._version, value)
        self.losses.append(
            LossCall(
                clock,
                name,
                family,
                value,
                chance_level(family, scores, target, name, kwargs),
                _batch(target),
                loss_floor(family, scores, target),
            )
        )

    def _check_normalised_dim(self, clock: _Clock, name: str, scores: torch.Tensor) -> None:
        entry = self._normalised.get(scores, same_size=False)
        if entry is None or scores.dim() == 0:
            return
        dim, shape = entry
        class_dim = 1 if scores.dim() >= 2 else 0
        if scores.shape == shape and dim == class_dim:
            return  # the common, right case: nothing to compute
        # a reshaped view, or another dim: log-probabilities over the class dim have
        # logsumexp 0 there, whatever the layout was when log_softmax ran
        with torch.no_grad():
            deviation = torch.logsumexp(scores.detach().float(), dim=class_dim).abs().amax()
        self.wrong_dim.append((clock, name, dim, class_dim, deviation))

    def on_backward(self, clock: _Clock, value: torch.Tensor) -> None:
        """``value``: what this backward() was handed (the sum of its tensors' values)."""
        since, self._since_backward = self._since_backward, []
        if since:
            total = since[0] if len(since) == 1 else torch.stack(since).sum()
            self.scaled.append((clock, value, total))


def loss_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 copy of a loss value (summed if it is not a scalar): never an alias of the
    loop's tensor, which the loop may change in place later (``loss /= n``, ``loss += aux``,
    ``loss.detach().mul_(n)`` to log it)."""
    value = tensor.detach()
    if value.dim():
        value = value.sum()
    return value.float() if value.dtype != torch.float32 else value.clone()


def _batch(target: torch.Tensor) -> int | None:
    return int(target.shape[0]) if target.dim() > 0 else None


def chance_level(
    family: str,
    scores: torch.Tensor,
    target: torch.Tensor,
    name: str = "",
    kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor | float | None:
    """The loss of the best prediction that ignores the input, where it is known: for a
    regression, the targets' variance (MSE), the loss of their median (L1), or the better of
    their median's and their mean's (smooth L1, Huber)."""
    if family == "classification":
        if _soft(scores, target):  # class probabilities (a teacher's): their mean's entropy
            with torch.no_grad():
                mean = target.detach().float().movedim(_class_dim(scores), -1)
                mean = mean.reshape(-1, mean.shape[-1]).mean(dim=0)
                return _entropy(mean, dim=-1)
        classes = scores.shape[1] if scores.dim() >= 2 else scores.shape[0]
        return math.log(classes) if classes > 1 else None
    if scores.shape != target.shape or not target.is_floating_point():
        return None
    with torch.no_grad():
        t = target.detach().float()
        if family == "binary":
            return _binary_entropy(t.mean(dim=0) if t.dim() > 1 else t.mean())
        if t.numel() < 2:
            return None
        if name in _MEDIAN_LOSSES:
            # L1's best constant is the median; a Huber-type loss's lies between the median
            # (large residuals) and the mean (residuals within beta/delta): the better of the two
            loss = _MEDIAN_LOSSES[name]
            options = {k: v for k, v in (kwargs or {}).items() if k in ("beta", "delta")}
            median = t.median(dim=0).values if t.dim() > 1 else t.median()
            level = loss(median.expand_as(t), t, **options)
            if name != "l1_loss":
                level = torch.minimum(level, loss(t.mean(dim=0).expand_as(t), t, **options))
            return level
        return t.var(dim=0, unbiased=False).mean() if t.dim() > 1 else t.var(unbiased=False)


def _class_dim(scores: torch.Tensor) -> int:
    return 1 if scores.dim() >= 2 else 0


def _soft(scores: torch.Tensor, target: torch.Tensor) -> bool:
    """Targets that are class probabilities (``cross_entropy``'s soft targets), not labels."""
    return target.is_floating_point() and target.shape == scores.shape


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """The mean entropy of Bernoulli probabilities ``p`` (kept off 0 and 1 by 1e-6)."""
    q = p.clamp(1e-6, 1 - 1e-6)
    return (-(q * q.log() + (1 - q) * (1 - q).log())).mean()


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    p = p.clamp_min(1e-12)
    return -(p * p.log()).sum(dim=dim).mean()


def loss_floor(family: str, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The least loss any prediction can get where the targets are soft: the mean entropy of
    class probabilities (a distillation teacher's), or of targets strictly between 0 and 1 for
    a binary loss (pixel intensities an autoencoder reconstructs). None for labels, whose
    floor is 0."""
    if not _soft(scores, target):
        return None
    with torch.no_grad():
        t = target.detach().float()
        if family == "classification":
            return _entropy(t, dim=_class_dim(scores))
        if family == "binary":  # 0/1 labels give about 1e-5: no floor
            return _binary_entropy(t)
    return None


# regression losses whose best constant prediction is not the targets' mean (or not only)
_MEDIAN_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "l1_loss": F.l1_loss,
    "smooth_l1_loss": F.smooth_l1_loss,
    "huber_loss": F.huber_loss,
}
