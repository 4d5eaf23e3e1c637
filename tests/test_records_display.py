"""How records show in IPython and Jupyter: a one-line repr, the text table, an HTML table.

Everything goes through IPython's own machinery: the display formatter that a shell (terminal
or kernel) uses for the last expression of a cell, and the terminal's pretty printer.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
import torch
import torchvision
from IPython.core.interactiveshell import InteractiveShell
from IPython.lib.pretty import pretty
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from traitlets.config import Config

import torchscope
from torchscope._util.format import format_bytes
from torchscope.models import LeNet
from torchscope.records import Finding, GradientReport, GraphFold
from torchscope.training import fit


@pytest.fixture(scope="module")
def ipython(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """A real IPython shell, its history in memory and its profile in a temporary folder."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        InteractiveShell.clear_instance()
        shell = InteractiveShell.instance(config=config)
        try:
            yield shell
        finally:
            InteractiveShell.clear_instance()


def display(shell: InteractiveShell, obj: object) -> dict[str, Any]:
    """What the shell shows for ``obj`` as the last expression of a cell, by MIME type."""
    data, _metadata = shell.display_formatter.format(obj)
    return data


class Detached(nn.Module):
    """The first layer's output is detached: its parameters never get a gradient (no_grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 16)
        self.second = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)).detach())


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)


@pytest.fixture(scope="module")
def records() -> dict[str, Any]:
    """One real record of every kind that has a table, made by torchscope's own collectors."""
    torch.manual_seed(0)
    x, y = _data()
    summary = torchscope.summary(LeNet(), input_size=(1, 1, 28, 28), memory=True)
    assert summary.memory is not None
    half_frozen = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    torchscope.freeze(half_frozen[0])
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    history = fit(
        model,
        loader,
        val_loader=loader,
        loss_fn=nn.functional.cross_entropy,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        progress=False,
    )
    blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(4)])
    graph = torchscope.module_graph(blocks, torch.randn(2, 4))
    other = torchscope.module_graph(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), torch.randn(2, 4))
    return {
        "summary": summary,
        "memory": summary.memory,
        "gradients": torchscope.check_gradients(Detached(), x, y, steps=2),
        "trainable": torchscope.trainable_report(half_frozen),
        "timing": torchscope.time_layers(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU()), torch.randn(4, 8), warmup=1, repeat=3
        ),
        "measurement": torchscope.benchmark(
            torch.add, torch.ones(3), torch.ones(3), warmup=1, repeat=3, label="add"
        ),
        "history": history,
        "graph": graph,
        "graph_diff": torchscope.graph_diff(graph, other),
    }


TABLE_RECORDS = [
    "summary",
    "memory",
    "gradients",
    "trainable",
    "timing",
    "measurement",
    "history",
    "graph_diff",
]


def _headline(name: str, record: Any) -> str:
    """A number or name the one-line repr must carry for this record."""
    return {
        "summary": lambda r: f"{r.total_params:,} params",
        "memory": lambda r: format_bytes(r.training_peak),
        "gradients": lambda r: "2 errors over 2 steps",
        "trainable": lambda r: f"{r.trainable_params:,} trainable, {r.frozen_params:,} frozen",
        "timing": lambda r: f"{len(r.layers)} modules",
        "measurement": lambda r: "add: median",
        "history": lambda r: "2 epochs",
        "graph_diff": lambda r: f"{len(r.added)} added, {len(r.removed)} removed",
        "graph": lambda r: "Sequential ×4",
    }[name](record)


def _assert_one_short_line(text: str, cls: type) -> None:
    assert "\n" not in text, text
    assert text.startswith(f"<{cls.__name__}") and text.endswith(">"), text
    assert len(text) <= 160, (len(text), text)


@pytest.mark.parametrize("name", [*TABLE_RECORDS, "graph"])
def test_repr_is_one_line_with_the_headline(records: dict[str, Any], name: str) -> None:
    record = records[name]
    _assert_one_short_line(repr(record), type(record))
    assert _headline(name, record) in repr(record)


def test_gradient_report_repr_counts_findings_by_severity(records: dict[str, Any]) -> None:
    report = records["gradients"]
    assert repr(report) == "<GradientReport: 2 errors over 2 steps>"
    warning = Finding("vanishing", "warning", "fc.weight", 3, 1e-9, 1e-7, "tiny gradients")
    note = Finding("eval_mode", "info", "<model>", None, None, None, "in eval")
    mixed = dataclasses.replace(report, findings=(*report.findings, warning, note))
    assert repr(mixed) == "<GradientReport: 2 errors, 1 warning, 1 note over 2 steps>"
    healthy = dataclasses.replace(report, findings=(note,))
    assert repr(healthy) == "<GradientReport: healthy, 1 note over 2 steps>"
    backward_only = dataclasses.replace(
        report, findings=(), step_unit="backward pass", backward_passes=1
    )
    assert repr(backward_only) == "<GradientReport: healthy over 1 backward pass>"


@pytest.mark.parametrize("name", TABLE_RECORDS)
def test_ipython_shows_the_text_table(
    ipython: InteractiveShell, records: dict[str, Any], name: str
) -> None:
    record = records[name]
    table = str(record)
    assert display(ipython, record)["text/plain"] == table  # a Jupyter kernel's text/plain
    assert pretty(record) == table  # terminal IPython
    assert "(" + "findings=" not in table and "LayerRecord(" not in table  # no dataclass repr


