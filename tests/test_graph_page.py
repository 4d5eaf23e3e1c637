"""The interactive graph page in a real browser: headless Chromium (installed by
``scripts/ensure-chromium``, which ``make test`` runs) opens the page from a file and the
test reads the DOM after the page's script ran.

A probe script put in a copy of the page, ahead of the page's own, records uncaught errors
and ``console.error`` calls, counts the canvas pixels that are not background once the page
has loaded, presses "expand all" and "reset", and counts the resources the page fetched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import torchscope
from torchscope.records import Graph
from torchscope.records.graph_views import view
from torchscope.render.graph_html import graph_to_html

from .test_render_layout import encoder, hostile, random_dag

PROBE = """<script>
"use strict";
window.probeErrors = [];
window.addEventListener("error", (event) => window.probeErrors.push(String(event.message)));
const consoleError = console.error;
console.error = (...args) => {
  window.probeErrors.push(args.join(" "));
  consoleError(...args);
};
window.addEventListener("load", () => setTimeout(() => {
  const canvas = document.getElementById("canvas");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let k = 0; k < pixels.length; k += 4) {
    const opaque = pixels[k + 3] > 0;
    if (opaque && (pixels[k] < 250 || pixels[k + 1] < 250 || pixels[k + 2] < 250)) ink++;
  }
  const view = document.getElementById("view");
  const shown = () => document.getElementById("shown").textContent;
  const report = { ink, initial: shown(), nodes: Number(view.dataset.nodes),
                   edges: Number(view.dataset.edges) };
  document.getElementById("expand").click();
  report.expanded = shown();
  document.getElementById("reset").click();
  report.reset = shown();
  report.resources = performance.getEntriesByType("resource").map((entry) => entry.name);
  report.errors = window.probeErrors;
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
}, 0));
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium on PATH: the graph page's browser test needs it; run "
        "./scripts/ensure-chromium (make test does) or: sudo apt-get install chromium"
    )


def open_page(html: str, tmp_path: Path) -> tuple[dict, str]:
    """The probe's report and the browser's log, for ``html`` opened from a file."""
    page = tmp_path / "page.html"
    page.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # anything the page tried to fetch from a host would fail, and be counted
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,900",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LANG": "C.UTF-8"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found is not None, done.stderr[-3000:]
    report = json.loads(
        found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    )
    return report, done.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3))
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def real_graph() -> Graph:
    torch.manual_seed(0)
    return torchscope.autograd_graph_of(Net(), torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    ("make", "depth"),
    [
        (encoder, 2),
        (hostile, 1),
        (lambda: random_dag(120, 260, seed=5, clusters=True), None),
        (real_graph, 1),
    ],
)
def test_page_draws_in_a_browser_without_errors_or_fetches(tmp_path, make, depth):
    graph = make()
    html = graph_to_html(graph, depth=depth)
    # self-contained: no address the browser could fetch (the SVG namespace is none either)
    assert not re.findall(r"https?://", html)
    report, log = open_page(html, tmp_path)
    assert report["errors"] == []
    assert console_errors(log) == []
    assert report["resources"] == []
    start = view(graph, depth=depth)
    assert report["nodes"] == len(start.nodes)
    assert report["initial"].startswith(f"showing {len(start.nodes):,} nodes")
    assert report["edges"] > 0
    assert report["ink"] > 1000  # boxes, edges and text drawn on the canvas
    assert report["expanded"] == f"showing {len(view(graph).nodes):,} nodes"
    assert report["reset"] == report["initial"]


def test_the_probe_sees_a_broken_page(tmp_path):
    # the check above is only worth something if an error in the page shows in the report
    html = graph_to_html(encoder()).replace("compose(collapsed)", "compose(undefinedName)")
    report, log = open_page(html, tmp_path)
    assert any("undefinedName" in error for error in report["errors"])
    assert any("undefinedName" in line for line in console_errors(log))
    assert report["ink"] < 1000
