"""The zoo's registry and runner.

A scenario is a function ``main(watch, bug=True)`` (a correct script: ``main(watch)``) that
builds its data, model and optimizer and trains for a few epochs, with its training loop inside
``with watch(model, optimizer, **monitor_kwargs):``, the block a user writes around their own
loop. ``watch`` hands back the :class:`torchscope.GradientMonitor`; the report judged is the one
taken right after the block, as a user would print it.

A bug counts as detected only when an error or warning finding names its cause: its kind is one
of the scenario's ``kinds`` and, when ``where`` is given, the finding's ``where`` contains one of
those strings. Any error or warning on a fixed twin or a correct script is a false alarm.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import torchscope

SEVERE = ("error", "warning")


@dataclass(frozen=True)
class Scenario:
    name: str
    main: Callable[..., Any]
    kinds: tuple[str, ...]  # () for a correct script
    where: tuple[str, ...]  # substrings of Finding.where; () accepts any place
    note: str  # the bug, in a user's words

    @property
    def correct(self) -> bool:
        return not self.kinds


REGISTRY: dict[str, Scenario] = {}


def bug(*kinds: str, where: tuple[str, ...] | str = (), note: str = "") -> Callable:
    """Register ``main(watch, bug=True)``: a bug whose cause is one of ``kinds`` at ``where``."""
    if not kinds:
        raise ValueError("a bug scenario names at least one finding kind")
    places = (where,) if isinstance(where, str) else tuple(where)

    def register(main: Callable[..., Any]) -> Callable[..., Any]:
        _add(Scenario(main.__name__, main, tuple(kinds), places, note or (main.__doc__ or "")))
        return main

    return register


def correct(main: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``main(watch)``: a correct script that must get no error or warning."""
    _add(Scenario(main.__name__, main, (), (), main.__doc__ or ""))
    return main


def _add(scenario: Scenario) -> None:
    if scenario.name in REGISTRY:
        raise ValueError(f"two zoo scenarios are called {scenario.name!r}")
    REGISTRY[scenario.name] = scenario


class Watch:
    """The ``watch(model, optimizer=None, **monitor_kwargs)`` handed to a scenario.

    With ``compile_backend``, the model is compiled in place (``model.compile(backend=...)``)
    as the block starts, so the scenario's own loop trains the compiled model, and restored
    to eager when it ends.
    """

    def __init__(self, compile_backend: str | None = None) -> None:
        self.monitor: torchscope.GradientMonitor | None = None
        self.report: torchscope.GradientReport | None = None
        self.compile_backend = compile_backend

    @contextlib.contextmanager
    def __call__(
        self, model: torch.nn.Module, optimizer: Any = None, **kwargs: Any
    ) -> Iterator[torchscope.GradientMonitor]:
        if self.monitor is not None:
            raise RuntimeError("a zoo scenario opens watch() once")
        if self.compile_backend is not None:
            model.compile(backend=self.compile_backend)
        try:
            self.monitor = torchscope.GradientMonitor(model, optimizer=optimizer, **kwargs)
            with self.monitor:
                yield self.monitor
        finally:
            if self.compile_backend is not None:
                model._compiled_call_impl = None
        self.report = self.monitor.report()


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    bug: bool  # the buggy run (else the fixed twin or a correct script)
    report: torchscope.GradientReport
    result: Any

    @property
    def severe(self) -> list[torchscope.Finding]:
        return [f for f in self.report.findings if f.severity in SEVERE]

    @property
    def detected(self) -> bool:
        """An error or warning names the cause (kind, and place when the scenario gives one)."""
        return any(
            f.kind in self.scenario.kinds
            and (not self.scenario.where or any(w in f.where for w in self.scenario.where))
            for f in self.severe
        )

    @property
    def false_alarm(self) -> bool:
        return not self.bug and bool(self.severe)

    def pairs(self) -> set[tuple[str, str]]:
        """The (kind, place) of every error and warning."""
        return {(f.kind, f.where) for f in self.severe}

    def describe(self) -> str:
        found = ", ".join(f"{f.kind}({f.severity[0]})@{f.where}" for f in self.severe) or "-"
        return f"{self.scenario.name}[{'bug' if self.bug else 'clean'}]: {found}"


def run(
    scenario: Scenario, *, bug: bool, seed: int = 0, compile_backend: str | None = None
) -> Outcome:
    """Run one scenario (the bug, or its fixed twin with ``bug=False``) from a fixed seed;
    with ``compile_backend``, its model compiled with that torch.compile backend.

    Runs are deterministic, so each is made once per process and its outcome kept: the
    compiled-against-eager comparison reuses the eager runs of the detection tests."""
    key = (scenario.name, bug, seed, compile_backend)
    if key not in _OUTCOMES:
        _OUTCOMES[key] = _run(scenario, bug=bug, seed=seed, compile_backend=compile_backend)
    return _OUTCOMES[key]


_OUTCOMES: dict[tuple[str, bool, int, str | None], Outcome] = {}


def _run(scenario: Scenario, *, bug: bool, seed: int, compile_backend: str | None) -> Outcome:
    if compile_backend is not None:
        torch._dynamo.reset()
    torch.manual_seed(seed)
    random.seed(seed)
    watch = Watch(compile_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # users' scripts warn (broadcasting losses, ...)
        if scenario.correct:
            result = scenario.main(watch)
        else:
            result = scenario.main(watch, bug=bug)
    if watch.report is None:
        raise RuntimeError(f"zoo scenario {scenario.name} never opened watch()")
    return Outcome(scenario, bug and not scenario.correct, watch.report, result)


def load_all() -> dict[str, Scenario]:
    """Import every zoo module (they register on import) and return the registry."""
    import importlib
    import pkgutil

    import tests.training_zoo as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "harness":
            importlib.import_module(f"{package.__name__}.{info.name}")
    return REGISTRY
