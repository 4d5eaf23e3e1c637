"""Every edge-case model of tests/edge_zoo.py through summary, module_graph and autograd_graph_of.

PyTorch is the oracle: a plain forward on a twin of the model (built again from the same
seed) gives the output shapes, the modules the module graph must draw and the parameters the
autograd graph must show; ``numel()`` of the distinct parameters gives the count. Each call must return a result that agrees with it, or (where the case allows) refuse
with a clear error; either way the model, its inputs and the global state are left exactly as
found.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributions import Distribution
from torch.nn.parameter import UninitializedTensorMixin

import torchscope
from torchscope import TorchscopeError, TorchscopeWarning

from .edge_zoo import CALLS, EDGE_ZOO, EdgeCase, Inputs
from .state import assert_identical, exact_snapshot

Shape = tuple[int, ...]
_SEED = 0  # every model is built from it, so that the oracle can build its twin

# ---------------------------------------------------------------------------------------------
# the oracle: PyTorch itself, walked without torchscope's code


def _walk_output(obj: Any) -> tuple[list[torch.Tensor], bool]:
    """Every tensor in a forward's output, depth first, and whether any sat inside an object
    (a distribution, a plain object) rather than a tuple, list, dict, namedtuple or dataclass.

    Objects are walked by their attributes (``__dict__`` and ``__slots__``), distributions by
    theirs too, a cycle once.
    """
    found: list[torch.Tensor] = []
    in_object = False
    on_path: set[int] = set()

    def visit(item: Any, inside_object: bool) -> None:
        nonlocal in_object
        if isinstance(item, torch.Tensor):
            found.append(item)
            in_object = in_object or inside_object
            return
        if item is None or isinstance(item, (str, bytes, int, float, bool, type, torch.Size)):
            return
        if id(item) in on_path:
            return
        on_path.add(id(item))
        if isinstance(item, (tuple, list)):
            children = list(item)
        elif isinstance(item, Mapping):
            children = list(item.values())
        elif dataclasses.is_dataclass(item):
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        else:
            inside_object = True
            names = list(getattr(item, "__dict__", {}))
            for cls in type(item).__mro__:
                names += [s for s in getattr(cls, "__slots__", ()) if hasattr(item, s)]
            if isinstance(item, Distribution):  # lazily computed twins (probs of logits) aside
                names = [n for n in names if not n.startswith("_")]
            children = [getattr(item, n) for n in names]
        for child in children:
            visit(child, inside_object)
        on_path.discard(id(item))

    visit(obj, False)
    return found, in_object


def _shape(t: torch.Tensor) -> Shape:
    return tuple(t.shape)


def _fresh(inputs: Inputs) -> Inputs:
    return Inputs(copy.deepcopy(inputs.args), copy.deepcopy(dict(inputs.kwargs)))


def _build(case: EdgeCase) -> nn.Module:
    """The case's model, its initial weights drawn from ``_SEED`` (the caller's RNG untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(_SEED)
        return case.build()


def _plain_forward(case: EdgeCase, inputs: Inputs, *, grad: bool) -> tuple[nn.Module, Any]:
    """A twin of the case's model in eval mode, and its output for a copy of ``inputs``.

    The twin is built again from the same seed rather than deep-copied: PyTorch cannot
    deep-copy a pruned or (old-style) weight-normed module, whose weight is a computed tensor.
    """
    twin = _build(case).eval()
    call = _fresh(inputs)
    with torch.set_grad_enabled(grad):
        return twin, twin(*call.args, **call.kwargs)


def _unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())  # distinct by identity, shared and tied ones once


