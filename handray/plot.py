"""Training curves as a PNG, drawn with Pillow (no plotting library in the dependencies).

One panel per group of series (losses, validation AP), epochs on the x axis, a legend per
panel; enough to see at a glance whether a run learned and when it stopped improving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from handray.visualize import instance_colour, save_png

PANEL_W, PANEL_H = 640, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 170, 28, 34


def plot_history(
    history: Sequence[dict[str, float]],
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[str]]],
) -> Path:
    """Draw `panels` (title, metric names) of per-epoch `history` rows into one PNG.

    Series missing from every row are left out; panels with no series are dropped.
    """
    drawn = []
    for title, names in panels:
        series = {
            name: [(row["epoch"], row[name]) for row in history if name in row] for name in names
        }
        series = {name: points for name, points in series.items() if points}
        if series:
            drawn.append(_panel(title, series))
    if not drawn:
        raise ValueError("nothing to plot: the history has none of the requested metrics")
    sheet = Image.new("RGB", (PANEL_W, PANEL_H * len(drawn)), "white")
    for index, panel in enumerate(drawn):
        sheet.paste(panel, (0, index * PANEL_H))
    return save_png(sheet, path)


def _panel(title: str, series: dict[str, list[tuple[float, float]]]) -> Image.Image:
    panel = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(panel)
    points = [p for values in series.values() for p in values]
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    x_high = x_high if x_high > x_low else x_low + 1
    y_high = y_high if y_high > y_low else y_low + 1
    left, top = MARGIN_L, MARGIN_T
    right, bottom = PANEL_W - MARGIN_R, PANEL_H - MARGIN_B

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            bottom - (y - y_low) / (y_high - y_low) * (bottom - top),
        )

    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, right, bottom], outline="grey")
    for tick in range(5):
        value = y_low + (y_high - y_low) * tick / 4
        y = at(x_low, value)[1]
        draw.line([left - 4, y, left, y], fill="grey")
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
    for x_value in (x_low, (x_low + x_high) / 2, x_high):
        x = at(x_value, y_low)[0]
        draw.text((x - 8, bottom + 6), f"{x_value:g}", fill="black")
    draw.text(((left + right) / 2 - 14, bottom + 20), "epoch", fill="black")
    for index, (name, values) in enumerate(series.items()):
        colour = instance_colour(index)
        xy = [at(x, y) for x, y in values]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        legend_y = top + 14 * index
        draw.line([right + 10, legend_y + 6, right + 26, legend_y + 6], fill=colour, width=2)
        draw.text((right + 30, legend_y), name, fill="black")
    return panel
