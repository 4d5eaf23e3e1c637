"""torchscope.summary against torchinfo.summary: speed, scaling with nesting, correctness, side effects.

Run: ``python benchmarks/bench_summary.py`` (or ``make bench``). ``--quick`` uses fewer models
and repetitions; ``--zoo`` runs only the real-world zoo section (``tests/real_zoo.py``: time,
MACs against the FlopCounterMode oracle, memory estimate against measured peaks); run it from
the repository root as ``python -m benchmarks.bench_summary --zoo``. Every number is measured
in this run, on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchinfo
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import interleaved_medians, median_seconds, ms, ratio, table
from torchscope.collect.memory import measure_peak_bytes

SPEED_MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "densenet121", "vit_b_16")
QUICK_MODELS = ("resnet18", "mobilenet_v3_small")


def _torchinfo(model: nn.Module, **kwargs: object) -> torchinfo.ModelStatistics:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchinfo.summary(model, verbose=0, **kwargs)


def speed(models: tuple[str, ...], repeat: int) -> tuple[list[list[str]], list[float]]:
    rows, ratios = [], []
    for name in models:
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(1, 3, 224, 224)

        def plain(model: nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        forward, ours, theirs = interleaved_medians(
            [
                plain,
                lambda m=model, x=x: torchscope.summary(m, x),
                lambda m=model, x=x: _torchinfo(m, input_data=x),
            ],
            repeat=repeat,
        )
        ratios.append(ours / forward)
        rows.append(
            [
                name,
                ms(forward),
                ms(ours),
                ms(theirs),
                ratio(ours, forward),
                ratio(theirs, forward),
                ratio(theirs, ours),
            ]
        )
    return rows, ratios


def nested_chain(levels: int) -> nn.Module:
    model: nn.Module = nn.Linear(4, 4)
    for _ in range(levels):
        model = nn.Sequential(model)
    return model


def nesting(budget_s: float) -> list[list[str]]:
    """Time grows linearly with nesting for torchscope; torchinfo doubles per level."""
    rows = []
    last_theirs: tuple[int, float] | None = None  # (levels, seconds) of torchinfo's last run
    for levels in (5, 10, 15, 20, 50, 100, 200):
        model = nested_chain(levels)
        ours = median_seconds(lambda m=model: torchscope.summary(m, input_size=(1, 4)), repeat=5)
        # torchinfo's time doubles with each level: run it only where the projection fits the budget
        projected = (
            0.0 if last_theirs is None else last_theirs[1] * 2.0 ** (levels - last_theirs[0])
        )
        if projected < budget_s:
            start = time.perf_counter()
            _torchinfo(model, input_size=(1, 4))
            last_theirs = (levels, time.perf_counter() - start)
            theirs_text = ms(last_theirs[1])
        else:
            theirs_text = f"not run (projected {projected:.1e} s)"
        rows.append([str(levels), ms(ours), theirs_text])
    return rows


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 64)
        self.body = nn.Linear(64, 64)
        self.decoder = nn.Linear(64, 1000, bias=False)
        self.decoder.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.body(self.embed(tokens)))


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.frozen_bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.frozen_bn(self.bn(self.conv(x))))


def correctness() -> list[list[str]]:
    rows = []
    tied = TiedLM()
    truth = sum(p.numel() for p in tied.parameters())
    tokens = torch.zeros(2, 5, dtype=torch.long)
    rows.append(
        [
            "tied embedding/decoder: total params",
            f"{truth:,}",
            f"{torchscope.summary(tied, tokens).total_params:,}",
            f"{_torchinfo(tied, input_data=tokens).total_params:,}",
        ]
    )

    vit = torchvision.models.vit_b_16()
    truth = sum(p.numel() for p in vit.parameters())
    ours = torchscope.summary(vit, input_size=(1, 3, 224, 224)).total_params
    rows.append(
        [
            "vit_b_16: total params",
            f"{truth:,}",
            f"{ours:,}",
            f"{_torchinfo(vit, input_size=(1, 3, 224, 224)).total_params:,}",
        ]
    )
    return rows


def _bn_model() -> BatchNormNet:
    model = BatchNormNet()
    model.frozen_bn.eval()  # deliberately frozen, as fine-tuning recipes do
    return model


def side_effects() -> list[list[str]]:
    """What each tool leaves changed in the model and the process."""

    def check(run: Callable[[nn.Module], object]) -> dict[str, str]:
        model = _bn_model()
        stats = copy.deepcopy(model.state_dict())
        torch.manual_seed(0)
        rng = torch.random.get_rng_state()
        run(model)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, stats[k])]
        return {
            "state_dict after mode='train'": "unchanged"
            if not changed
            else "changed: " + ", ".join(changed),
            "frozen BatchNorm stays in eval": "yes"
            if not model.frozen_bn.training
            else "no (un-frozen)",
            "global RNG consumed": "yes"
            if not torch.equal(rng, torch.random.get_rng_state())
            else "no",
        }

    ours = check(lambda m: torchscope.summary(m, input_size=(4, 3, 8, 8), mode="train"))
    theirs = check(lambda m: _torchinfo(m, input_size=(4, 3, 8, 8), mode="train"))
    rows = [[key, ours[key], theirs[key]] for key in ours]

    model = _bn_model()
    try:
        torchscope.summary(model, input_size=(1, 3, 8, 8), device="meta")
        ours_device = f"ran; model on {next(model.parameters()).device}"
    except ValueError:
        ours_device = f"refused (ValueError); model on {next(model.parameters()).device}"
    model = _bn_model()
    _torchinfo(model, input_size=(1, 3, 8, 8), device="meta")
    rows.append(
        [
            "device='meta' on a CPU model",
            ours_device,
            f"model moved to {next(model.parameters()).device} (weights lost)",
        ]
    )
    return rows


# ---------------------------------------------------------------------------------------------
# the real-world zoo of tests/real_zoo.py


def _zoo_summary(model: nn.Module, call: Any, **options: Any) -> torchscope.ModelSummary:
    """``torchscope.summary`` on a zoo entry's call, as tests/test_real_zoo.py ``_summary``."""
    if call.args:
        return torchscope.summary(
            model, input=call.args, forward_kwargs=dict(call.kwargs) or None, **options
        )
    return torchscope.summary(model, input=dict(call.kwargs), **options)