def _is_lazy(model: nn.Module) -> bool:
    return any(isinstance(p, UninitializedTensorMixin) for p in model.parameters())


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DataParallel wrapper: the one whose names torchscope reports."""
    return model.module if isinstance(model, nn.DataParallel) else model


def _reachable_parameter_names(twin: nn.Module, output: Any) -> set[str]:
    """Names (first registration) of the twin's parameters that ``backward()`` would reach."""
    # the parameters are held in the dict: TorchScript makes a new Python object for one
    # whose old object died, and ids of dead objects are reused
    named: dict[int, tuple[str, torch.Tensor]] = {}
    for name, p in _unwrapped(twin).named_parameters():
        named.setdefault(id(p), (name, p))
    names = {key: name for key, (name, _) in named.items()}
    found: set[str] = set()
    seen: set[Any] = set()
    stack = []
    for t in _walk_output(output)[0]:
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
        elif t.requires_grad and id(t) in names:
            found.add(names[id(t)])
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in names:
            found.add(names[id(variable)])
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _same_shapes(got: list[Shape], want: list[Shape], *, in_object: bool, ordered: bool) -> bool:
    """Shapes agree: in order where the output is made of plain containers (summary's
    columns), else as multisets (graph nodes; the attribute order of objects)."""
    return got == want if ordered and not in_object else sorted(got) == sorted(want)


def _input_tensors(inputs: Inputs | None) -> list[torch.Tensor]:
    if inputs is None:
        return []
    return _walk_output((inputs.args, dict(inputs.kwargs)))[0]


# ---------------------------------------------------------------------------------------------
# the calls


def _invoke(call: str, model: nn.Module, inputs: Inputs | None) -> Any:
    fn = getattr(torchscope, call)
    if inputs is None:
        return fn(model)
    if inputs.args:
        return fn(model, inputs.args, forward_kwargs=dict(inputs.kwargs) or None)
    return fn(model, dict(inputs.kwargs))


def _output_node_shapes(graph: Any) -> list[Shape]:
    return [shape for node in graph.nodes if node.kind == "output" for shape in node.shapes]


def _check_summary(case: EdgeCase, model: nn.Module, inputs: Inputs | None, result: Any) -> None:
    params = _unique_params(model)
    if inputs is None:  # parameters only: lazy ones have no size yet
        params = [p for p in params if not isinstance(p, UninitializedTensorMixin)]
        assert result.output_shapes == () and result.input_shapes == ()
    else:
        twin, output = _plain_forward(case, inputs, grad=False)
        if _is_lazy(model):  # a summary of a lazy model reports what the forward would make
            params = _unique_params(twin)
        tensors, in_object = _walk_output(output)
        want = [_shape(t) for t in tensors]
        got = list(result.output_shapes)
        assert _same_shapes(got, want, in_object=in_object, ordered=True), (
            f"output shapes {got}, PyTorch gives {want}"
        )
        assert list(result.input_shapes) == [_shape(t) for t in _input_tensors(inputs)]
    assert result.total_params == sum(p.numel() for p in params)
    assert result.trainable_params == sum(p.numel() for p in params if p.requires_grad)


