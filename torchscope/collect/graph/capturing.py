"""capture: which module created each autograd node while a forward runs.

With ``grads=True`` it also records the gradient each node receives in the next backward pass.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import torchscope._util.nested as _nested
from torchscope.collect._torchscript import follow_scripted_calls, split_modules, type_name
from torchscope.collect.graph._common import Node, _Call, _forward_error, _raising
from torchscope.collect.hooks import HookSet, iter_modules
from torchscope.errors import TorchscopeWarning


class ModuleCapture:
    """What :func:`capture` recorded: the module that created each autograd node, and the
    gradients nodes received (``grads=True``). Pass it to ``autograd_graph(module=...)``."""

    def __init__(self, model: nn.Module, *, grads: bool = False) -> None:
        self.model = model
        self.grads = grads
        # the grad mode the forward started in: advice to enable it is no help when it was on
        self.grad_enabled = torch.is_grad_enabled()
        self.module_of: dict[Node, str] = {}  # strong keys: node identity must stay stable
        self.types: dict[str, str] = {"": type_name(model)}
        self.received: dict[Node, torch.Tensor] = {}  # node -> [sumsq, nonfinite, max|g|]
        self.stack: list[_Call] = []
        self.failed: _Call | None = None
        self._node_hooks = HookSet()
        self._calls: dict[str, int] = {}

    def _on_node(self, node: Node) -> None:
        self.module_of[node] = self.stack[-1].name if self.stack else ""
        if self.grads:
            self._node_hooks.add(node.register_hook(self._grad_hook(node)))

    def _grad_hook(self, node: Node) -> Callable[[Any, Any], None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            self.received[node] = _grad_stats(grad_outputs)

        return hook

    def remove_node_hooks(self) -> None:
        """Take the gradient hooks off the captured nodes (after the backward pass)."""
        self._node_hooks.remove_all()


def _grad_stats(grads: Any) -> torch.Tensor:
    """[sum of squares, count of non-finite values, max |g|, any grad present] on the device."""
    present = [g for g in grads if isinstance(g, torch.Tensor)]
    if not present:
        return torch.zeros(4)
    with torch.no_grad():
        stats = []
        for g in present:
            g = g.detach().float()
            stats.append(
                torch.stack(
                    [
                        torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).square().sum(),
                        (~torch.isfinite(g)).sum().float(),
                        torch.nan_to_num(g.abs(), nan=0.0, posinf=0.0).amax()
                        if g.numel()
                        else g.new_zeros(()),
                        torch.isnan(g).sum().float(),
                    ]
                ).cpu()
            )
        total = torch.stack(stats)
        return torch.stack(
            [total[:, 0].sum(), total[:, 1].sum(), total[:, 2].amax(), total[:, 3].sum()]
        )


@contextlib.contextmanager
def capture(model: nn.Module, *, grads: bool = False) -> Iterator[ModuleCapture]:
    """Record which of ``model``'s modules creates each autograd node while the block runs.

    Use it around your own forward (and loss), then pass the capture to
    :func:`autograd_graph`::

        with torchscope.capture(model, grads=True) as cap:
            loss = loss_fn(model(x), y)
        loss.backward()
        graph = torchscope.autograd_graph(loss, params=model, grads=True, module=cap)

    The module hooks come off when the block ends, also when it raises. With ``grads=True``
    every node created in the block gets a gradient hook that records the gradient it
    receives in the next backward pass; those hooks live on the nodes (they go when the graph
    is freed) and are removed by :func:`autograd_graph`.
    """
    cap = ModuleCapture(model, grads=grads)
    hooks = HookSet()
    node_hook = getattr(torch.autograd.graph, "node_creation_hook", None)
    try:
        hookable, scripted = split_modules(model)
        for name, module in hookable:
            cap.types[name] = type(module).__name__
            hooks.add(module.register_forward_pre_hook(_push(cap, name), with_kwargs=True))
            hooks.add(module.register_forward_hook(_pop(cap), always_call=True))
        # TorchScript modules take no hooks: each is one cluster, followed by global hooks;
        # the modules inside name the clusters of their parameters
        for name, script in scripted.values():
            for inner, module in iter_modules(script):
                cap.types[".".join(filter(None, (name, inner)))] = type_name(module)
        follow_scripted_calls(
            hooks,
            scripted,
            lambda name, module, args: _push(cap, name)(module, args, {}),
            lambda name, module, args, output: _pop(cap)(module, args, output),
        )
        with node_hook(cap._on_node) if node_hook is not None else contextlib.nullcontext():
            if node_hook is None:
                warnings.warn(
                    f"torch {torch.__version__} has no torch.autograd.graph.node_creation_hook: "
                    "the autograd graph cannot name the module of each node",
                    TorchscopeWarning,
                    stacklevel=3,
                )
            yield cap
    finally:
        hooks.remove_all()


def _push(cap: ModuleCapture, name: str) -> Callable[..., None]:
    def pre_hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        count = cap._calls.get(name, 0)
        cap._calls[name] = count + 1
        # a module called again gets its own cluster: name#1, name#2, ...
        scope = name if count == 0 else f"{name}#{count}"
        cap.types.setdefault(scope, type_name(module))
        cap.stack.append(_Call(scope, type_name(module), _nested.shapes((args, kwargs))))

    return pre_hook


def _pop(cap: ModuleCapture) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if cap.stack:
            call = cap.stack.pop()
            if cap.failed is None and _raising():
                cap.failed = call

    return hook


def run_forward(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], cap: ModuleCapture
) -> Any:
    """``model(*args, **kwargs)`` inside ``capture(model)``; a failure becomes a
    :class:`GraphError` naming the innermost module that raised and the shapes it got."""
    try:
        return model(*args, **kwargs)
    except Exception as e:
        raise _forward_error(e, cap.failed) from e
