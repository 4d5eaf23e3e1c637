"""``torchscope run``: an unmodified script under the gradient monitor, run as python runs it
(argv, __main__, exit status), its report at every kind of exit, and nothing left behind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from torchscope.cli.main import main

LOOP = """
import sys
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
x = torch.randn(64, 10)
y = x[:, :3].argmax(dim=1)


class Net(nn.Module):
    def __init__(self, detach=False):
        super().__init__()
        self.a, self.b, self.detach = nn.Linear(10, 32), nn.Linear(32, 3), detach

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h.detach() if self.detach else h)


def train(model, steps=15):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
"""


def _script(tmp_path: Path, body: str, name: str = "train.py") -> str:
    path = tmp_path / name
    path.write_text(LOOP + textwrap.dedent(body))
    return str(path)


def test_a_clean_script_runs_as_python_runs_it(tmp_path, capsys):
    path = _script(
        tmp_path,
        """
        train(Net())
        print("argv", sys.argv[1:], "name", __name__, "path0", sys.path[0])
        """,
    )
    before = torch.optim.Optimizer.__init__
    # what follows the script is the script's, run's own option names included
    assert main(["run", path, "--epochs", "1", "--report", "-x"]) == 0
    out, err = capsys.readouterr()
    assert f"argv ['--epochs', '1', '--report', '-x'] name __main__ path0 {tmp_path}" in out
    assert "gradient report for Net (stepped by SGD)" in err
    assert "healthy" in err
    assert torch.optim.Optimizer.__init__ is before  # the wrapper is gone


def test_a_planted_bug_is_reported_and_fail_on_sets_the_status(tmp_path, capsys):
    path = _script(tmp_path, "train(Net(detach=True))\n")
    report = tmp_path / "report.json"
    assert main(["run", "--fail-on", "error", "--report", str(report), path]) == 1
    err = capsys.readouterr().err
    assert "no_grad" in err and "a.weight" in err
    document = json.loads(report.read_text())
    assert document["exit_code"] == 0 and document["models"][0]["model"] == "Net"
    kinds = {f["kind"] for f in document["models"][0]["report"]["findings"]}
    assert kinds == {"no_grad"}
    assert main(["run", path]) == 0  # without --fail-on, the script's own status


@pytest.mark.parametrize(
    ("ending", "status", "shown"),
    [
        ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
        ("sys.exit(3)", 3, ""),
        ("sys.exit('bad data')", 1, "bad data"),
        ("raise KeyboardInterrupt", 130, "KeyboardInterrupt"),
    ],
    ids=["exception", "exit-3", "exit-message", "ctrl-c"],
)
def test_the_report_is_printed_however_the_script_ends(tmp_path, capsys, ending, status, shown):
    path = _script(tmp_path, f"train(Net(detach=True))\n{ending}\n")
    assert main(["run", path]) == status
    err = capsys.readouterr().err
    assert shown in err
    assert "no_grad" in err  # the report, after the traceback


def test_two_models_and_two_optimizers_get_two_reports(tmp_path, capsys):
    path = _script(
        tmp_path,
        """
        generator, critic = Net(), Net(detach=True)
        g_opt = torch.optim.Adam(generator.parameters(), lr=1e-3)
        d_opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
        for _ in range(10):
            for net, opt in ((generator, g_opt), (critic, d_opt)):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
        """,
    )
    assert main(["run", path]) == 0
    err = capsys.readouterr().err
    assert err.count("gradient report for Net (stepped by Adam)") == 2
    assert err.count("no_grad") >= 1


def test_a_script_without_optimizer_says_so(tmp_path, capsys):
    path = tmp_path / "plain.py"
    path.write_text("print('no training here')\n")
    assert main(["run", str(path)]) == 0
    assert "created no optimizer: nothing was monitored" in capsys.readouterr().err


def test_a_module_runs_with_dash_m(tmp_path, capsys, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(LOOP + "train(Net())\nprint('args', sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", "-m", "mypkg.train", "--lr", "3"]) == 0
    out, err = capsys.readouterr()
    assert "args ['--lr', '3']" in out and "healthy" in err


def test_dash_m_finds_modules_from_the_working_directory_as_python_does(
    tmp_path, capsys, monkeypatch
):
    package = tmp_path / "scripts" / "nested"
    package.mkdir(parents=True)  # a namespace package: no __init__.py
    (package / "train.py").write_text(LOOP + "train(Net())\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-m", "scripts.nested.train"]) == 0
    assert "healthy" in capsys.readouterr().err


def test_tensorboard_gets_the_report(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = _script(tmp_path, "train(Net(detach=True))\n")
    assert main(["run", "--tensorboard", str(tmp_path / "tb"), path]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "Net"))
    events.Reload()
    assert events.Tags()["scalars"] or events.Tags()["tensors"]


def test_bad_usage_is_one_line(tmp_path, capsys):
    assert main(["run"]) == 2
    assert "no script to run" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.py")]) == 2
    assert "no such script" in capsys.readouterr().err


def test_python_dash_m_torchscope_run_keeps_the_scripts_exit_status(tmp_path):
    import subprocess
    import sys

    path = _script(tmp_path, "train(Net(), steps=3)\nsys.exit(4)\n")
    done = subprocess.run(
        [sys.executable, "-m", "torchscope", "run", path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 4, done.stderr
    assert "gradient report for Net" in done.stderr


DDP = """
import sys
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

