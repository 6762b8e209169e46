"""How well can pixels tell a left hand from a right one? A ceiling for the detector's classes.

Cuts every non-crowd hand's box (square, with some context) out of a synthetic set, trains a
small Keras CNN on the train crops to say left or right, and reports validation accuracy overall,
by view (palm or back) and by hand size tercile (the box's longer side). If this classifier sits
at chance, no detector can do better on the same data.

Two priors make it learn in minutes what a detector learns in hours; neither carries the side.
By default each crop is turned so the annotated wrist-to-middle-knuckle axis points up (an axis
that looks the same on both sides): a small CNN learns chirality at one orientation in a few
epochs but needs many more to learn it at every angle (`--orient none` shows how many). And the
score is antisymmetric under a left-right flip, which turns a left hand into a right one
(`--plain` drops that). `--target view` or `mirror` diagnoses the two ingredients of the side:
the palm/back cue, and the silhouette's mirroring. Default run: 4000 + 1000 images at 128 px,
about 3 minutes on 2 cores.

    .venv/bin/python benchmarks/handedness_ceiling.py [--dataset DIR] [--orient none] [--plain]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers
from PIL import Image

from handray.data.synthetic import generate_dataset

LEFT_CATEGORY = 1  # "left_hand" in the left-right scheme


def _upright_angle(annotation: dict) -> float:
    """Direction from the wrist to the middle finger's base (radians), 0 when either is unknown."""
    points = np.array(annotation["keypoints"], np.float64).reshape(21, 3)
    (wx, wy, wv), (mx, my, mv) = points[0], points[12]
    return math.atan2(mx - wx, wy - my) if wv and mv else 0.0


def _square(cx: float, cy: float, side: float, angle: float) -> tuple[float, ...]:
    """Corners (top left, bottom left, bottom right, top right) of a square turned by `angle`."""
    c, s, h = math.cos(angle), math.sin(angle), side / 2
    corners = [(-h, -h), (-h, h), (h, h), (h, -h)]
    return tuple(v for x, y in corners for v in (cx + x * c - y * s, cy + x * s + y * c))


def _crop(picture: Image.Image, annotation: dict, crop: int, context: float, upright: bool):
    """The hand's box, squared, widened by `context` per side, maybe turned upright."""
    x, y, w, h = annotation["bbox"]
    side = max(w, h) * (1.0 + 2.0 * context)
    angle = _upright_angle(annotation) if upright else 0.0
    quad = _square(x + w / 2.0, y + h / 2.0, side, angle)
    return np.asarray(picture.transform((crop, crop), Image.Transform.QUAD, quad, Image.BILINEAR))


def load_crops(
    root: Path, split: str, crop: int, context: float, upright: bool
) -> dict[str, np.ndarray]:
    """Crops of every non-crowd hand of a split: pixels, is-left labels, views, box sizes."""
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    hands = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    pictures: dict[int, Image.Image] = {}
    pixels = []
    for annotation in hands:  # annotations are stored image by image
        image_id = annotation["image_id"]
        if image_id not in pictures:
            pictures = {image_id: Image.open(root / files[image_id]).convert("RGB")}
        pixels.append(_crop(pictures[image_id], annotation, crop, context, upright))
    return {
        "pixels": np.stack(pixels).astype(np.float32) / 255.0,
        "left": np.array([a["category_id"] == LEFT_CATEGORY for a in hands], np.float32),
        "view": np.array([a.get("view", "unknown") for a in hands]),
        "size": np.array([max(a["bbox"][2:]) for a in hands], np.float32),
    }


def target(crops: dict[str, np.ndarray], name: str) -> np.ndarray:
    """0/1 labels: left hand, back view, or mirrored silhouette (left XOR back)."""
    back = (crops["view"] == "back").astype(np.float32)
    return {"side": crops["left"], "view": back, "mirror": np.abs(crops["left"] - back)}[name]


class Mirror(layers.Layer):
    """The image flipped left to right: a left hand's crop becomes a right hand's."""

    def call(self, x):
        return keras.ops.flip(x, axis=2)


def build_trunk(crop: int) -> keras.Model:
    """A small CNN scorer: four conv-BN-ReLU-pool stages, then two dense layers."""
    inputs = keras.Input((crop, crop, 3))
    x = inputs
    for filters in (24, 48, 64, 96):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(0.2)(layers.Flatten()(x))  # keeps where on the crop a cue lies
    return keras.Model(inputs, layers.Dense(1)(layers.Dense(64, activation="relu")(x)))


