"""The gradient rule registry: one rule per finding kind, each documented, none reading the
monitor; a report taken after the loop is fixed by what the loop did."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch
from torch import nn

import torchscope
from torchscope.collect.gradients.registry import RULES
from torchscope.records import FINDING_KINDS

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "torchscope" / "collect" / "gradients" / "rules"


def test_every_finding_kind_has_exactly_one_rule():
    assert sorted(RULES) == sorted(FINDING_KINDS)
    assert all(rule.kind == kind for kind, rule in RULES.items())


def test_every_finding_kind_has_a_row_in_the_docs():
    text = (ROOT / "docs" / "gradients.md").read_text(encoding="utf-8")
    documented = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            documented.update(re.findall(r"`([a-z_]+)`", first_cell))
    assert set(FINDING_KINDS) <= documented, sorted(set(FINDING_KINDS) - documented)


def test_rules_read_evidence_never_the_monitor():
    # a rule sees Observations/Evidence only: no import of the monitor, no private attribute
    # of another object (ev._x), so what it judges is what observe() copied
    for path in sorted(RULES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module is None or "monitor" not in node.module, path.name
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                assert isinstance(node.value, ast.Name) and node.value.id == "self", (
                    f"{path.name}:{node.lineno} reads {node.attr}"
                )


def _loop(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_a_report_after_the_optimizer_is_gone_is_the_report_inside_the_block():
    # `with GradientMonitor(model) as mon: fit(model)` where fit builds its own optimizer:
    # the optimizer is garbage by the time the user prints the report
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torchscope.GradientMonitor(model) as monitor:
        _loop(model, torch.optim.SGD(model.parameters(), lr=0.1))
        inside = monitor.report()
    after = monitor.report()
    assert inside.ok and after.ok, after
    assert after.findings == inside.findings
    assert [h.grad_norm for h in after.parameters] == [h.grad_norm for h in inside.parameters]


def test_freezing_after_the_block_does_not_change_the_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torchscope.GradientMonitor(model, optimizer) as monitor:
        _loop(model, optimizer)
    model.requires_grad_(False)  # e.g. the next phase of a fine-tune
    assert monitor.report().ok, monitor.report()
