"""Stream a COCO instances file to disk: flat memory on any dataset size, committed atomically."""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from handray.core.atomic import atomic_write


class CocoWriter:
    """Collects images and annotations in spill files and writes the JSON on `commit`.

    Image and annotation ids are integers assigned in insertion order, starting at 1. Until
    `commit` the target file is untouched; `discard` (or leaving a `with` block by an exception)
    drops everything.
    """

    def __init__(self, path: str | os.PathLike, categories: list[dict], info: dict | None = None):
        self.path = Path(path)
        self.categories = categories
        self.info = info or {}
        self.num_images = 0
        self.num_annotations = 0
        self.hands_per_category: collections.Counter[int] = collections.Counter()
        self.crowd = 0
        # Spill files live as long as the writer; commit() and discard() close them.
        self._images: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._annotations: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115

    def add_image(
        self, file_name: str, width: int, height: int, annotations: list[dict[str, Any]]
    ) -> int:
        """Append one image and its annotations (without ids); returns the image id."""
        self.num_images += 1
        image_id = self.num_images
        image = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        self._append(self._images, self.num_images, image)
        for annotation in annotations:
            self.num_annotations += 1
            record = {"id": self.num_annotations, "image_id": image_id, **annotation}
            self._append(self._annotations, self.num_annotations, record)
            self.hands_per_category[annotation["category_id"]] += 1
            self.crowd += int(annotation.get("iscrowd", 0))
        return image_id

    @staticmethod
    def _append(spill: IO[str], count: int, record: dict) -> None:
        if count > 1:
            spill.write(",\n")
        spill.write(json.dumps(record, separators=(",", ":")))

    def commit(self) -> None:
        """Write the complete JSON under a temporary name, then rename it onto the target."""
        with atomic_write(self.path) as out:
            out.write('{"info":' + json.dumps(self.info) + ',"licenses":[],')
            out.write('"categories":' + json.dumps(self.categories) + ',\n"images":[\n')
            self._copy(self._images, out)
            out.write('],\n"annotations":[\n')
            self._copy(self._annotations, out)
            out.write("]}\n")
        self.discard()

    @staticmethod
    def _copy(spill: IO[str], out: IO[str]) -> None:
        spill.seek(0)
        shutil.copyfileobj(spill, out)

    def discard(self) -> None:
        self._images.close()
        self._annotations.close()

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._images.closed:
            self.commit()
        else:
            self.discard()