def build_classifier(crop: int, mirror_sign: float, steps: int) -> keras.Model:
    """score(x) + sign * score(mirrored x): sign -1 for labels that a mirror flips (side,
    mirroring), +1 for those it keeps (view), 0 for a plain CNN without that prior."""
    inputs = keras.Input((crop, crop, 3))
    x = inputs
    for augment in (  # in training only; a small turn, shift or zoom keeps the side
        layers.RandomRotation(0.05, fill_mode="constant"),
        layers.RandomTranslation(0.08, 0.08, fill_mode="constant"),
        layers.RandomZoom(0.12, fill_mode="constant"),
    ):
        x = augment(x)
    trunk = build_trunk(crop)
    logit = trunk(x)
    if mirror_sign:
        logit = layers.Add()([logit, layers.Rescaling(mirror_sign)(trunk(Mirror()(x)))])
    model = keras.Model(inputs, layers.Activation("sigmoid")(logit))
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


Row = tuple[str, int, float]


def accuracy_rows(crops: dict[str, np.ndarray], correct: np.ndarray) -> list[Row]:
    """Accuracy overall, per view and per size tercile, as (group, crops, accuracy) rows."""
    rows = [("all", len(correct), float(correct.mean()))]
    for view in sorted(set(crops["view"].tolist())):
        chosen = crops["view"] == view
        rows.append((f"view {view}", int(chosen.sum()), float(correct[chosen].mean())))
    edges = np.quantile(crops["size"], [1 / 3, 2 / 3])
    tercile = np.digitize(crops["size"], edges)
    for index, name in enumerate(("small", "mid", "large")):
        chosen = tercile == index
        low, high = crops["size"][chosen].min(), crops["size"][chosen].max()
        label = f"size {name} ({low:.0f}-{high:.0f} px)"
        rows.append((label, int(chosen.sum()), float(correct[chosen].mean())))
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="an existing synthetic dataset folder")
    parser.add_argument("--train", type=int, default=4000, help="train images to generate")
    parser.add_argument("--val", type=int, default=1000, help="val images to generate")
    parser.add_argument("--size", type=int, default=128, help="image side to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=48, help="crop side in pixels")
    parser.add_argument("--context", type=float, default=0.15, help="margin per side / box side")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--target",
        choices=("side", "view", "mirror"),
        default="side",
        help="what to learn: the side (the ceiling), or for diagnosis the view or the mirroring",
    )
    parser.add_argument(
        "--orient",
        choices=("keypoints", "none"),
        default="keypoints",
        help="turn each crop so its wrist-to-middle-knuckle axis points up, or keep it as cut",
    )
    parser.add_argument("--plain", action="store_true", help="no mirror prior in the CNN")
    return parser.parse_args()


def load_splits(args: argparse.Namespace) -> tuple[dict, dict, float]:
    """Train and val crops, from --dataset or a freshly generated set; seconds spent generating."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset
        if root is None:
            root = Path(tmp) / "synth"
            generate_dataset(root, train=args.train, val=args.val, size=args.size,
                             seed=args.seed, progress=False)  # fmt: skip
        generating = time.perf_counter() - started
        upright = args.orient == "keypoints"
        crops = [load_crops(root, s, args.crop, args.context, upright) for s in ("train", "val")]
    return crops[0], crops[1], generating


def main() -> None:
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    train, val, generating = load_splits(args)
    sign = 0.0 if args.plain else (1.0 if args.target == "view" else -1.0)
    steps = args.epochs * math.ceil(len(train["left"]) / args.batch)
    model = build_classifier(args.crop, sign, steps)
    model.fit(
        train["pixels"], target(train, args.target), batch_size=args.batch,
        epochs=args.epochs, shuffle=True, verbose=2,
    )  # fmt: skip
    guess = model.predict(val["pixels"], batch_size=256, verbose=0)[:, 0] > 0.5
    correct = guess == (target(val, args.target) > 0.5)
    prior = "none" if args.plain else "mirror-antisymmetric"
    print(
        f"\nhandedness ceiling, target {args.target}: {len(train['left'])} train crops, "
        f"{len(val['left'])} val crops, {args.crop}x{args.crop} px, orient {args.orient}, "
        f"prior {prior}, {args.epochs} epochs, {os.cpu_count()} CPU cores, "
        f"keras {keras.__version__}; generating {generating:.0f} s, "
        f"total {time.perf_counter() - started:.0f} s"
    )
    share = float(target(val, args.target).mean())
    print(f"chance (majority class on val): {max(share, 1 - share):.3f}")
    print(f"| {'val group':<26} | crops | accuracy |")
    print(f"|{'-' * 28}|-------|----------|")
    for group, count, accuracy in accuracy_rows(val, correct):
        print(f"| {group:<26} | {count:>5} | {accuracy:>8.3f} |")


if __name__ == "__main__":
    main()