class _HTMLTable(HTMLParser):
    """Checks that tags nest properly; collects the tags and the text of the cells."""

    VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_table(html: str) -> _HTMLTable:
    parser = _HTMLTable()
    parser.feed(html)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    assert "table" in parser.tags and "td" in parser.tags
    return parser


def _cells_that_must_show(name: str, record: Any) -> list[str]:
    """Cells that the HTML table must hold, taken from the record itself."""
    if name == "summary":
        return ["features (Sequential)", "0 (Conv2d)", "117,600", "48,120"]
    if name == "memory":
        return ["Training step peak", format_bytes(record.training_peak)]
    if name == "gradients":
        return [f.where for f in record.findings] + ["no_grad"]
    if name == "trainable":
        return ["0 (Linear)", f"{record.rows[1].frozen_params:,}"]
    if name == "timing":
        return [f"{row.name or '(root)'} ({row.type})" for row in record.layers]
    if name == "measurement":
        return ["add", str(record.n)]
    if name == "history":
        return [f"{e.train_loss:.4f}" for e in record.epochs]
    assert name == "graph_diff"
    return [*record.added, *record.removed]


@pytest.mark.parametrize("name", TABLE_RECORDS)
def test_jupyter_shows_an_html_table(
    ipython: InteractiveShell, records: dict[str, Any], name: str
) -> None:
    record = records[name]
    html = display(ipython, record)["text/html"]
    assert html == record._repr_html_()
    table = parse_table(html)
    for cell in _cells_that_must_show(name, record):
        assert cell in table.cells, (cell, table.cells)


def test_html_escapes_what_the_model_names(ipython: InteractiveShell) -> None:
    finding = Finding(
        "no_grad", "error", "blocks.<lambda>", None, None, None, "<script>alert(1)</script> & co"
    )
    report = GradientReport(findings=(finding,), parameters=(), steps=1, backward_passes=1)
    html = display(ipython, report)["text/html"]
    assert "<script>" not in html and "&lt;script&gt;" in html
    table = parse_table(html)
    assert "blocks.<lambda>" in table.cells and "<script>alert(1)</script> & co" in table.cells


def test_large_summary_shows_its_table_not_its_fields(ipython: InteractiveShell) -> None:
    # terminal IPython showed the dataclass repr of a ResNet-18 summary: 40 kB of fields
    summary = torchscope.summary(torchvision.models.resnet18(), input_size=(1, 3, 32, 32))
    shown = display(ipython, summary)
    assert shown["text/plain"] == str(summary) == pretty(summary)
    assert len(shown["text/plain"]) < 10_000  # depth 3: 68 rows of about 100 characters
    _assert_one_short_line(repr(summary), type(summary))
    assert "11,689,512 params" in repr(summary)


def test_row_records_have_one_line_reprs(
    ipython: InteractiveShell, records: dict[str, Any]
) -> None:
    summary, report, timing = records["summary"], records["gradients"], records["timing"]
    rows: list[Any] = [
        summary.layers[1],
        summary.parameters[0],
        report.parameters[0],
        records["trainable"].rows[1],
        timing.layers[0],
        records["history"].epochs[0],
        records["graph"].nodes[0],
        records["graph"].folds[0],
    ]
    for row in rows:
        _assert_one_short_line(repr(row), type(row))
        assert display(ipython, row)["text/plain"] == repr(row)
    assert "features (Sequential) [1, 1, 28, 28] -> [1, 16, 5, 5]" in repr(summary.layers[1])
    assert summary.parameters[0].name in repr(summary.parameters[0])
    assert "Sequential ×4" in repr(records["graph"].folds[0])


def test_fold_repr_stays_short_however_many_nodes_it_folds() -> None:
    keys = tuple(tuple(f"layers.{i}.op{j}" for j in range(40)) for i in range(12))
    fold = GraphFold("TransformerEncoderLayer", 12, keys)
    assert repr(fold) == "<GraphFold TransformerEncoderLayer ×12 (40 nodes each)>"


def test_finding_shows_its_whole_message_but_repr_is_one_line(
    ipython: InteractiveShell, records: dict[str, Any]
) -> None:
    finding = records["gradients"].findings[0]
    _assert_one_short_line(repr(finding), Finding)
    assert repr(finding).startswith("<Finding error no_grad at first.weight: ")
    shown = display(ipython, finding)["text/plain"]
    assert shown == str(finding) and finding.message in shown


def test_graph_display_keeps_its_picture(
    ipython: InteractiveShell, records: dict[str, Any]
) -> None:
    graph = records["graph"]
    shown = display(ipython, graph)
    assert shown["text/plain"] == str(graph) == pretty(graph)
    assert "image/svg+xml" in shown or "text/html" in shown  # the mimebundle still draws it
    autograd = torchscope.autograd_graph(nn.Linear(3, 2)(torch.randn(4, 3)).sum())
    _assert_one_short_line(repr(autograd), torchscope.AutogradGraph)


@pytest.mark.parametrize("name", [*TABLE_RECORDS, "graph"])
def test_records_still_compare_and_pickle(records: dict[str, Any], name: str) -> None:
    record = records[name]
    assert pickle.loads(pickle.dumps(record)) == record
    assert dataclasses.replace(record) == record
