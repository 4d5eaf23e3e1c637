"""One walk over the model's module tree: its tensors under all their names, its modules with
their parameter counts, and the rows of the tree (for a summary of a model that does not run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from torchscope.collect._torchscript import type_name
from torchscope.records import LayerRecord, TensorRecord

__all__ = ["ModelIndex", "ModuleInfo", "index_model", "tree_layers"]


@dataclass
class ModuleInfo:
    name: str
    type: str
    own: tuple[int, ...] = ()
    subtree: tuple[int, ...] = ()
    params: int = 0
    trainable: int = 0


@dataclass
class ModelIndex:
    """What one walk over the module tree learns: tensors (with all their names) and modules."""

    parameters: tuple[TensorRecord, ...]
    buffers: tuple[TensorRecord, ...]
    modules: dict[int, ModuleInfo]  # by id(module), parents before children
    module_objects: list[nn.Module]  # the same order
    devices: list[torch.device]  # where parameters and buffers live, in order of appearance
    scripted: tuple[str, ...]  # TorchScript submodules, which cannot be hooked


def _tensor_records(
    names: dict[int, list[str]], tensors: dict[int, torch.Tensor], *, parameters: bool
) -> list[TensorRecord]:
    records = []
    for key, tensor_names in names.items():
        tensor = tensors[key]
        if is_lazy(tensor):  # no shape to read until the first forward
            records.append(
                TensorRecord(
                    name=tensor_names[0],
                    aliases=tuple(tensor_names[1:]),
                    shape=(),
                    dtype=str(tensor.dtype),
                    numel=0,
                    nbytes=0,
                    trainable=parameters and tensor.requires_grad,
                    initialized=False,
                )
            )
            continue
        numel = tensor.numel()
        records.append(
            TensorRecord(
                name=tensor_names[0],
                aliases=tuple(tensor_names[1:]),
                shape=tuple(tensor.shape),
                dtype=str(tensor.dtype),
                numel=numel,
                nbytes=numel * tensor.element_size(),
                trainable=parameters and tensor.requires_grad,
            )
        )
    return records


def index_model(model: nn.Module, *, hookable: bool = True) -> ModelIndex:
    """Walk the module tree once, iteratively, visiting shared modules under each of their names.

    Every name under which a parameter or buffer is reachable is kept (the first is its
    name, the others its aliases), in ``named_parameters(remove_duplicate=False)`` order.
    With ``hookable=False`` (the tree is only read, for a summary without an input),
    TorchScript modules are walked like the others and lazy tensors are not refused.
    """
    param_names: dict[int, list[str]] = {}
    buffer_names: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    order: list[tuple[str, nn.Module]] = []
    first_seen: set[int] = set()
    opaque: dict[int, str] = {}  # TorchScript submodules: no hooks, counted in their parent's row
    scripts: list[str] = []  # with hookable=False: TorchScript modules, walked like the others
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) not in first_seen:
            first_seen.add(id(module))
            order.append((name, module))
        prefix = f"{name}." if name else ""
        if not hookable and isinstance(module, torch.jit.ScriptModule):
            if not any(name.startswith(f"{outer}.") or not outer for outer in scripts):
                scripts.append(name)  # outermost only: the footer names whole scripts
        elif isinstance(module, torch.jit.ScriptModule):
            opaque.setdefault(id(module), name)
            for named, names in (
                (module.named_parameters(prefix=name), param_names),
                (module.named_buffers(prefix=name), buffer_names),
            ):
                for full_name, tensor in named:
                    names.setdefault(id(tensor), []).append(full_name)
                    tensors[id(tensor)] = tensor
            continue  # its submodules cannot be hooked either
        tables: tuple[tuple[dict[str, Any], dict[int, list[str]]], ...] = (
            (module._parameters, param_names),
            (module._buffers, buffer_names),
        )
        for table, names in tables:
            for local, tensor in table.items():
                if tensor is not None:
                    names.setdefault(id(tensor), []).append(prefix + local)
                    tensors[id(tensor)] = tensor
        stack.extend(
            reversed(
                [
                    (prefix + local, child)
                    for local, child in module._modules.items()
                    if child is not None
                ]
            )
        )

    lazy = [
        names[key][0]
        for names in (param_names, buffer_names)
        for key in names
        if is_lazy(tensors[key])
    ]
    if lazy and hookable:  # their shapes cannot even be read
        raise ValueError(
            f"the model has uninitialised lazy parameters ({', '.join(lazy[:3])}); summary "
            "never initialises them, since that would change the model: run one forward pass first"
        )
    parameters = tuple(_tensor_records(param_names, tensors, parameters=True))
    numels = [p.numel for p in parameters]
    trainable = [p.trainable for p in parameters]
    position = {key: i for i, key in enumerate(param_names)}
    infos: dict[int, ModuleInfo] = {}
    for name, module in order:
        if id(module) in opaque:
            own = dict.fromkeys(position[id(p)] for p in module.parameters())
        else:
            own = dict.fromkeys(
                position[id(p)] for p in module._parameters.values() if p is not None
            )
            for child in module._modules.values():  # what unhookable children hold shows here
                if child is not None and id(child) in opaque:
                    own.update(dict.fromkeys(position[id(p)] for p in child.parameters()))
        infos[id(module)] = ModuleInfo(
            name=name,
            type=type(module).__name__ if hookable else type_name(module),
            own=tuple(own),
        )
    for _, module in reversed(order):  # children before parents
        info = infos[id(module)]
        subtree = dict.fromkeys(info.own)
        if id(module) not in opaque:
            for child in module._modules.values():
                if child is not None:
                    subtree.update(dict.fromkeys(infos[id(child)].subtree))
        info.subtree = tuple(subtree)
        info.params = sum(numels[i] for i in info.subtree)
        info.trainable = sum(numels[i] for i in info.subtree if trainable[i])
    devices = list(dict.fromkeys(t.device for t in tensors.values()))
    return ModelIndex(
        parameters=parameters,
        buffers=tuple(_tensor_records(buffer_names, tensors, parameters=False)),
        modules=infos,
        module_objects=[module for _, module in order if id(module) not in opaque],
        devices=devices,
        scripted=tuple(opaque.values()) if hookable else tuple(scripts),
    )


def tree_layers(model: nn.Module, modules: dict[int, ModuleInfo]) -> tuple[LayerRecord, ...]:
    """One row per module of the tree, parents before children, iteratively.

    A module held under several names gets a row under each, but its submodules are drawn
    only under the first: the rows stay as many as the tree's edges however modules share.
    """
    layers: list[LayerRecord] = []
    drawn: set[int] = set()
    stack: list[tuple[str, nn.Module, int, int | None]] = [("", model, 0, None)]
    while stack:
        name, module, depth, parent = stack.pop()
        info = modules[id(module)]
        layers.append(
            LayerRecord(
                index=len(layers),
                name=name,
                type=info.type,
                depth=depth,
                parent=parent,
                input_shapes=(),
                output_shapes=(),
                params=info.params,
                trainable_params=info.trainable,
                own_parameters=info.own,
                subtree_parameters=info.subtree,
                is_repeat=False,
            )
        )
        if id(module) in drawn:
            continue
        drawn.add(id(module))
        prefix = f"{name}." if name else ""
        children = [(k, c) for k, c in module._modules.items() if c is not None]
        parent_index = len(layers) - 1
        stack.extend(
            (prefix + local, child, depth + 1, parent_index) for local, child in reversed(children)
        )
    return tuple(layers)
