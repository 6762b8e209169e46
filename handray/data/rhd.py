"""Convert the Rendered Handpose Dataset (RHD) into a handray dataset folder (COCO instances).

RHD has `training/` and `evaluation/` folders, each with `color/%05d.png`, `mask/%05d.png`
(0 background, 1 body, 2..17 left hand, 18..33 right hand) and `anno_<split>.pickle`
({sample_id: {"xyz", "uv_vis", "K"}}, rows 0..20 the left hand, 21..41 the right hand).

The old converter had four bugs this module avoids:

- it wrote string image ids, which pycocotools' evaluation silently mismatches; ids are integers;
- it only kept left hands, so right-hand-only images became negatives; every hand is written;
- it traced masks into polygons, losing fingers and thin parts; masks are exact compressed RLE;
- it renamed the RHD folders in place, so a failed run left a broken download; this module never
  writes inside `training/` or `evaluation/` and commits each JSON atomically (no partial file).
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from handray.core.errors import DatasetError
from handray.core.parallel import process_map
from handray.data.coco_writer import CocoWriter
from handray.data.hands import (
    CLASS_SCHEMES,
    DEFAULT_MIN_AREA,
    category_for,
    hand_annotation,
    hand_categories,
)

SPLITS = {"train": "training", "val": "evaluation"}  # output split -> RHD folder
NUM_KEYPOINTS = 21
LEFT_VALUES = (2, 17)  # inclusive range of left-hand mask values
RIGHT_VALUES = (18, 33)
MAX_MASK_VALUE = RIGHT_VALUES[1]
_ADVICE = "re-download RHD or pass --skip-bad to convert the rest"


@dataclass
class ConversionSummary:
    """What a conversion wrote, for the CLI to print."""

    out: Path
    images: dict[str, int] = field(default_factory=dict)
    hands_per_class: dict[str, int] = field(default_factory=dict)
    crowd: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Options:
    """The conversion settings shared by both splits."""

    classes: str
    min_area: int
    workers: int
    skip_bad: bool
    progress: bool


@dataclass(frozen=True)
class _Sample:
    """What a worker needs for one image: small, so the task queue stays cheap to pickle."""

    sample_id: int
    color: str
    mask: str
    uv_vis: np.ndarray


@dataclass(frozen=True)
class _Bad:
    """A sample a worker could not read: which file and why."""

    path: str
    reason: str


def convert_rhd(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    classes: str = "left-right",
    min_area: int = DEFAULT_MIN_AREA,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> ConversionSummary:
    """Write OUT/instances_train.json (from training/) and OUT/instances_val.json (evaluation/).

    OUT defaults to ROOT/annotations, which makes ROOT itself the dataset folder. Image
    `file_name`s are always relative to OUT's parent (the dataset folder, by the dataset contract
    `D/annotations/instances_*.json`), so with an OUT elsewhere they may start with `../`.

    A missing or corrupt image or mask raises DatasetError naming the file, unless `skip_bad`,
    which converts the rest and lists the skipped files. A missing split folder or a bad pickle
    is always fatal. Splits are committed one by one: a failing val split leaves the train JSON
    of this run but never a partial file.
    """
    root = Path(root)
    out = Path(out) if out is not None else root / "annotations"
    workers = _check_args(root, out, classes, min_area, workers)
    options = _Options(classes, min_area, workers, skip_bad, progress)
    for folder in SPLITS.values():
        _split_files(root, folder)  # fail before any work when a split is missing
    summary = ConversionSummary(out=out)
    counts: dict[int, int] = dict.fromkeys(range(1, len(CLASS_SCHEMES[classes]) + 1), 0)
    for split in SPLITS:
        writer = _convert_split(root, split, out, options, summary.skipped)
        summary.images[split] = writer.num_images
        summary.crowd += writer.crowd
        for category_id, count in writer.hands_per_category.items():
            counts[category_id] += count
    names = CLASS_SCHEMES[classes]
    summary.hands_per_class = {names[cid - 1]: count for cid, count in counts.items()}
    return summary


def _check_args(root: Path, out: Path, classes: str, min_area: int, workers: int | None) -> int:
    """Reject bad arguments up front, before any process starts; returns the worker count."""
    if classes not in CLASS_SCHEMES:
        raise ValueError(f"classes must be one of {sorted(CLASS_SCHEMES)}, not {classes!r}")
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 0:
        raise ValueError(f"min_area must be an integer >= 0, not {min_area!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, not {workers!r}")
    if not root.is_dir():
        raise DatasetError(
            f"RHD folder {root} does not exist; pass the folder that holds training/"
        )
    for folder in SPLITS.values():
        source = Path(os.path.abspath(root / folder))
        if Path(os.path.abspath(out)).is_relative_to(source):
            raise ValueError(f"--out {out} is inside {source}; RHD's folders are never written to")
    return workers


def _split_files(root: Path, folder: str) -> tuple[Path, Path]:
    """The split folder and its pickle, which must both exist."""
    split_dir = root / folder
    if not split_dir.is_dir():
        raise DatasetError(f"RHD split folder {split_dir} is missing; re-download RHD")
    pickle_path = split_dir / f"anno_{folder}.pickle"
    if not pickle_path.is_file():
        raise DatasetError(f"RHD annotation file {pickle_path} is missing; re-download RHD")
    return split_dir, pickle_path


def _convert_split(
    root: Path, split: str, out: Path, options: _Options, skipped: list[str]
) -> CocoWriter:
    """Stream one split into its JSON; nothing is written unless every sample is accounted for."""
    folder = SPLITS[split]
    split_dir, pickle_path = _split_files(root, folder)
    samples = _load_samples(split_dir, pickle_path)
    info = {"description": f"Rendered Handpose Dataset, {folder} split", "classes": options.classes}
    categories = hand_categories(options.classes)
    base = os.path.abspath(out.parent)
    convert = functools.partial(_convert_sample, classes=options.classes, min_area=options.min_area)
    workers = min(options.workers, len(samples))
    chunksize = max(1, min(64, len(samples) // (8 * workers))) if workers else 1
    with (
        CocoWriter(out / f"instances_{split}.json", categories, info) as writer,
        process_map(workers, chunksize) as mapper,
    ):
        for sample, result in tqdm(
            zip(samples, mapper(convert, samples), strict=True),
            total=len(samples),
            desc=f"RHD {folder}",
            unit="img",
            disable=not options.progress,
        ):
            if isinstance(result, _Bad):
                if not options.skip_bad:
                    raise DatasetError(f"{result.path}: {result.reason}; {_ADVICE}")
                skipped.append(f"{result.path} ({result.reason})")
                continue
            width, height, annotations = result
            file_name = Path(os.path.relpath(os.path.abspath(sample.color), base)).as_posix()
            writer.add_image(file_name, width, height, annotations)
    return writer


def _load_samples(split_dir: Path, pickle_path: Path) -> list[_Sample]:
    """Samples in sorted id order, keeping only the 2D keypoints (the pickle's xyz/K are unused)."""
    try:
        with open(pickle_path, "rb") as handle:
            records = pickle.load(handle, encoding="latin1")  # written by Python 2
    except Exception as exc:  # any unpickling failure means the same thing: a bad file
        raise DatasetError(
            f"cannot read RHD annotation file {pickle_path} ({exc}); re-download RHD"
        ) from exc
    if not isinstance(records, dict):
        raise DatasetError(f"{pickle_path} holds a {type(records).__name__}, not a dict by id")
    if not all(isinstance(key, int | np.integer) for key in records):
        raise DatasetError(f"{pickle_path}: sample ids must be integers; re-download RHD")
    samples = []
    for sample_id in sorted(records):
        uv_vis = _uv_vis(records[sample_id], sample_id, pickle_path)
        name = f"{int(sample_id):05d}.png"
        color, mask = split_dir / "color" / name, split_dir / "mask" / name
        samples.append(_Sample(int(sample_id), str(color), str(mask), uv_vis))
    return samples


def _uv_vis(record: Any, sample_id: Any, pickle_path: Path) -> np.ndarray:
    """The (42, 3) keypoint array of one pickle record, checked."""
    try:
        uv_vis = np.asarray(record["uv_vis"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{pickle_path}: sample {sample_id!r} has no usable uv_vis") from exc
    if uv_vis.shape != (2 * NUM_KEYPOINTS, 3):
        raise DatasetError(
            f"{pickle_path}: sample {sample_id!r} uv_vis has shape {uv_vis.shape}, expected (42, 3)"
        )
    return uv_vis


def _convert_sample(
    sample: _Sample, classes: str, min_area: int
) -> tuple[int, int, list[dict]] | _Bad:
    """(width, height, annotations) of one sample, or _Bad naming the file that failed."""
    color = _read_png(sample.color)
    if isinstance(color, _Bad):
        return color
    mask = _read_png(sample.mask)
    if isinstance(mask, _Bad):
        return mask
    if mask.shape[:2] != color.shape[:2]:
        return _Bad(sample.mask, f"mask is {mask.shape[:2]}, colour image is {color.shape[:2]}")
    if mask.ndim != 2:
        return _Bad(sample.mask, "mask is not a single-channel image")
    if mask.max() > MAX_MASK_VALUE:
        return _Bad(sample.mask, f"mask value {mask.max()} is above {MAX_MASK_VALUE}")
    return color.shape[1], color.shape[0], list(_hands(mask, sample.uv_vis, classes, min_area))


def _read_png(path: str) -> np.ndarray | _Bad:
    """Fully decoded pixels, so a truncated file is caught here and not during training."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image)
    except FileNotFoundError:
        return _Bad(path, "file is missing")
    except Exception as exc:  # PIL signals corrupt data with OSError, SyntaxError, ValueError...
        return _Bad(path, f"cannot decode ({type(exc).__name__}: {exc})")


def _hands(mask: np.ndarray, uv_vis: np.ndarray, classes: str, min_area: int) -> Iterable[dict]:
    """Annotations of the left then the right hand, each only when it has pixels."""
    for is_left, (low, high), rows in (
        (True, LEFT_VALUES, uv_vis[:NUM_KEYPOINTS]),
        (False, RIGHT_VALUES, uv_vis[NUM_KEYPOINTS:]),
    ):
        hand = (mask >= low) & (mask <= high)
        annotation = hand_annotation(
            hand, category_for(classes, is_left), rows[:, :2], rows[:, 2] > 0.5, min_area
        )
        if annotation is not None:
            yield annotation
