"""MACs and memory: torchscope against torchinfo, PyTorch's FlopCounterMode and fvcore.

Run: ``python benchmarks/bench_costs.py`` (or ``make bench``; ``--quick`` for fewer models).
References: torchvision's published operation counts (``weights.meta["_ops"]``, in GMACs)
for the CNNs and ViT, the analytic formula for the recurrent layers, and the profiler's
measured peak of live tensor bytes for memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchinfo
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torchscope
from benchmarks._common import ms, quietly, table
from torchscope.collect.memory import measure_step_peak

VISION = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v3_large": torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "efficientnet_b0": torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,
    "densenet121": torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
    "vit_b_16": torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1,
}
QUICK = ("resnet18", "vit_b_16")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    try:
        value = quietly(fn)
    except Exception as e:  # a peer that cannot handle the model: report, do not stop
        value = f"fails ({type(e).__name__})"
    return value, time.perf_counter() - start


def flop_counter_macs(model: nn.Module, args: tuple[Any, ...], *, grad: bool = False) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(grad):
        model(*args)
    return counter.get_total_flops() // 2  # it reports 2 FLOPs per MAC


def fvcore_macs(model: nn.Module, args: tuple[Any, ...]) -> int:
    from fvcore.nn import FlopCountAnalysis  # optional peer

    analysis = FlopCountAnalysis(model, args)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return int(analysis.total())  # fvcore counts one "flop" per multiply-accumulate


def cell(value: Any, reference: float, seconds: float) -> str:
    if isinstance(value, str):
        return value
    error = (value - reference) / reference * 100
    return f"{value / 1e9:.3f} G ({error:+.1f}%, {ms(seconds)} ms)"


class Recurrent(nn.Module):
    def __init__(self, cell_type: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell_type(input_size=256, hidden_size=512, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def rnn_reference(gates: int, steps: int = 100, batch: int = 8) -> int:
    return steps * batch * gates * 512 * ((256 + 512) + (512 + 512))


def macs_table(names: tuple[str, ...]) -> list[list[str]]:
    rows = []
    cases: list[tuple[str, Callable[[], nn.Module], tuple[Any, ...], float]] = [
        (
            name,
            getattr(torchvision.models, name),
            (torch.randn(1, 3, 224, 224),),
            VISION[name].meta["_ops"] * 1e9,
        )
        for name in names
    ]
    cases += [
        (
            "lstm (2 layers)",
            lambda: Recurrent(nn.LSTM),
            (torch.randn(8, 100, 256),),
            rnn_reference(4),
        ),
        (
            "gru (2 layers)",
            lambda: Recurrent(nn.GRU),
            (torch.randn(8, 100, 256),),
            rnn_reference(3),
        ),
    ]
    has_fvcore = importlib.util.find_spec("fvcore") is not None
    for name, build, args, reference in cases:
        model = build().eval()
        ours, t_ours = timed(lambda m=model, a=args: torchscope.summary(m, a).total_macs)
        info, t_info = timed(
            lambda m=model, a=args: (
                torchinfo.summary(m, input_data=list(a), verbose=0).total_mult_adds
            )
        )
        flop, t_flop = timed(lambda m=model, a=args: flop_counter_macs(m, a))
        fv, t_fv = (
            timed(lambda m=model, a=args: fvcore_macs(m, a))
            if has_fvcore
            else ("not installed", 0.0)
        )
        rows.append(
            [
                name,
                f"{reference / 1e9:.3f} G",
                cell(ours, reference, t_ours),
                cell(info, reference, t_info),
                cell(flop, reference, t_flop),
                cell(fv, reference, t_fv),
            ]
        )
    return rows


def torchvision_sweep() -> tuple[list[list[str]], str]:
    """Every torchvision classification model at its native resolution, on meta where it builds."""
    rows: list[list[str]] = []
    within = total = 0
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = next(iter(torchvision.models.get_model_weights(name)))
        size = weights.transforms().crop_size[0]
        options: dict[str, Any] = (
            {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
        )
        if name.startswith("vit_"):
            options["image_size"] = size  # the published count is for the weights' resolution
        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, **options)
            where = "meta"
        except Exception:  # a few constructors compute with tensor values (regnet)
            if weights.meta["_ops"] > 5:
                rows.append(
                    [
                        name,
                        f"{weights.meta['_ops']:.3f} G",
                        "not run (no meta build, too big for CPU here)",
                        "",
                    ]
                )
                continue
            model = torchvision.models.get_model(name, **options)
            where = "cpu"
        try:
            result = quietly(
                lambda m=model, s=size: torchscope.summary(m, input_size=(1, 3, s, s), depth=0)
            )
        except Exception as e:
            rows.append(
                [
                    name,
                    f"{weights.meta['_ops']:.3f} G",
                    f"fails on {where} ({type(e).__name__})",
                    "",
                ]
            )
            continue
        published = weights.meta["_ops"] * 1e9
        error = (result.total_macs - published) / published
        total += 1
        # the published figures are rounded to 0.001 G: that, or 0.5%, whichever is larger
        close = abs(result.total_macs - published) <= max(0.005 * published, 0.5e6)
        within += close
        if not close or result.uncounted_ops:
            rows.append(
                [
                    name,
                    f"{published / 1e9:.3f} G",
                    f"{result.total_macs / 1e9:.3f} G ({error * 100:+.2f}%)",
                    str(result.uncounted_ops),
                ]
            )
    skipped = sum(1 for row in rows if row[2].startswith("not run"))
    return rows, (
        f"{within} of {total} models run match torchvision's published count (within 0.5%, or the "
        f"0.001 G rounding of the published figure); {skipped} not run"
    )


def consistency_table() -> list[list[str]]:
    """The same model counted on three execution paths: fused eval kernels, autograd, meta."""
    rows = []
    builders: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        "TransformerEncoder (2 layers, d=256)": (
            lambda: nn.TransformerEncoder(
                nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True), 2
            ),
            (4, 64, 256),
        ),
        "LSTM (2 layers, 256->512)": (lambda: Recurrent(nn.LSTM), (8, 100, 256)),
    }
    for name, (build, shape) in builders.items():
        model = build().eval()
        x = torch.randn(*shape)
        with torch.device("meta"):
            on_meta = build().eval()
        meta_x = torch.empty(*shape, device="meta")
        ours = [
            torchscope.summary(model, x).total_macs,
            torchscope.summary(model, x, mode="train").total_macs,
            torchscope.summary(on_meta, meta_x).total_macs,
        ]
        theirs = [
            quietly(lambda m=model, x=x: flop_counter_macs(m, (x,))),
            quietly(lambda m=model, x=x: flop_counter_macs(m.train(), (x,), grad=True)),
            quietly(lambda m=on_meta, x=meta_x: flop_counter_macs(m, (x,))),
        ]
        model.eval()
        rows.append([name, "torchscope", *(f"{v / 1e9:.3f} G" for v in ours)])
        rows.append([name, "FlopCounterMode", *(f"{v / 1e9:.3f} G" for v in theirs)])
    return rows


def depthwise_table() -> list[list[str]]:
    model = nn.Sequential(nn.Conv2d(256, 256, 1), nn.Conv2d(256, 256, 3, padding=1, groups=256))
    x = torch.randn(8, 256, 56, 56)
    ours = torchscope.summary(model, x, mode="train")
    forward_dw = next(layer.macs for layer in ours.layers if layer.name == "1")
    pointwise = next(layer.macs for layer in ours.layers if layer.name == "0")
    expected_backward = (
        2 * forward_dw + pointwise
    )  # input and weight grads; the first conv needs no input grad
    counter = FlopCounterMode(display=False)
    out = model(x)
    with counter:
        out.sum().backward()
    theirs = counter.get_total_flops() // 2
    return [
        ["expected (analytic)", f"{expected_backward / 1e9:.3f} G", "1.00x"],
        [
            "torchscope",
            f"{ours.backward_macs / 1e9:.3f} G",
            f"{ours.backward_macs / expected_backward:.2f}x",
        ],
        ["FlopCounterMode", f"{theirs / 1e9:.3f} G", f"{theirs / expected_backward:.2f}x"],
    ]


def memory_table(quick: bool) -> list[list[str]]:
    rows = []
    cases = [("resnet18", 1), ("resnet18", 8), ("resnet50", 1), ("resnet50", 8), ("small ViT", 8)]
    if quick:
        cases = cases[:2]
    for name, batch in cases:
        if name == "small ViT":
            model = torchvision.models.VisionTransformer(
                image_size=64, patch_size=8, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256
            )
            x = torch.randn(batch, 3, 64, 64)
        else:
            model = getattr(torchvision.models, name)()
            x = torch.randn(batch, 3, *(224, 224))
        estimate, t_est = timed(lambda m=model, x=x: torchscope.estimate_memory(m, x))
        info = quietly(lambda m=model, x=x: torchinfo.summary(m, input_data=x, verbose=0))
        info_total = info.total_input + info.total_output_bytes + info.total_param_bytes
        for train in (False, True):
            real = measure_step_peak(model, x, train=train)
            ours = estimate.training_peak if train else estimate.inference_peak
            rows.append(
                [
                    f"{name} batch {batch} ({'training step' if train else 'inference'})",
                    f"{real / 1e6:,.1f} MB",
                    f"{ours / 1e6:,.1f} MB ({(ours - real) / real * 100:+.1f}%, {ms(t_est)} ms)",
                    f"{info_total / 1e6:,.1f} MB ({(info_total - real) / real * 100:+.1f}%)",
                ]
            )
    return rows


BIG_MODEL_SCRIPT = """
import time, torch, torchscope, torchscope.collect.summary, torchscope.collect.memory
from torchscope.models import DecoderOnly

