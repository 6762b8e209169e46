"""Do `handray predict`, the SavedModel export and HTTP `/predict` give the same detections as
before a change? Capture all three once per code version, then compare the captures.

    python benchmarks/same_detections.py capture before --weights runs/demo/train IMAGES...
    (change the code)
    python benchmarks/same_detections.py capture after --weights runs/demo/train IMAGES...
    python benchmarks/same_detections.py compare before after [--against AFTER=BEFORE ...]

Every path runs with min_score 0 (all detections the model keeps), 0.5 and its default.
Detections must agree in count, class and mask pixels; scores, boxes and keypoints within float
noise. `--against` pairs captures whose default changed on purpose (e.g. `predict_default`
against `predict_half` when `predict`'s default became `serve.min_score`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray
import requests
from pycocotools import mask as mask_utils

from handray.serve.launcher import ServeProcess, free_port, shipped_config

SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE_PX = 0.05
THRESHOLDS = (("all", 0.0), ("half", 0.5), ("default", None))  # label, min_score
KEYPOINT_TOLERANCE_PX = 0.01  # replies round keypoints (to 2 decimals before, 5 now)


def capture(out: Path, weights: str, images: list[Path]) -> None:
    """Write predict_*.json, export_*.json and http_*.json under `out`, one entry per image."""
    out.mkdir(parents=True, exist_ok=True)
    handray = Path(sys.executable).parent / "handray"
    for label, threshold in THRESHOLDS:
        score = [] if threshold is None else ["--min-score", str(threshold)]
        text = subprocess.run(
            [str(handray), "predict", "--json", "--weights", weights, *score, *map(str, images)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        records = json.loads(text.strip().splitlines()[-1])
        _save(out / f"predict_{label}.json", [_from_predict(r["predictions"]) for r in records])
    export = out / "export"
    subprocess.run(
        [str(handray), "export", "--weights", weights, "--out", str(export), "--overwrite"],
        check=True,
        capture_output=True,
    )
    _capture_export(out, export, images)
    _capture_http(out, export, images)


def _capture_export(out: Path, export: Path, images: list[Path]) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export))
    data = tf.constant([path.read_bytes() for path in images])
    for label, threshold in THRESHOLDS:
        kwargs = {} if threshold is None else {"min_score": threshold}
        result = {k: v.numpy() for k, v in loaded.serving_default(data, **kwargs).items()}
        entries = []
        for index in range(len(images)):
            count = int(result["num_detections"][index])
            height, width = result["image_sizes"][index]
            masks = result["masks"][index, :count, :height, :width]
            entries.append(
                [
                    _detection(
                        result["boxes"][index, k],
                        result["class_ids"][index, k],
                        result["scores"][index, k],
                        _rle(masks[k]),
                        result["keypoints"][index, k].tolist() if "keypoints" in result else None,
                    )
                    for k in range(count)
                ]
            )
        _save(out / f"export_{label}.json", entries)


def _capture_http(out: Path, export: Path, images: list[Path]) -> None:
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = shipped_config(export.resolve(), free_port())
            server = ServeProcess(config, Path(folder), context.address_info["gcs_address"])
            try:
                for label, threshold in THRESHOLDS:
                    query = "" if threshold is None else f"&min_score={threshold}"
                    entries = []
                    for path in images:
                        reply = requests.post(
                            f"{server.url}/predict?mask_format=rle{query}",
                            files={"image": (path.name, path.read_bytes())},
                            timeout=60,
                        )
                        reply.raise_for_status()
                        entries.append([_from_reply(p) for p in reply.json()["predictions"]])
                    _save(out / f"http_{label}.json", entries)
            finally:
                server.stop()
    finally:
        ray.shutdown()


def _from_predict(predictions: list[dict]) -> list[dict]:
    return [_from_reply(p) for p in predictions]


def _from_reply(p: dict) -> dict:
    return _detection(p["roi"], p["class_id"], p["score"], p["mask"], p.get("keypoints"))


def _detection(roi, class_id, score, mask, keypoints=None) -> dict:
    return {
        "roi": [float(v) for v in roi],
        "class_id": int(class_id),
        "score": float(score),
        "mask": {"size": list(mask["size"]), "counts": mask["counts"]},
        "keypoints": keypoints,
    }


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(encoded["size"]), "counts": encoded["counts"].decode()}


def _save(path: Path, entries: list) -> None:
    path.write_text(json.dumps(entries))


def compare(before: Path, after: Path, against: dict[str, str] | None = None) -> bool:
    """Print a table row per capture file; True when every file agrees. `against` compares an
    after-file with a before-file of another name (a default that changed on purpose)."""
    against = against or {}
    print(
        f"{'output':<34}{'detections':>11}{'classes':>9}{'masks':>7}{'max |dscore|':>14}"
        f"{'max |droi| px':>15}{'max |dkp| px':>14}"
    )
    same = True
    for path in sorted(after.glob("*.json")):
        source = before / f"{against.get(path.stem, path.stem)}.json"
        old, new = json.loads(source.read_text()), json.loads(path.read_text())
        counts = [len(o) == len(n) for o, n in zip(old, new, strict=True)]
        pairs = [
            (o, n)
            for image_o, image_n in zip(old, new, strict=True)
            for o, n in zip(image_o, image_n, strict=False)
        ]
        classes = all(o["class_id"] == n["class_id"] for o, n in pairs)
        masks = all(o["mask"] == n["mask"] for o, n in pairs)
        score = max((abs(o["score"] - n["score"]) for o, n in pairs), default=0.0)
        roi = max((_largest(o["roi"], n["roi"]) for o, n in pairs), default=0.0)
        points = max((_keypoint_difference(o, n) for o, n in pairs), default=0.0)
        total = sum(len(image) for image in old)
        agree = all(counts) and classes and masks and score <= SCORE_TOLERANCE
        agree = agree and roi <= BOX_TOLERANCE_PX and points <= KEYPOINT_TOLERANCE_PX
        same &= agree
        name = path.stem if source.stem == path.stem else f"{path.stem} vs {source.stem}"
        print(
            f"{name:<34}{total:>11}{'same' if classes else 'DIFF':>9}"
            f"{'same' if masks else 'DIFF':>7}{score:>14.2e}{roi:>15.2e}{points:>14.2e}"
            + ("" if all(counts) else "   counts differ")
        )
    print("identical detections" if same else "DETECTIONS DIFFER")
    return same


def _largest(old: list[float], new: list[float]) -> float:
    return max((abs(a - b) for a, b in zip(old, new, strict=True)), default=0.0)


def _keypoint_difference(old: dict, new: dict) -> float:
    """The largest x/y difference of two detections' keypoints (inf when only one has them)."""
    if old.get("keypoints") is None or new.get("keypoints") is None:
        return 0.0 if old.get("keypoints") == new.get("keypoints") else float("inf")
    return max(
        (_largest(a[:2], b[:2]) for a, b in zip(old["keypoints"], new["keypoints"], strict=True)),
        default=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("capture", help="run all three paths on IMAGES")
    take.add_argument("out", type=Path)
    take.add_argument("--weights", required=True, help="checkpoint, run folder or .h5 file")
    take.add_argument("images", nargs="+", type=Path)
    check = commands.add_parser("compare", help="compare two captures")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    check.add_argument(
        "--against",
        nargs="*",
        default=[],
        metavar="AFTER=BEFORE",
        help="compare an after capture with a before capture of another name",
    )
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.out, args.weights, args.images)
    elif not compare(args.before, args.after, dict(pair.split("=") for pair in args.against)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
