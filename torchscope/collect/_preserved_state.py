"""Put a model's state back exactly as it was after a block ran it: :func:`preserved_state`.

Every module's ``__dict__`` entries and plain containers, the values of buffers and tensor
attributes, parameters written in place (a dispatch mode copies each just before its first
write), ``requires_grad`` and ``.grad``. :func:`torchscope.collect.hooks.instrumented` runs
every collector's block inside it.
"""

from __future__ import annotations

import collections
import contextlib
import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils._python_dispatch import (
    TorchDispatchMode,
    _get_current_dispatch_mode,
    _pop_mode_temporarily,
)

from torchscope.collect._module_walk import iter_modules
from torchscope.errors import TorchscopeWarning

__all__ = [
    "OpCall",
    "ParameterWriteGuard",
    "parameter_writes_inline",
    "parameter_writes_unwatched",
    "plain_call",
    "preserved_state",
]


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors track no version counter
        return None


_MISSING = object()
# containers held in a module's __dict__ whose contents are put back too (its parameter,
# buffer and submodule tables, its hook tables, a cache list a forward appends to); exact
# types only: a subclass may give clear() or item assignment a meaning of its own
_CONTAINERS = (dict, collections.OrderedDict, list, set)


def _contents(container: Any) -> tuple[Any, ...]:
    """A shallow copy of a container's contents: its items for a mapping, its elements else."""
    if not container:
        return ()
    return (
        tuple(container.items())
        if type(container) is not list and type(container) is not set
        else tuple(container)
    )


def _same_contents(live: Any, saved: tuple[Any, ...]) -> bool:
    """Whether ``live`` holds the same objects as ``saved``, in the same order, by identity.

    Identity, never ``==``: ``==`` on tensors compares them element-wise (a multi-element
    result cannot even be read as a bool) and would call user code.
    """
    if len(live) != len(saved):
        return False
    if not saved:  # most hook tables: empty before and after
        return True
    if type(live) is set:
        return {id(x) for x in live} == {id(x) for x in saved}
    if type(live) is list:
        return all(a is b for a, b in zip(live, saved, strict=True))
    return all(
        key is old[0] and value is old[1]
        for (key, value), old in zip(live.items(), saved, strict=True)
    )


def _refill(live: Any, saved: tuple[Any, ...]) -> None:
    """Give ``live`` the contents ``saved`` in their order, keeping the container object."""
    if _same_contents(live, saved):
        return
    live.clear()
    if isinstance(live, dict):
        live.update(saved)
    elif isinstance(live, list):
        live.extend(saved)
    else:
        live.update(saved)


@dataclass
class _ModuleSnapshot:
    """A module's instance ``__dict__`` as it was, and the contents of its plain containers.

    ``_parameters``, ``_buffers``, ``_modules``, ``_non_persistent_buffers_set``, the hook
    tables, ``training`` and every user attribute live in ``__dict__``, so putting each entry
    back by identity and refilling the containers among them undoes whatever a forward
    rebinds, adds or deletes (``self.steps = self.steps + 1``, ``del self.cache``, a
    ``register_buffer("cache", None)`` slot filled, a submodule registered).
    """

    module: nn.Module
    cls: type[nn.Module]
    training: bool
    attributes: dict[str, Any]
    contents: dict[str, tuple[Any, ...]]

    @classmethod
    def take(cls, module: nn.Module) -> _ModuleSnapshot:
        attributes = dict(module.__dict__)
        contents = {
            key: _contents(value) for key, value in attributes.items() if type(value) in _CONTAINERS
        }
        return cls(module, type(module), module.training, attributes, contents)

    def restore(self) -> None:
        """Put the ``__dict__`` back. Touches no tensor and runs no user code."""
        module = self.module
        if isinstance(module, torch.jit.ScriptModule):
            # its attribute tables are views of the compiled object: values are restored
            module.training = self.training
            return
        if type(module) is not self.cls:  # a forward that swapped its class, as lazy modules do
            module.__class__ = self.cls
        live = module.__dict__
        attributes = self.attributes
        # the common case, in C loops: the same names in the same order, bound to the same
        # objects (names are strings: comparing them runs no user code)
        unchanged = list(live) == list(attributes) and all(
            map(operator.is_, live.values(), attributes.values())
        )
        if not unchanged:
            for key in [k for k in live if k not in attributes]:
                del live[key]
            for key, value in attributes.items():
                if live.get(key, _MISSING) is not value:
                    live[key] = value
            if list(live) != list(attributes):  # an attribute deleted and set again moved last
                for key in attributes:
                    live[key] = live.pop(key)
        for key, saved in self.contents.items():
            container = attributes[key]
            if saved:
                _refill(container, saved)
            elif container:  # empty before (most hook tables): emptied again
                container.clear()


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    """Where a tensor's data lives and how it is laid out, to tell a rebound ``.data``."""
    try:
        # the address stands for the device too; one tuple of few calls: it runs twice per
        # tensor of the model on every instrumented call
        return (
            tensor.data_ptr(),
            tensor.dtype,
            tensor.shape,
            tensor.stride(),
            tensor.storage_offset(),
        )
    except Exception:  # sparse, nested and other layouts without strides: not tracked
        return None


