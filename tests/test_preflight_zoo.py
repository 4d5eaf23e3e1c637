"""Every setup of tests/preflight_zoo.py through ``torchscope.preflight``.

A bug case must have each check it names in ``report.failed``; a correct case must come back
``report.ok`` (false alarms are as bad as misses). Besides: the user's model, optimizer,
inputs and the global RNG are left as found, and reports round-trip through ``to_dict``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings

import pytest
import torch

import torchscope
from torchscope import PreflightCheck, PreflightReport

from .preflight_zoo import BUG_CASES, CHECKS, OK_CASES, ZOO, Setup, ZooCase
from .state import assert_unchanged, snapshot

_BY_NAME = {c.name: c for c in ZOO}


def _run(setup: Setup) -> PreflightReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. MSELoss's own broadcasting warning
        return torchscope.preflight(
            setup.model,
            setup.inputs,
            setup.target,
            loss_fn=setup.loss_fn,
            optimizer=setup.optimizer,
        )


@functools.cache
def _report(name: str) -> PreflightReport:
    return _run(_BY_NAME[name].build())


def _ids(cases: list[ZooCase]) -> list[str]:
    return [c.name for c in cases]


def test_the_zoo_is_varied() -> None:
    assert len(OK_CASES) >= 10
    for check in CHECKS:
        assert sum(check in c.fails for c in BUG_CASES) >= 4, check
    assert len({c.name for c in ZOO}) == len(ZOO)


@pytest.mark.parametrize("case", BUG_CASES, ids=_ids(BUG_CASES))
def test_bug_is_caught(case: ZooCase) -> None:
    report = _report(case.name)
    missed = [name for name in case.fails if name not in report.failed]
    assert not missed, (
        f"{case.name} ({case.style}): expected {missed} in failed={report.failed}\n{report}"
    )
    assert not report.ok


@pytest.mark.parametrize("case", OK_CASES, ids=_ids(OK_CASES))
def test_correct_setup_is_ok(case: ZooCase) -> None:
    report = _report(case.name)
    assert report.ok, f"{case.name} ({case.style}): false alarm {report.failed}\n{report}"
    assert report.failed == ()
    report.raise_if_unhealthy()


@pytest.mark.parametrize("case", ZOO, ids=_ids(ZOO))
def test_report_shape(case: ZooCase) -> None:
    report = _report(case.name)
    names = [c.name for c in report.checks]
    assert sorted(names) == sorted(CHECKS), names
    for check in report.checks:
        assert isinstance(check, PreflightCheck)
        assert check.verdict in ("fail", "warn", "pass", "skip"), check
        assert report.check(check.name) == check
    assert report.failed == tuple(c.name for c in report.checks if c.verdict in ("fail", "warn"))
    assert report.ok == (not report.failed)
    assert PreflightReport.from_dict(report.to_dict()) == report
    assert isinstance(str(report), str) and str(report)
    assert isinstance(report._repr_html_(), str)
    for finding in report.findings:
        assert isinstance(finding, torchscope.Finding)


@pytest.mark.parametrize(
    "name", [c.name for c in BUG_CASES[::6]], ids=[c.name for c in BUG_CASES[::6]]
)
def test_unhealthy_report_raises(name: str) -> None:
    report = _report(name)
    with pytest.raises(AssertionError):
        report.raise_if_unhealthy()


def test_gradient_check_names_the_parameters() -> None:
    message = str(_report("grad_unused_submodule").check("gradients"))
    assert "aux_head" in message, message
    message = str(_report("grad_argmax_router").check("gradients"))
    assert "router" in message, message


def test_frozen_parameters_are_not_missing_gradients() -> None:
    for name in ("ok_frozen_backbone", "ok_frozen_embedding", "overfit_only_last_bias_trains"):
        assert _report(name).check("gradients").verdict in ("pass", "skip"), _report(name)


_SIDE_EFFECT_CASES = [
    "ok_cnn_batchnorm",  # BatchNorm running stats and num_batches_tracked
    "ok_sgd_momentum",  # a user optimizer
    "ok_transformer_batch_first",  # dropout: consumes RNG
    "ok_dict_inputs",
    "ok_frozen_embedding",
    "grad_unused_submodule",
    "overfit_adam_lr_zero_cnn",
    "batch_lstm_not_batch_first",
]


@pytest.mark.parametrize("name", _SIDE_EFFECT_CASES, ids=_SIDE_EFFECT_CASES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_user_objects_untouched(name: str, training: bool) -> None:
    setup = _BY_NAME[name].build()
    setup.model.train(training)
    inputs = copy.deepcopy(setup.inputs)
    target = setup.target.clone()
    optimizer_state = (
        None if setup.optimizer is None else copy.deepcopy(setup.optimizer.state_dict())
    )
    torch.manual_seed(1234)
    before = snapshot(setup.model)
    _run(setup)
    assert_unchanged(before, setup.model)
    assert all(p.grad is None for p in setup.model.parameters())
    assert all(m.training == training for m in setup.model.modules())
    assert torch.equal(setup.target, target)
    if isinstance(inputs, dict):
        assert all(torch.equal(setup.inputs[k], v) for k, v in inputs.items())
    elif isinstance(inputs, tuple):
        assert all(torch.equal(a, b) for a, b in zip(setup.inputs, inputs, strict=True))
    else:
        assert torch.equal(setup.inputs, inputs)
    if setup.optimizer is not None:
        after = setup.optimizer.state_dict()
        assert after["state"] == optimizer_state["state"] == {}
        assert after["param_groups"] == optimizer_state["param_groups"]
        # the optimizer still drives the user's own parameters
        assert setup.optimizer.param_groups[0]["params"][0] is next(setup.model.parameters())


def test_user_grads_kept() -> None:
    setup = _BY_NAME["ok_mlp_classifier"].build()
    for p in setup.model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = snapshot(setup.model)
    _run(setup)
    assert_unchanged(before, setup.model)


def test_signature_follows_the_contract() -> None:
    params = inspect.signature(torchscope.preflight).parameters
    assert list(params)[:3] == ["model", "inputs", "target"]
    for name in ("loss_fn", "optimizer", "steps"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["loss_fn"].default is inspect.Parameter.empty  # required
    assert params["optimizer"].default is None
    assert params["steps"].default == 100
    assert torchscope.PreflightReport is PreflightReport
    assert torchscope.PreflightCheck is PreflightCheck


def test_default_optimizer_is_adam_1e_2() -> None:
    """Without an optimizer, the overfit run is the one an explicit Adam(lr=1e-2) gives."""
    default = _report("ok_mlp_classifier").check("overfit")
    setup = _BY_NAME["ok_mlp_classifier"].build()
    adam = torch.optim.Adam(setup.model.parameters(), lr=1e-2)
    explicit = _run(setup._replace(optimizer=adam)).check("overfit")
    assert default.measured == pytest.approx(explicit.measured, rel=1e-4, abs=1e-6), (
        default,
        explicit,
    )
