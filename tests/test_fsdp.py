"""FSDP2 (``fully_shard``) on 2 CPU processes (gloo), started by torchrun: the gradient
monitor's statistics are those of the unsharded model (checked against the full tensors that
the job all-gathers itself), its findings are named as in one process, and freezing holds.

The scenarios live in tests/fsdp_jobs.py and run once, in one torchrun job.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, f"--nproc_per_node={WORLD}", "-m", "tests.fsdp_jobs", str(folder)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_every_scenario_ran_on_every_rank(ranks):
    for rank in ranks:
        assert rank["world"] == WORLD
        errors = {k: v["error"] for k, v in rank.items() if isinstance(v, dict) and "error" in v}
        assert not errors


def test_statistics_are_those_of_the_whole_tensors(ranks):
    # each rank measured its shards; the report combines them: L1 adds, L2 adds in squares,
    # max-abs is the max. The oracle is the full tensor, all-gathered by the job. head has 3
    # rows on 2 ranks (2 and 1), its bias 3 values: uneven shards
    healthy = ranks[0]["healthy"]
    history = {p["name"]: p for p in healthy["report"]["parameters"]}
    assert set(history) == set(healthy["oracle"])
    for name, steps in healthy["oracle"].items():
        h = history[name]
        numel = math.prod(h["shape"])
        assert len(h["grad_norm"]) == len(steps) == 12
        for k, (l1, l2, top, ratio) in enumerate(steps):
            assert h["grad_norm"][k] == pytest.approx(l2, rel=1e-5), (name, k)
            assert h["grad_max_abs"][k] == pytest.approx(top, rel=1e-6), (name, k)
            assert h["grad_mean_abs"][k] * numel == pytest.approx(l1, rel=1e-5), (name, k)
            assert h["update_ratio"][k] == pytest.approx(ratio, rel=1e-4), (name, k)


def test_a_sample_of_each_shard_stands_for_the_whole_parameter(ranks):
    # max_copy_bytes is each rank's, for its shards; the sampled shards' changes, scaled,
    # combine into the whole parameter's
    for rank in ranks:
        run = rank["sampled"]
        assert run["held"] < run["local"] / 4
        assert "b.weight" in run["sampled"]
        assert not run["report"]["findings"]
    assert ranks[0]["sampled"]["report"] == ranks[1]["sampled"]["report"]
    history = {p["name"]: p for p in ranks[0]["sampled"]["report"]["parameters"]}
    sampled = set(ranks[0]["sampled"]["sampled"]) | set(ranks[1]["sampled"]["sampled"])
    for name, truth in ranks[0]["sampled"]["oracle"].items():
        for estimate, exact in zip(history[name]["update_ratio"], truth, strict=True):
            if name in sampled:
                assert exact / 1.5 < estimate < exact * 1.5, name
            else:
                assert estimate == pytest.approx(exact, rel=1e-4), name


def test_a_healthy_sharded_loop_gets_no_finding_and_the_ranks_agree(ranks):
    assert not ranks[0]["healthy"]["report"]["findings"]
    assert ranks[0]["healthy"]["report"] == ranks[1]["healthy"]["report"]


#: scenario of tests/fsdp_jobs.py -> the (kind, place) it must be named by; None: correct code
EXPECTED: dict[str, tuple[str, str] | None] = {
    "detached": ("no_grad", "a.weight"),
    "frozen_but_moving": ("frozen_but_updated", "a.weight"),
    "never_zeroed": ("grad_accumulation", "a.weight"),
    "zeroed_in_place": None,
    "softmax_into_cross_entropy": ("softmax_into_cross_entropy", "cross_entropy"),
    "learning_rate_zero": ("not_updated", "head.weight"),
    "learning_rate_far_too_small": ("tiny_updates", "optimizer"),
    "learning_rate_fine": None,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_findings_are_those_of_the_same_loop_in_one_process(ranks, name):
    # each rank also ran the scenario unsharded, alone: the sharded report (gathered) must
    # name the same (kind, place) pairs, and the bug by its cause
    for rank in ranks:
        seen = rank["bugs"][name]
        assert seen["sharded"] == seen["single"], name
        pairs = {(kind, where) for _, kind, where in seen["sharded"]}
        if EXPECTED[name] is None:
            assert not pairs, pairs
        else:
            assert EXPECTED[name] in pairs, pairs


@pytest.mark.parametrize("case", ["sgd_unit", "adamw_mixed"])
def test_freezing_holds_the_frozen_shards_and_unfreeze_releases_them(ranks, case):
    # sgd_unit: a whole FSDP2 unit frozen under SGD with momentum and weight decay;
    # adamw_mixed: a frozen inside the root's unit, whose other parameters train, under AdamW
    for rank in ranks:
        seen = rank["freezing"][case]
        assert seen["frozen"] == seen["unfrozen"] == ("a.weight", "a.bias")
        assert seen["unchanged"] == ["a.bias", "a.weight"]  # bit-identical shards over 3 steps
        assert set(seen["moved_after_unfreeze"]) >= {"a.weight", "a.bias", "b.weight"}
        assert seen["trainable"] == (16 * 16 + 16 + 16 * 3 + 3, 8 * 16 + 16)  # global counts


def test_check_gradients_runs_on_the_sharded_model_and_puts_everything_back(ranks):
    for rank in ranks:
        seen = rank["one_shot_check"]
        assert seen["healthy"]["findings"] == []
        assert seen["detached"]["findings"] == [
            ("error", "no_grad", "a.bias"),
            ("error", "no_grad", "a.weight"),
        ]
        for case in seen.values():
            assert case["steps"] == 3
            assert case["values_kept"] and case["grads_kept"] and case["momentum_kept"]
            assert case["rng_kept"] and case["training"]


def test_fit_trains_a_sharded_model_and_resumes_it_bit_exactly(ranks):
    # 2 epochs straight against 1 epoch, then a new model resumed for the 2nd from the
    # sharded checkpoint (torch.distributed.checkpoint): the same shards and momentum
    for rank in ranks:
        seen = rank["fit_and_resume"]
        assert seen["same_weights"] and seen["same_momentum"]
        assert seen["resumed_from"] == 1
        assert seen["findings"] == []
        straight, resumed = seen["losses"]
        assert straight == resumed and straight[1] < straight[0]
        assert seen["files"] == ["last-rank0.pt", "last-rank1.pt", "last-sharded"]


def test_plain_dtensor_parameters_tensor_parallel(ranks):
    # parallelize_module (ColwiseParallel, then RowwiseParallel with a replicated bias):
    # DTensor parameters whose gradients ordinary autograd accumulates. The figures are the
    # full tensors' (a replicated bias is not counted twice), and bugs are named as usual
    for rank in ranks:
        seen = rank["tensor_parallel"]
        assert seen["healthy"]["findings"] == seen["zeroed_in_place"]["findings"] == []
        for name, norms in seen["healthy"]["norms"].items():
            expected = [step[name] for step in seen["healthy"]["oracle"]]
            assert norms == pytest.approx(expected, rel=1e-5), name
        assert seen["detached"]["findings"] == [
            ("error", "no_grad", "a.bias"),
            ("error", "no_grad", "a.weight"),
        ]
        assert [kind for _, kind, _ in seen["never_zeroed"]["findings"]] == ["grad_accumulation"]