def _zoo_torchinfo(model: nn.Module, call: Any) -> torchinfo.ModelStatistics:
    if call.args:
        return _torchinfo(model, input_data=list(call.args), **dict(call.kwargs))
    return _torchinfo(model, input_data=dict(call.kwargs))


def _signed(estimate: float, truth: float) -> str:
    return f"{(estimate / truth - 1) * 100:+.1f}%"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


def _fails(error: BaseException) -> str:
    return f"fails ({type(error).__name__})"


@contextlib.contextmanager
def _quiet_fd2() -> Any:
    """File descriptor 2 sent to /dev/null: the profiler's C++ start/stop lines and the
    Hugging Face config notes the zoo's builds print, kept out of the tables."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _measured_peaks(
    model: nn.Module, call: Any, output_tensors: Callable[[Any], list[torch.Tensor]], train: bool
) -> int:
    """The real CPU peak of a no_grad eval forward, or of a train-mode forward, a sum over
    the output's floating tensors and ``backward()``; parameters, buffers and inputs count
    as existing. The output is dropped before the backward, as the estimate does (a training
    loop keeps the loss). One unmeasured warm-up run first; the model is left in eval mode."""
    inputs = output_tensors((call.args, call.kwargs))

    def step() -> None:
        if not train:
            with torch.no_grad():
                model(*call.args, **call.kwargs)
            return
        output = model(*call.args, **call.kwargs)
        roots = [t for t in output_tensors(output) if t.is_floating_point() and t.requires_grad]
        del output
        if not roots:
            raise RuntimeError("no output tensor requires grad")
        loss = roots[0].sum()
        for root in roots[1:]:
            loss = loss + root.sum()
        del roots
        loss.backward()

    model.train(train)
    try:
        torch.manual_seed(0)
        step()
        for param in model.parameters():
            param.grad = None
        torch.manual_seed(0)
        return measure_peak_bytes(step, existing=[*model.parameters(), *model.buffers(), *inputs])
    finally:
        for param in model.parameters():
            param.grad = None
        model.eval()


def zoo(repeat: int) -> tuple[list[list[str]], dict[str, str]]:
    """One row per entry of ``REAL_ZOO``: times, MACs against the oracle, memory against
    measured peaks; then the geo-means."""
    from tests.real_zoo import REAL_ZOO
    from tests.test_real_zoo import _oracle, _output_tensors

    rows: list[list[str]] = []
    vs_torchinfo: list[tuple[float, str]] = []
    memory_ratios: list[float] = []
    trained = within_10 = 0
    for entry in REAL_ZOO:
        with _quiet_fd2():
            model, call = entry.build(), entry.inputs()

        def plain(model: nn.Module = model, call: Any = call) -> None:
            with torch.no_grad():
                model(*call.args, **call.kwargs)

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _zoo_torchinfo(model, call)
            theirs_ok: BaseException | None = None
        except Exception as error:
            theirs_ok = error
        fns: list[Callable[[], object]] = [
            plain,
            lambda m=model, c=call: _zoo_summary(m, c),
        ]
        if theirs_ok is None:
            fns.append(lambda m=model, c=call: _zoo_torchinfo(m, c))
        times = interleaved_medians(fns, repeat=repeat, warmup=1)
        forward, ours = times[0], times[1]
        if theirs_ok is None:
            theirs = times[2]
            vs_torchinfo.append((ours / theirs, entry.name))
            theirs_text, vs_text = ms(theirs), ratio(ours, theirs)
        else:
            theirs_text, vs_text = _fails(theirs_ok), "n/a"

        summary = _zoo_summary(model, call)
        with _quiet_fd2():
            oracle = _oracle(entry).macs
        macs_text = _signed(summary.total_macs, oracle) if oracle else "n/a (oracle 0)"

        start = time.perf_counter()
        estimate = _zoo_summary(model, call, memory=True).memory
        with_memory = time.perf_counter() - start
        memory_ratios.append(with_memory / forward)

        if estimate is None:
            inference_text = training_text = "n/a (no estimate)"
        else:
            with _quiet_fd2():
                real = _measured_peaks(model, call, _output_tensors, train=False)
            inference_text = f"{_mb(real)} ({_signed(estimate.inference_peak, real)})"
            if estimate.training_peak is None or entry.family == "torchvision_detection":
                training_text = "n/a"
            else:
                try:
                    with _quiet_fd2():
                        real = _measured_peaks(model, call, _output_tensors, train=True)
                except Exception as error:
                    training_text = _fails(error)
                else:
                    trained += 1
                    within_10 += abs(estimate.training_peak / real - 1) <= 0.10
                    training_text = f"{_mb(real)} ({_signed(estimate.training_peak, real)})"
        rows.append(
            [
                entry.name,
                ms(forward),
                ms(ours),
                theirs_text,
                vs_text,
                ratio(ours, forward),
                macs_text,
                ms(with_memory),
                ratio(with_memory, forward),
                inference_text,
                training_text,
            ]
        )
    worst, worst_name = max(vs_torchinfo)
    figures = {
        "zoo: summary / torchinfo (geo-mean)": f"{_geomean([r for r, _ in vs_torchinfo]):.2f}x"
        f" over {len(vs_torchinfo)} models",
        "zoo: summary / torchinfo (worst)": f"{worst:.2f}x ({worst_name})",
        "zoo: summary(memory=True) / forward (geo-mean)": f"{_geomean(memory_ratios):.2f}x",
        "zoo: training peak within 10% of measured": f"{within_10} of {trained} models",
    }
    return rows, figures


ZOO_HEADERS = [
    "model",
    "forward",
    "torchscope",
    "torchinfo",
    "torchscope/torchinfo",
    "torchscope/forward",
    "MACs vs oracle",
    "memory=True (once)",
    "memory=True/forward",
    "inference peak: measured (estimate error)",
    "training peak: measured (estimate error)",
]


def zoo_section(repeat: int) -> dict[str, str]:
    print(
        "## Real-world zoo (tests/real_zoo.py): median ms of a no_grad forward, of "
        "torchscope.summary and of torchinfo.summary, timed interleaved; MACs against "
        "FlopCounterMode plus the analytic formulas of tests/test_real_zoo.py; memory "
        "estimates against peaks measured with the profiler (estimate/measured - 1)\n"
    )
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(
            f"(load average {load:.1f} on {cores} cores: other processes share the CPUs, so the "
            "times are unreliable, multi-threaded ones most; the MACs and memory are not)\n"
        )
    rows, figures = zoo(repeat)
    print(table(ZOO_HEADERS, rows))
    print()
    print(table(["figure", "value"], [[k, v] for k, v in figures.items()]))
    return figures


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer models and repetitions")
    parser.add_argument("--zoo", action="store_true", help="only the real-world zoo section")
    args = parser.parse_args(argv)
    zoo_repeat = 3  # few: memory=True, the oracle and the measured steps dominate the time
    if args.zoo:
        print(
            f"# torchscope.summary vs torchinfo {torchinfo.__version__} on the real-world zoo "
            f"(torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads)\n"
        )
        return zoo_section(zoo_repeat)
    models = QUICK_MODELS if args.quick else SPEED_MODELS
    repeat = 5 if args.quick else 11

    print(
        f"# torchscope.summary vs torchinfo {torchinfo.__version__} (torch {torch.__version__}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads)\n"
    )
    print(
        "## Speed: one summary vs one plain forward (eval, no_grad), batch 1 at 224x224, median ms\n"
    )
    rows, ratios = speed(models, repeat)
    print(
        table(
            [
                "model",
                "forward",
                "torchscope",
                "torchinfo",
                "torchscope/forward",
                "torchinfo/forward",
                "torchinfo/torchscope",
            ],
            rows,
        )
    )
    print("\n## Scaling with nesting: N nested nn.Sequential around one Linear, ms\n")
    print(
        table(["levels", "torchscope", "torchinfo"], nesting(budget_s=0.5 if args.quick else 2.0))
    )
    print("\n## Correctness\n")
    print(table(["case", "truth", "torchscope", "torchinfo"], correctness()))
    print("\n## Side effects on the model (one BatchNorm training, one deliberately frozen)\n")
    with contextlib.redirect_stdout(io.StringIO()):
        effects = side_effects()
    print(table(["check", "torchscope", "torchinfo"], effects))
    print()
    figures = zoo_section(zoo_repeat)
    return {
        "summary time / forward time (worst model)": f"{max(ratios):.2f}x",
        "summary time / forward time (best model)": f"{min(ratios):.2f}x",
        **figures,
    }


if __name__ == "__main__":
    main()
