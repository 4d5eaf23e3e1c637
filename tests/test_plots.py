"""The gradient-flow chart, drawn by the real matplotlib Agg backend and read back as pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from torchscope.records import Finding, GradientReport, ParameterHistory
from torchscope.render.plots import MAX_BARS, gradient_flow_figure, plot_gradient_flow

LONG = "encoder.layers.{i}.self_attention_block.multi_head_attention.output_projection.weight"


def history(
    name: str, *, mean: float | None, peak: float = 1.0, numel: int = 16
) -> ParameterHistory:
    """Two observed steps of gradient ``mean``/``peak`` |grad|; ``mean=None``: never got one."""
    if mean is None:
        return ParameterHistory(name, (numel,), numel, True, (), (), (), (), ())
    return ParameterHistory(
        name, (numel,), numel, True, (0, 1), (1.0, 1.0), (mean, mean), (peak, peak), (None, None)
    )


def report_of(params: list[ParameterHistory], *, flagged: str | None = None) -> GradientReport:
    findings = ()
    if flagged is not None:
        findings = (Finding("no_grad", "error", flagged, None, None, None, f"{flagged}: none"),)
    return GradientReport(findings=findings, parameters=tuple(params), steps=2, backward_passes=2)


def long_named(count: int) -> GradientReport:
    """``count`` parameters with 85-character names; #1 never got a gradient, #2 got zeros."""
    params = []
    for i in range(count):
        mean = None if i == 1 else 0.0 if i == 2 else 10.0 ** -(i % 7)
        params.append(history(LONG.format(i=i), mean=mean, peak=2 * (mean or 0.0)))
    return report_of(params, flagged=LONG.format(i=1))


def bars_at(figure, x: float) -> list[Rectangle]:
    """The bars of the chart's axes centred on ``x``."""
    (axes,) = figure.axes
    return [
        p
        for p in axes.patches
        if isinstance(p, Rectangle) and abs(p.get_x() + p.get_width() / 2 - x) < 1e-9
    ]


def markers(figure, marker: str) -> list[float]:
    """The x positions of ``marker`` symbols drawn in the chart's axes."""
    (axes,) = figure.axes
    return [x for line in axes.lines if line.get_marker() == marker for x in line.get_xdata()]


def assert_nothing_outside_the_canvas(figure, png: Path) -> None:
    renderer = figure.canvas.get_renderer()
    canvas = figure.bbox  # pixels
    content = figure.get_tightbbox(renderer)  # inches
    box = figure.bbox_inches
    assert box.x0 <= content.x0 and content.x1 <= box.x1, (content, box)
    assert box.y0 <= content.y0 and content.y1 <= box.y1, (content, box)
    texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text()]
    assert texts
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert canvas.x0 <= extent.x0 and extent.x1 <= canvas.x1, text.get_text()
        assert canvas.y0 <= extent.y0 and extent.y1 <= canvas.y1, text.get_text()
    # the file: a white frame all round, so nothing drawn runs off its edges
    pixels = imread(png)
    height, width = pixels.shape[:2]
    assert (width, height) == (round(canvas.width), round(canvas.height))
    for edge in (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]):
        assert (edge[..., :3] == 1.0).all()


@pytest.mark.parametrize("count", [3, 40, MAX_BARS])
def test_long_names_are_never_clipped_and_no_gradient_has_no_bar(tmp_path: Path, count: int):
    report = long_named(count)
    figure = gradient_flow_figure(report)
    png = tmp_path / "flow.png"
    figure.savefig(png)
    assert_nothing_outside_the_canvas(figure, png)

    (axes,) = figure.axes
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert len(labels) == count  # every parameter labelled
    assert labels[0].startswith("encoder.layers.0.") and labels[0].endswith(".weight")
    assert axes.get_xticklabels()[1].get_color() == "#c0392b"  # named by the finding
    # never got a gradient: no bar, a cross on the axis, named in the legend
    assert bars_at(figure, 1) == [] and markers(figure, "x") == [1]
    (legend,) = figure.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert any(e.startswith("no gradient (1): encoder.layers.1.") for e in entries), entries
    # all-zero gradients: no bar either, a circle
    assert bars_at(figure, 2) == [] and markers(figure, "o") == [2]
    # the others: the max bar and the mean bar, at their values
    assert sorted(b.get_height() for b in bars_at(figure, 0)) == [1.0, 2.0]
    if count > 3:
        assert sorted(b.get_height() for b in bars_at(figure, 3)) == pytest.approx([1e-3, 2e-3])


def test_the_public_plot_writes_a_png_inside_its_canvas(tmp_path: Path):
    path = plot_gradient_flow(long_named(5), tmp_path / "flow.png")
    pixels = imread(path)
    for edge in (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]):
        assert (edge[..., :3] == 1.0).all()  # the title, legend and labels all lie inside
    assert (pixels[..., :3] < 1.0).any()  # and something is drawn


def test_beyond_max_bars_parameters_are_aggregated_by_module():
    params = []
    for block in range(110):  # 440 parameters, 220 modules
        for part in ("attn", "mlp"):
            got = block != 7 or part != "mlp"
            params.append(
                history(
                    f"blocks.{block}.{part}.weight", mean=0.1 if got else None, peak=0.5, numel=30
                )
            )
            params.append(
                history(
                    f"blocks.{block}.{part}.bias", mean=0.4 if got else None, peak=0.8, numel=10
                )
            )
    params[1] = history("blocks.0.attn.bias", mean=None)  # one of the module's two
    figure = gradient_flow_figure(report_of(params))
    (axes,) = figure.axes
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert len(labels) == 220 and labels[:2] == ["blocks.0.attn (2)", "blocks.0.mlp (2)"]
    assert "440 parameters by module" in axes.get_title()
    # a module bar: max of the maxes; mean |grad| over all the module's elements
    assert sorted(b.get_height() for b in bars_at(figure, 1)) == pytest.approx(
        [(30 * 0.1 + 10 * 0.4) / 40, 0.8]
    )
    # half of blocks.0.attn got no gradient: its bar is the weight's, and it is marked
    assert sorted(b.get_height() for b in bars_at(figure, 0)) == pytest.approx([0.1, 0.5])
    # blocks.7.mlp got none at all: no bar
    assert bars_at(figure, 15) == []
    assert markers(figure, "x") == [0, 15]
    (legend,) = figure.legends
    assert any(t.get_text().startswith("no gradient (3): ") for t in legend.get_texts())


def test_a_report_without_trainable_parameters_draws_a_note(tmp_path: Path):
    frozen = ParameterHistory("w", (2,), 2, False, (), (), (), (), ())
    figure = gradient_flow_figure(report_of([frozen]))
    figure.savefig(tmp_path / "flow.png")
    assert any(t.get_text() == "no trainable parameters" for t in figure.findobj(Text))
    assert not [line for line in figure.axes[0].lines if isinstance(line, Line2D)]