_SAME_SIZE_INTEGER = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(live: torch.Tensor, saved: torch.Tensor) -> bool:
    """Whether two tensors of one layout hold the same bits (NaN payloads and -0.0 included).

    False when that cannot be told cheaply: the values are then copied back regardless.
    """
    try:
        if live.device.type == "meta":
            return True  # no values to change
        integer = _SAME_SIZE_INTEGER.get(live.element_size())
        if integer is None or live.layout != torch.strided or live.is_quantized:
            return False
        return bool(torch.equal(live.view(integer), saved.view(integer)))
    except Exception:
        return False


@dataclass
class _TensorState:
    """A parameter, buffer or tensor attribute and what a forward could change about it."""

    tensor: torch.Tensor
    data: torch.Tensor  # an alias of its storage, to put back a rebound ``.data``
    storage: tuple[Any, ...] | None
    # a copy of its values: taken up front for buffers (small; always compared), before the
    # first write for parameters (by ParameterWriteGuard), None while nothing wrote to one
    values: torch.Tensor | None

    @classmethod
    def take(cls, tensor: torch.Tensor, *, copy: bool) -> _TensorState:
        storage = _storage_key(tensor)
        return cls(tensor, tensor.data, storage, tensor.clone() if copy else None)

    def restore_storage(self) -> None:
        if self.storage is not None and _storage_key(self.tensor) != self.storage:
            self.tensor.data = self.data

    def restore_values(self) -> None:
        if self.values is None or _same_bits(self.tensor, self.values):
            return  # no write
        # through the ``.data`` alias, whose version counter is its own: the tensor's counter
        # stays where the forward left it, so a backward pass the caller still has pending
        # through it runs, when the forward wrote only to a twin that shares its storage
        # (the memory estimate's passes on the real tensors)
        target = self.data if _plain(self.tensor) else self.tensor
        try:
            target.copy_(self.values)
        except RuntimeError:
            if self.tensor.is_inference():
                with torch.inference_mode():
                    target.copy_(self.values)
            # else: an expanded or otherwise overlapping tensor, which no in-place op can have
            # written


def _plain(tensor: Any) -> bool:
    """Whether ``tensor`` is a tensor with storage of its own: not a fake, meta or wrapper
    subclass tensor (FakeTensor, DTensor, functionalisation), whose storage must not be read."""
    return (
        isinstance(tensor, torch.Tensor)
        and type(tensor).__torch_dispatch__ is torch.Tensor.__torch_dispatch__
        and tensor.device.type != "meta"
    )


