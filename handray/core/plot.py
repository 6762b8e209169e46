"""Training curves as a PNG, drawn with matplotlib.

One panel per group of series (losses, validation AP), epochs on the x axis, a legend per
panel; enough to see at a glance whether a run learned and when it stopped improving. The
figure is rendered by the Agg canvas directly, never through pyplot, so plotting inside a
training run sets no global backend and leaves no figure open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from handray.core.atomic import atomic_write

PANEL_W, PANEL_H = 640, 300  # pixels
DPI = 100


def plot_history(
    history: Sequence[dict[str, float]],
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[str]]],
) -> Path:
    """Draw `panels` (title, metric names) of per-epoch `history` rows into one PNG, written
    under a temporary name and renamed when complete.

    Series missing from every row are left out; panels with no series are dropped.
    """
    figure = history_figure(history, panels)
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        FigureCanvasAgg(figure).print_png(handle)
    return path


def history_figure(
    history: Sequence[dict[str, float]], panels: Sequence[tuple[str, Sequence[str]]]
) -> Figure:
    """The figure `plot_history` saves: one axes per panel that has data, PANEL_W x PANEL_H
    pixels each."""
    drawn = []
    for title, names in panels:
        series = {
            name: [(row["epoch"], row[name]) for row in history if name in row] for name in names
        }
        series = {name: points for name, points in series.items() if points}
        if series:
            drawn.append((title, series))
    if not drawn:
        raise ValueError("nothing to plot: the history has none of the requested metrics")
    figure = Figure(
        figsize=(PANEL_W / DPI, PANEL_H * len(drawn) / DPI), dpi=DPI, layout="constrained"
    )
    rows = figure.subplots(len(drawn), squeeze=False)[:, 0]
    for axes, (title, series) in zip(rows, drawn, strict=True):
        _panel(axes, title, series)
    return figure


def _panel(axes, title: str, series: dict[str, list[tuple[float, float]]]) -> None:
    """Lines with a dot per epoch; a y axis from zero unless a value is negative, so that a
    loss's scale reads at a glance."""
    for name, points in series.items():
        epochs, values = zip(*points, strict=True)
        axes.plot(epochs, values, marker="o", markersize=3, linewidth=1.5, label=name)
    if all(value >= 0 for points in series.values() for _, value in points):
        axes.set_ylim(bottom=0.0)
    axes.set_title(title, loc="left", fontsize="medium")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
