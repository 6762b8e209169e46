"""Training-curve PNGs: which series and panels are drawn, the picture's size, atomic writes,
and that matplotlib stays out of processes that never plot."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from handray.core.plot import PANEL_H, PANEL_W, history_figure, plot_history

HISTORY = [
    {"epoch": 1, "loss": 2.0, "rpn_class_loss": 0.5, "val_loss": 2.2},
    {"epoch": 2, "loss": 1.5, "rpn_class_loss": 0.4, "val_loss": 1.9, "val_mask_ap": 0.1},
    {"epoch": 3, "loss": 1.2, "rpn_class_loss": 0.3, "val_loss": 1.7},
    {"epoch": 4, "loss": 1.1, "rpn_class_loss": 0.3, "val_loss": 1.6, "val_mask_ap": 0.3},
]
PANELS = [
    ("training losses", ["loss", "rpn_class_loss", "mrcnn_mask_loss"]),
    ("validation AP", ["val_mask_ap", "val_box_ap"]),
    ("never logged", ["val_side_accuracy"]),
]


def drawn(figure) -> list[tuple[str, dict[str, tuple[list, list]]]]:
    """Each axes' title and its lines' (x, y) data by label."""
    return [
        (
            axes.get_title(loc="left"),
            {
                line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                for line in axes.get_lines()
            },
        )
        for axes in figure.axes
    ]


def test_series_follow_the_history_and_empty_ones_are_left_out():
    """mrcnn_mask_loss and val_box_ap appear in no row, the third panel in none at all;
    val_mask_ap has points only for the epochs that logged it."""
    assert drawn(history_figure(HISTORY, PANELS)) == [
        (
            "training losses",
            {
                "loss": ([1, 2, 3, 4], [2.0, 1.5, 1.2, 1.1]),
                "rpn_class_loss": ([1, 2, 3, 4], [0.5, 0.4, 0.3, 0.3]),
            },
        ),
        ("validation AP", {"val_mask_ap": ([2, 4], [0.1, 0.3])}),
    ]


def test_legends_name_the_series_and_axes_start_at_zero():
    figure = history_figure(HISTORY, PANELS)
    for axes, names in zip(figure.axes, (["loss", "rpn_class_loss"], ["val_mask_ap"]), strict=True):
        assert [text.get_text() for text in axes.get_legend().get_texts()] == names
        assert axes.get_ylim()[0] == 0.0
        assert axes.get_xlabel() == "epoch"
    negative = history_figure([{"epoch": 1, "x": -0.5}, {"epoch": 2, "x": 0.5}], [("p", ["x"])])
    assert negative.axes[0].get_ylim()[0] < -0.5


def test_png_has_one_panel_size_per_drawn_panel(tmp_path):
    path = plot_history(HISTORY, tmp_path / "runs" / "loss_curves.png", PANELS)
    assert path == tmp_path / "runs" / "loss_curves.png"
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.size == (PANEL_W, 2 * PANEL_H)
        pixels = np.asarray(picture.convert("RGB"))
    assert (pixels != 255).any(axis=-1).mean() > 0.01  # something was drawn on the white
    assert [p.name for p in path.parent.iterdir()] == ["loss_curves.png"]  # no temporary left
    one = plot_history(HISTORY[:1], tmp_path / "one.png", PANELS[:1])
    with Image.open(one) as picture:
        assert picture.size == (PANEL_W, PANEL_H)


def test_nothing_to_plot_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_history(HISTORY, tmp_path / "curves.png", PANELS[2:])
    assert not list(tmp_path.iterdir())


def test_a_failed_render_leaves_the_previous_file_in_place(tmp_path, monkeypatch):
    path = plot_history(HISTORY, tmp_path / "curves.png", PANELS)
    before = path.read_bytes()

    def broken(self, handle):
        handle.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_png", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_history(HISTORY[:2], path, PANELS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_matplotlib_is_imported_only_to_plot_and_never_through_pyplot(tmp_path):
    """The trainer imports plot lazily: a worker or CLI process that never plots must not pay
    for matplotlib, and plotting must not pick a global backend."""
    script = f"""
        import sys
        import handray.cli, handray.train.trainer
        assert "matplotlib" not in sys.modules, "imported at start-up"
        from handray.core.plot import plot_history
        plot_history([{{"epoch": 1, "loss": 1.0}}], {str(tmp_path / "c.png")!r}, [("l", ["loss"])])
        assert "matplotlib.pyplot" not in sys.modules, "plotting went through pyplot"
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