def _storage_address(tensor: torch.Tensor) -> int:
    """The address of the storage ``tensor`` views (shared by ``p.data``, slices, ``view``);
    0 for none (an empty tensor, a layout without storage)."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except Exception:  # sparse, nested and other layouts without one storage
        return 0


def _written_arguments(func: Any) -> tuple[tuple[int, str], ...]:
    """(position, name) of each argument an aten op writes to (``Tensor(a!)``: ``self`` of
    ``add_``, ``out=``, the lists of ``_foreach_add_``), from its schema."""
    try:
        arguments = func._schema.arguments
    except AttributeError:  # not an OpOverload: nothing declared
        return ()
    return tuple(
        (position, argument.name)
        for position, argument in enumerate(arguments)
        if argument.alias_info is not None and argument.alias_info.is_write
    )


class ParameterWriteGuard(TorchDispatchMode):
    """Copies a parameter's values just before the first aten op that writes to its storage.

    Active while an instrumented forward runs, so that :func:`preserved_state` can put back
    what the forward edited in place (ActNorm's data-dependent initialisation, an optimizer
    step, ``nn.init`` on a weight, ``p.data[...] = ...``) without copying every parameter up
    front. A write is known by the op's schema, so the cost is one dictionary look-up per op
    and a storage look-up per written argument. Scripted code dispatches through the same
    ops; fake and meta tensors (the memory estimate's) are passed over.

    A forward that rebinds ``p.data`` and then writes to ``p`` or a view of it writes to the
    new storage, which :func:`preserved_state` drops when it puts the old ``.data`` back: no
    value is lost, yet ``p``'s version counter, which stays with ``p``, moves. The guard
    counts how far such declared writes moved it (:attr:`bumps_elsewhere`), so that only the
    moves no op declared are reported.
    """

    def __init__(self, parameters: dict[int, list[_TensorState]]) -> None:
        super().__init__()
        self.unsaved = parameters  # storage address -> parameters viewing it, not yet copied
        self.wrote_any = False  # whether some op wrote to a parameter
        # id(parameter) -> how far ops that wrote to it, or to a view of it, outside its
        # watched storage moved its version counter
        self.bumps_elsewhere: dict[int, int] = {}
        self._writes: dict[Any, tuple[tuple[int, str], ...]] = {}
        self._bumps_after: dict[Any, bool] = {}
        # the watched parameters by id (each kept alive by its state)
        self._parameters = {id(s.tensor): s for states in parameters.values() for s in states}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return self.call(func, args, kwargs)

    def call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        """Runs one aten op, copying first each parameter it writes to (the mode's handler;
        also called by a mode of torchscope's own: :func:`parameter_writes_inline`)."""
        # id(parameter) -> (its state, its version before, how many written arguments alias
        # it), for the parameters this op writes to outside their watched storage
        elsewhere: dict[int, tuple[_TensorState, int | None, int]] | None = None
        if self.unsaved:
            written = self._writes.get(func)
            if written is None:
                written = self._writes[func] = _written_arguments(func)
            for position, name in written:
                value = args[position] if position < len(args) else (kwargs or {}).get(name)
                for tensor in value if isinstance(value, (list, tuple)) else (value,):
                    if _plain(tensor):
                        self._save(tensor)
                        owner = self._owner(tensor)
                        if owner is not None and owner.values is None:  # not its old storage
                            elsewhere = {} if elsewhere is None else elsewhere
                            key = id(owner.tensor)
                            _, version, count = elsewhere.get(
                                key, (owner, _version(owner.tensor), 0)
                            )
                            elsewhere[key] = (owner, version, count + 1)
        if elsewhere is None:
            return func(*args, **kwargs) if kwargs else func(*args)
        self.wrote_any = True
        try:
            result = func(*args, **kwargs) if kwargs else func(*args)
        except BaseException:
            self._count_bumps(elsewhere, after=False)
            raise
        self._count_bumps(elsewhere, after=self._bumps_after_op(func))
        return result

    def _bumps_after_op(self, func: Any) -> bool:
        """Whether autograd's ADInplaceOrView kernel of ``func`` (above this mode) bumps the
        version counter of each tensor it wrote once this handler returns (``add_``,
        ``copy_``, ``out=``: most ops; not the ``_foreach_`` ones)."""
        after = self._bumps_after.get(func)
        if after is None:
            try:
                key = torch._C.DispatchKey.ADInplaceOrView
                after = bool(func.has_kernel_for_dispatch_key(key))
            except Exception:  # not an OpOverload
                after = False
            self._bumps_after[func] = after
        return after

    def _count_bumps(
        self, elsewhere: dict[int, tuple[_TensorState, int | None, int]], *, after: bool
    ) -> None:
        for key, (owner, version, count) in elsewhere.items():
            # measured for kernels that bump as they go, counted for the bump still to come
            moved = (_version(owner.tensor) or 0) - (version or 0) + (count if after else 0)
            self.bumps_elsewhere[key] = self.bumps_elsewhere.get(key, 0) + moved

    def _owner(self, tensor: torch.Tensor) -> _TensorState | None:
        """The watched parameter that ``tensor`` is or views, sharing its version counter.

        Not one it was ``detach()``-ed from: that shares the counter too, but in this handler
        it cannot be told from ``.data``, which does not (``.data`` gets its own counter only
        after its ``detach`` returns). A write through a ``detach()`` of a parameter whose
        ``.data`` was rebound is therefore reported as unseen: a false alarm, never a write
        hidden.
        """
        owner = self._parameters.get(id(tensor))
        base = tensor._base if owner is None else None
        return owner if base is None else self._parameters.get(id(base))

    def _save(self, tensor: torch.Tensor) -> None:
        states = self.unsaved.pop(_storage_address(tensor), None)
        self.wrote_any = self.wrote_any or bool(states)
        # this handler runs below autograd and with this mode off: the copy is not recorded,
        # consumes no randomness and goes to the kernel
        for state in states or ():
            if state.values is None:
                state.values = state.data.clone()


# the guards of the instrumented blocks running now, innermost last (blocks of different
# threads take turns: hooks._INSTRUMENTATION_LOCK)
_GUARDS: list[ParameterWriteGuard] = []


@contextlib.contextmanager
def parameter_writes_unwatched() -> Iterator[None]:
    """Run a block without the innermost instrumented block's parameter-write guard, when
    nothing wrote to a parameter so far and the guard is the innermost dispatch mode.

    For timed loops: the guard intercepts every op (about 10 us each), which would be timed
    too. A model whose earlier passes wrote to a parameter keeps the guard (such writes
    recur); a write that first happens inside the block is left undone and reported by
    :func:`preserved_state`'s version check, like any write it could not see.
    """
    guard = _GUARDS[-1] if _GUARDS else None
    if guard is None or guard.wrote_any or _get_current_dispatch_mode() is not guard:
        yield
        return
    with _pop_mode_temporarily():
        yield


def plain_call(func: Any, args: Any, kwargs: Any = None) -> Any:
    """Runs one aten op as the dispatcher would (an :data:`OpCall`)."""
    return func(*args, **kwargs) if kwargs else func(*args)


#: how a dispatch mode of torchscope's runs the op it intercepts: ``(func, args, kwargs)``
OpCall = Callable[[Any, Any, Any], Any]


@contextlib.contextmanager
def parameter_writes_inline() -> Iterator[OpCall]:
    """For a dispatch mode of torchscope's own that sees every op anyway (the summary's cost
    counter): the innermost instrumented block's parameter-write guard is taken off the mode
    stack for the block, and its handler is what runs each op. One Python dispatch mode per
    op instead of two, a few microseconds an op. Where the guard is not the innermost mode,
    it stays where it is, and ops are run plainly (it sees them as before).
    """
    guard = _GUARDS[-1] if _GUARDS else None
    if guard is None or _get_current_dispatch_mode() is not guard:
        yield plain_call
        return
    with _pop_mode_temporarily():
        yield guard.call


def _tracked(tensor: Any) -> TypeGuard[torch.Tensor]:
    return isinstance(tensor, torch.Tensor) and not is_lazy(tensor)


@contextlib.contextmanager
def preserved_state(
    model: nn.Module, *, modules: list[tuple[str, nn.Module]] | None = None
) -> Iterator[None]:
    """Put the model's state back as it was on exit, whether the block returns or raises.

    Restored: every module's instance ``__dict__`` entry by identity (``training``, the
    parameter, buffer and submodule tables, hook tables, plain attributes), with the contents
    of its plain lists, dicts and sets (a forward that rebinds, adds or deletes a parameter,
    buffer, submodule or attribute, or appends to a cache list, is undone); the ``.data`` of
    every parameter, buffer and tensor attribute (a rebound ``.data``); the values of every
    buffer and tensor attribute, copied back into the same tensors so their identity and
    aliasing are kept (compared bit for bit first, since some kernels, BatchNorm's running
    statistics on the CPU among them, update buffers without bumping their version counter;
    unchanged ones are not written); the values of every parameter an aten op wrote to in
    place (through the parameter, ``.data``, a slice or a view: a dispatch mode copies each
    such parameter once, just before the first write, so the others cost no memory); every
    parameter's ``requires_grad`` and ``.grad``. A parameter whose version counter moved
    without an op declaring the write (a custom kernel that does not say it writes) cannot be
    put back and is reported with a :class:`~torchscope.errors.TorchscopeWarning`, unless it
    has no elements (no values to lose: a write to it changes no bit). A declared write to a
    parameter, or a view of it, after its ``.data`` was rebound moves its counter too, yet
    lands in the new storage, dropped with the rebound ``.data``: the guard counts how far
    such writes moved the counter, and only a counter that moved further is reported. Every
    step of the restore runs even when another fails; the first failure is raised at the end.

    ``modules`` may pass ``list(iter_modules(model))`` when the caller already has it.
    """
    named = modules if modules is not None else list(iter_modules(model))
    snapshots = [_ModuleSnapshot.take(module) for _, module in named]
    tensors: dict[int, _TensorState] = {}
    params: dict[int, tuple[str, nn.Parameter, int | None, bool, torch.Tensor | None]] = {}
    by_storage: dict[int, list[_TensorState]] = {}
    with torch.no_grad():
        for (name, module), snapshot in zip(named, snapshots, strict=True):
            prefix = f"{name}." if name else ""
            # read through the tables, not the snapshot: a ScriptModule's are views
            buffers = list(module._buffers.items())
            parameters = list(module._parameters.items())
            # tensors held as plain attributes (a mask, a cache), parameters excluded
            attributes = [
                v
                for v in snapshot.attributes.values()
                if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter)
            ]
            for value in [v for _, v in buffers] + attributes:
                if _tracked(value) and id(value) not in tensors:
                    tensors[id(value)] = _TensorState.take(value, copy=True)
            for param_name, param in parameters:
                if param is not None and not is_lazy(param) and id(param) not in params:
                    state = tensors.setdefault(id(param), _TensorState.take(param, copy=False))
                    address = _storage_address(param) if _plain(param) else 0
                    if address and state.values is None:  # not also a buffer (copied already)
                        by_storage.setdefault(address, []).append(state)
                    params[id(param)] = (
                        prefix + param_name,
                        param,
                        # a parameter of no elements has no bits a write could change (the
                        # guard cannot watch most: their storage address is 0, as for every
                        # empty tensor); what resize_ or set_ change, its shape and storage,
                        # is put back with .data: a moved version counter means no lost value
                        _version(param) if param.numel() else None,
                        param.requires_grad,
                        param.grad,
                    )
    guard = ParameterWriteGuard(by_storage)
    _GUARDS.append(guard)
    try:
        with guard:
            yield
    finally:
        _GUARDS.remove(guard)
        errors: list[Exception] = []
        for snapshot in snapshots:
            try:
                snapshot.restore()
            except Exception as e:  # keep restoring the rest
                errors.append(e)
        with torch.no_grad():
            for state in tensors.values():
                try:
                    state.restore_storage()
                    state.restore_values()
                except Exception as e:
                    errors.append(e)
        changed = []
        for name, param, version, requires_grad, grad in params.values():
            try:
                if param.requires_grad != requires_grad:
                    param.requires_grad_(requires_grad)
                if param.grad is not grad:
                    param.grad = grad
            except Exception as e:
                errors.append(e)
            # a copy put back bumped the counter too: only an unseen write is left to report;
            # so did each declared write to a rebound .data (no value lost): the guard counted
            # those, and a counter that moved further was moved by a write it did not see
            now = _version(param)
            if (
                version is not None
                and tensors[id(param)].values is None
                and (now is None or now > version + guard.bumps_elsewhere.get(id(param), 0))
            ):
                changed.append(name)
        if changed:
            warnings.warn(
                f"the model's forward pass modified parameter(s) in place without declaring "
                f"the write to PyTorch's dispatcher: {', '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}; torchscope could not undo this change",
                TorchscopeWarning,
                stacklevel=3,
            )
        if errors:
            raise errors[0]