dist.init_process_group("gloo")
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(10, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).detach())  # a gets no gradient


model = nn.parallel.DistributedDataParallel(Net(), find_unused_parameters=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(32, 10, generator=torch.Generator().manual_seed(dist.get_rank()))
for _ in range(6):
    optimizer.zero_grad()
    F.cross_entropy(model(x), x[:, :3].argmax(dim=1)).backward()
    optimizer.step()
dist.destroy_process_group()
"""


def test_under_torchrun_every_rank_monitors_and_rank_0_prints_the_merged_report(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "train_ddp.py"
    path.write_text(DDP)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, "--nproc_per_node=2", "-m", "torchscope", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the script destroys its process group at the end: the reports are taken (and
    # gathered) just before, so one merged report is printed, by rank 0
    assert done.stderr.count("gradient report for Net (stepped by SGD)") == 1, done.stderr
    text = " ".join(done.stderr.split())  # the table wraps its messages
    assert "no_grad" in text and "seen on every rank" in text


def test_max_copy_bytes_reaches_the_monitor_and_a_bad_size_is_one_line(tmp_path, capsys):
    path = _script(tmp_path, "train(Net())\n")
    report = tmp_path / "report.json"

    def ratios(*options: str) -> list[float | None]:
        assert main(["run", *options, "--report", str(report), path]) == 0
        document = json.loads(report.read_text())
        params = document["models"][0]["report"]["parameters"]
        return [r for p in params for r in p["update_ratio"]]

    whole = ratios()
    assert whole and all(r is not None and r > 0 for r in whole)
    assert all(r is None for r in ratios("--max-copy-bytes", "0"))  # no copy: not measured
    assert ratios("--max-copy-bytes=1G") == whole  # the budget holds the whole copy
    sampled = ratios("--max-copy-bytes", "1K")  # a.weight (320 floats): a sample
    assert sampled != whole and all(r is not None and r > 0 for r in sampled)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--max-copy-bytes", "lots", path])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'lots' is not a size" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1000", 1000),
        ("1000B", 1000),
        ("512K", 512 * 2**10),
        ("64MB", 64 * 2**20),
        ("64mib", 64 * 2**20),
        (" 2GiB ", 2 * 2**30),
    ],
)
def test_sizes_read_in_binary_units(text, size):
    from torchscope.cli.run import byte_size

    assert byte_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5G", "-1", "1T", "1e9", "1i", "1iB", "\u0661\u0662"])
def test_what_is_not_a_size_is_refused(text):
    import argparse

    from torchscope.cli.run import byte_size

    with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
        byte_size(text)