def _hookable_leaves(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a module graph draws as nodes: those without children, and TorchScript
    submodules (opaque: no hook reaches inside), by their first registered name."""
    leaves: dict[str, nn.Module] = {}
    inside_script: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside_script):
            continue
        if isinstance(module, torch.jit.ScriptModule):
            inside_script.append(name)
            leaves[name] = module
        elif not list(module.children()):
            leaves[name] = module
    return leaves


def _check_module_graph(case: EdgeCase, inputs: Inputs, graph: Any) -> None:
    twin = _build(case).eval()
    root = _unwrapped(twin)
    # a root without children is a leaf itself, drawn under its class name
    leaves = {name or type(root).__name__: m for name, m in _hookable_leaves(root).items()}
    called: set[str] = set()
    handles = [
        module.register_forward_hook(lambda *_, name=name: called.add(name))
        for name, module in leaves.items()
        if not isinstance(module, torch.jit.ScriptModule)
    ]
    call = _fresh(inputs)
    with torch.no_grad():
        output = twin(*call.args, **call.kwargs)
    for handle in handles:
        handle.remove()
    # no hook sees a TorchScript part called; every one in the zoo is
    called |= {
        name for name, module in leaves.items() if isinstance(module, torch.jit.ScriptModule)
    }
    drawn = {node.key.partition("#")[0] for node in graph.nodes if node.kind == "module"}
    assert called <= drawn, f"modules PyTorch called but the graph lacks: {called - drawn}"
    assert drawn <= set(leaves), f"module nodes that are no leaf module: {drawn - set(leaves)}"
    tensors, in_object = _walk_output(output)
    got, want = _output_node_shapes(graph), [_shape(t) for t in tensors]
    assert _same_shapes(got, want, in_object=in_object, ordered=False), (
        f"output nodes {got}, PyTorch gives {want}"
    )
    input_nodes = [s for node in graph.nodes if node.kind == "input" for s in node.shapes]
    assert sorted(input_nodes) == sorted(_shape(t) for t in _input_tensors(inputs))


def _check_autograd_graph(case: EdgeCase, inputs: Inputs, graph: Any) -> None:
    twin, output = _plain_forward(case, inputs, grad=True)
    tensors, in_object = _walk_output(output)
    want = [_shape(t) for t in tensors if t.grad_fn is not None or t.requires_grad]
    got = _output_node_shapes(graph)
    assert _same_shapes(got, want, in_object=in_object, ordered=False), (
        f"output nodes {got}, PyTorch gives {want} (the outputs autograd can reach)"
    )
    got_params = {n.label for n in graph.nodes if n.kind == "parameter"}
    assert got_params == _reachable_parameter_names(twin, output)


_REFUSALS = (TorchscopeError, TypeError, ValueError)
_PACKAGE = Path(torchscope.__file__).parent


def _raised_by_us(error: BaseException) -> bool:
    """Whether torchscope raised ``error`` itself (a refusal), rather than letting PyTorch's
    own error (an uninitialised parameter touched, a hook refused) through."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(_PACKAGE)


def _refusal(case: EdgeCase, call: str, inputs: Inputs | None) -> str | None:
    """The regex a refusal of ``call`` must match, or None where a result is required."""
    if inputs is None and call != "summary":
        return r"(?i)input"  # a graph needs a forward pass, hence an input
    if case.issue_class == 3 and call == "autograd_graph_of":
        # a clear message that suggests no call that fails the same way
        return r"(?s)^(?!.*autograd_graph\(model\().*tensor"
    return case.refusals.get(call)


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("case", EDGE_ZOO, ids=repr)
def test_edge_case_agrees_with_pytorch_and_leaves_everything_as_found(case, call):
    model = _build(case)
    inputs = case.make_input() if case.make_input is not None else None
    input_copies = [t.clone() for t in _input_tensors(inputs)]
    before = exact_snapshot(model)
    allowed = _refusal(case, call, inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _invoke(call, model, inputs)
        except _REFUSALS as e:
            if allowed is None or not re.search(allowed, str(e)) or not _raised_by_us(e):
                raise
            result = None
    # parameters edited in place (ActNorm, an optimizer step) are put back too, unannounced
    assert_identical(before, model)
    edits = [str(w.message) for w in caught if "in place" in str(w.message)]
    assert edits == [], edits
    for original, now in zip(input_copies, _input_tensors(inputs), strict=True):
        assert torch.equal(original, now), "the caller's input was modified"
    foreign = [w for w in caught if not issubclass(w.category, TorchscopeWarning)]
    assert foreign == [], [str(w.message) for w in foreign]
    if call == "autograd_graph_of":  # it runs the forward with gradients enabled itself
        advice = [str(w.message) for w in caught if "with gradients enabled" in str(w.message)]
        assert advice == [], "advice that cannot help"
    if result is None:
        return
    if case.issue_class == 3 and call == "autograd_graph_of":
        assert result.warnings, "an empty autograd graph needs a note saying why"
    if call == "summary":
        _check_summary(case, model, inputs, result)
    elif call == "module_graph":
        assert inputs is not None
        _check_module_graph(case, inputs, result)
    else:
        assert inputs is not None
        _check_autograd_graph(case, inputs, result)


def test_the_zoo_covers_every_class_of_issue_25_several_times():
    by_class: dict[int | None, int] = {}
    for case in EDGE_ZOO:
        by_class[case.issue_class] = by_class.get(case.issue_class, 0) + 1
    assert all(by_class.get(k, 0) >= 3 for k in (1, 2, 3, 4, 5, 6)), by_class
    assert by_class[None] >= 15
