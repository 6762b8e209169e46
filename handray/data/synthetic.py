"""The synthetic hand dataset, the embedded default: small enough for a CPU model to learn.

`generate_dataset` renders each split's images in parallel (`scene.render_sample` paints one)
and writes them as PNGs beside one COCO file per split, all of it or nothing. An image draws its
randomness only from the seed, its split and its index, so the same arguments give the same
bytes whatever the worker count or order. A style names how images are drawn (`scene.STYLES`):
"classic" (the look of generator version 2, byte for byte), "varied" (classic plus the paint
families of `paint_variety`, the default) and "held-out" (`held_out_style`, for evaluation only).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from handray.core.atomic import atomic_directory
from handray.core.errors import DatasetError
from handray.core.parallel import process_map
from handray.data.coco_writer import CocoWriter
from handray.data.hand_paint import VIEWS
from handray.data.hand_plan import BACK_CHANCE
from handray.data.hands import hand_categories
from handray.data.paint_variety import FAMILIES
from handray.data.scene import SCHEME, STYLES, families, render_sample

GENERATOR = "handray.data.synthetic/3"
DEFAULT_STYLE = "varied"
MIN_SIZE, MAX_SIZE = 32, 4096


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote, for the CLI to report."""

    out: Path
    images: dict[str, int]
    hands_per_class: dict[str, int]
    crowd: int
    hands_per_view: dict[str, int] = field(default_factory=dict)
    style: str = DEFAULT_STYLE
    images_per_family: dict[str, int] = field(default_factory=dict)


def _file_name(split: str, index: int) -> str:
    return f"images/{split}/{index:06d}.png"


def _render_task(task: tuple[int, str, int, int, str, str]) -> list[dict]:
    """Worker: render one image, write its PNG into the staging folder, return annotations."""
    seed, split, index, size, folder, style = task
    image, annotations = render_sample(seed, split, index, size, style)
    Image.fromarray(image).save(Path(folder) / _file_name(split, index), format="PNG")
    return annotations


def _validate(train: Any, val: Any, size: Any, seed: Any, workers: Any, style: Any) -> None:
    """Reject bad arguments before anything is created, naming the argument and its range."""
    if style not in STYLES:
        raise DatasetError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    limits = {"train": (train, 0, None), "val": (val, 0, None), "seed": (seed, 0, None)}
    limits["size"] = (size, MIN_SIZE, MAX_SIZE)
    if workers is not None:
        limits["workers"] = (workers, 1, None)
    for name, (value, low, high) in limits.items():
        whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
        if not whole or value < low or (high is not None and value > high):
            upper = f" and <= {high}" if high is not None else ""
            raise DatasetError(f"{name} must be a whole number >= {low}{upper}, got {value!r}")
    if train + val == 0:
        raise DatasetError("nothing to generate: train and val are both 0; ask for some images")


def _write_split(
    folder: Path, split: str, count: int, size: int, seed: int, style: str, mapper, progress: bool
) -> CocoWriter:
    """Render one split's images in order and stream their annotations into its COCO file."""
    (folder / "images" / split).mkdir(parents=True)
    info = {
        "description": "handray synthetic hands",
        "generator": GENERATOR,
        "seed": seed,
        "size": size,
        "split": split,
        "images": count,
        "view_mix": {"palm": 1.0 - BACK_CHANCE, "back": BACK_CHANCE},
        "style": style,
    }
    if style == "varied":
        info["family_chances"] = dict(FAMILIES)
    writer = CocoWriter(
        folder / "annotations" / f"instances_{split}.json", hand_categories(SCHEME), info
    )
    tasks = [(seed, split, index, size, str(folder), style) for index in range(1, count + 1)]
    views = collections.Counter(dict.fromkeys(VIEWS, 0))
    drawn = collections.Counter(
        f for i in range(1, count + 1) for f in families(seed, split, i, style)
    )
    with writer, tqdm(total=count, desc=f"synth {split}", unit="img", disable=not progress) as bar:
        for index, annotations in enumerate(mapper(_render_task, tasks), start=1):
            writer.add_image(_file_name(split, index), size, size, annotations)
            views.update(a["view"] for a in annotations)
            bar.update()
        info["hands_per_view"] = dict(views)  # written when the `with` commits the file
        info["images_per_family"] = dict(sorted(drawn.items()))
    return writer


def generate_dataset(
    out: str | os.PathLike,
    *,
    train: int = 400,
    val: int = 100,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    style: str = DEFAULT_STYLE,
) -> SynthSummary:
    """Write a synthetic hand dataset folder (COCO json + PNGs); all of it or nothing.

    `style` is one of `scene.STYLES`: "classic", "varied" (default) or "held-out" (a drawing
    style for evaluation only). The same arguments give byte-identical files. An existing
    non-empty `out` is kept untouched unless `overwrite` is set, and even then replaced only once
    the new dataset is complete.
    """
    _validate(train, val, size, seed, workers, style)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; choose another folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(
            f"{out} already holds files; pass --overwrite to replace them or choose another folder"
        )
    counts = {"train": train, "val": val}
    names = {c["id"]: c["name"] for c in hand_categories(SCHEME)}
    summary = SynthSummary(out, dict(counts), dict.fromkeys(names.values(), 0), 0, style=style)
    workers = min(workers or os.cpu_count() or 1, train + val)
    with atomic_directory(out, overwrite=overwrite) as staging, process_map(workers) as mapper:
        for split, count in counts.items():
            writer = _write_split(staging, split, count, size, seed, style, mapper, progress)
            for category_id, hands in writer.hands_per_category.items():
                summary.hands_per_class[names[category_id]] += hands
            summary.crowd += writer.crowd
            for view, hands in writer.info["hands_per_view"].items():
                summary.hands_per_view[view] = summary.hands_per_view.get(view, 0) + hands
            for family, images in writer.info["images_per_family"].items():
                summary.images_per_family[family] = (
                    summary.images_per_family.get(family, 0) + images
                )
    return summary