def status(key):  # kB, from the kernel's view of this process
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

rss = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current resident size
start = time.perf_counter()
with torch.device("meta"):
    model = DecoderOnly()
result = torchscope.summary(model, input_size=(1, 2048), dtypes=torch.long, depth=1, memory=True, optimizer="adamw")
elapsed = time.perf_counter() - start
extra = (status("VmHWM:") - rss) / 1024
print(result.total_params, result.total_macs, result.memory.training_peak, f"{elapsed:.2f}", f"{extra:.0f}")
"""


def big_model() -> list[list[str]]:
    """A 6.7 B-parameter decoder on meta, in a fresh process so that its resident memory is its own."""
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", BIG_MODEL_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    params, macs, peak, seconds, extra = done.stdout.split()
    return [
        [
            "DecoderOnly (Llama-7B shape), 2048 tokens, on meta",
            f"{int(params) / 1e9:.2f} B",
            f"{int(macs) / 1e12:.2f} T",
            f"{int(peak) / 1e9:.1f} GB",
            f"{seconds} s",
            f"{extra} MB",
        ]
    ]


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer models")
    args = parser.parse_args(argv)
    print(f"# Costs (torch {torch.__version__}, torchinfo {torchinfo.__version__})\n")
    print(
        "## Forward MACs at batch 1 (224x224 images; recurrent: 8 x 100 steps); value (error, time)\n"
    )
    print(
        table(
            ["model", "reference", "torchscope", "torchinfo", "FlopCounterMode", "fvcore"],
            macs_table(QUICK if args.quick else tuple(VISION)),
        )
    )
    if not args.quick:
        sweep_rows, sweep_line = torchvision_sweep()
        print("\n## Every torchvision classification model at its native resolution\n")
        print(sweep_line)
        if sweep_rows:
            print(table(["model", "published", "torchscope", "uncounted ops"], sweep_rows))
    print("\n## The same model on three paths: CPU eval (fused kernels), CPU with autograd, meta\n")
    print(table(["model", "tool", "CPU eval", "CPU train (grad)", "meta"], consistency_table()))
    print("\n## Backward MACs of pointwise + depthwise 3x3 convolution (8 x 256 x 56 x 56)\n")
    print(table(["counted by", "backward MACs", "vs expected"], depthwise_table()))
    print("\n## Peak memory: estimate vs the profiler's measured peak of live tensor bytes\n")
    print(
        table(
            ["case", "measured", "torchscope estimate", "torchinfo 'estimated total size'"],
            memory_table(args.quick),
        )
    )
    print("\n## A 7 B model on meta: summary with MACs and memory\n")
    big = big_model()
    print(
        table(
            ["model", "params", "forward MACs", "training peak (AdamW)", "time", "extra RSS"], big
        )
    )
    return {"7B summary on meta: time / extra RSS": f"{big[0][4]} / {big[0][5]}"}


if __name__ == "__main__":
    main()
