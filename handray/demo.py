"""The end-to-end demo behind `make demo`: everything under one folder, reused where it can be.

Today it makes (or reuses) the synthetic dataset and draws its ground truth; training,
evaluation and export join as they land.
"""

from __future__ import annotations

from pathlib import Path

from handray.data.coco import annotation_file, load_dataset
from handray.data.preview import preview_dataset
from handray.data.synthetic import generate_dataset

DEMO_DATA = {"train": 400, "val": 100, "size": 128, "seed": 0}


def run_demo(out: str | Path) -> dict[str, Path]:
    """Run the demo under `out`; returns the paths it made, and prints where they are."""
    out = Path(out)
    data = out / "data"
    if all(annotation_file(data, split).is_file() for split in ("train", "val")):
        print(f"reusing the synthetic dataset in {data}")
    else:
        summary = generate_dataset(data, overwrite=True, **DEMO_DATA)
        print(f"generated {sum(summary.images.values())} synthetic images in {data}")
    splits = {split: load_dataset(data, split) for split in ("train", "val")}
    for split, dataset in splits.items():
        hands = sum(len(r.class_ids) for r in dataset.images)
        print(
            f"  {split:<5} {len(dataset):>4} images, {hands:>4} hands, "
            f"classes: {', '.join(dataset.class_names)}"
        )
    preview = preview_dataset(splits["train"], out / "data_preview.png", count=12)
    print(f"ground truth preview: {preview}")
    return {"data": data, "preview": preview}
