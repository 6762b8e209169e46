"""`handray export`: a SavedModel that a process importing only TensorFlow loads and runs, giving
the detections `handray predict` gives."""

import contextlib
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from handray import cli

# Runs in a fresh interpreter: TensorFlow only, and it proves handray was never imported.
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export, out, *paths = sys.argv[1:]
    loaded = tf.saved_model.load(export)
    images = tf.constant([open(p, "rb").read() for p in paths])
    results = {}
    default = loaded.signatures["serving_default"](images=images)
    results.update({"default_" + k: v.numpy() for k, v in default.items()})
    # A cut between the untrained model's scores: the median of the kept ones.
    counts, scores = default["num_detections"].numpy(), default["scores"].numpy()
    cut = float(np.median(np.concatenate([s[:n] for s, n in zip(scores, counts)])))
    results["strict_min_score"] = cut
    strict = loaded.signatures["serving_thresholds"](
        images=images, min_score=tf.constant(cut), mask_threshold=tf.constant(0.52)
    )
    results.update({"strict_" + k: v.numpy() for k, v in strict.items()})
    optional = loaded.serving_default(images, min_score=tf.constant(cut))
    results["optional_scores"] = optional["scores"].numpy()
    single = loaded.signatures["predict_image"](image=images[1])
    results.update({"single_" + k: v.numpy() for k, v in single.items()})
    np.savez(out, **results)
    meta = loaded.signatures["metadata"]()
    print(json.dumps({
        "handray_imported": any(m.split(".")[0] == "handray" for m in sys.modules),
        "class_names": [c.decode() for c in meta["class_names"].numpy()],
        "min_score": float(meta["min_score"].numpy()),
        "config": meta["config"].numpy().decode(),
        "name": meta["name"].numpy().decode(),
        "version": meta["version"].numpy().decode(),
        "signatures": sorted(loaded.signatures),
    }))
    """
)


@pytest.fixture(scope="module")
def loaded_in_fresh_process(tiny_export, photo_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("loaded") / "outputs.npz"
    command = [sys.executable, "-c", LOADER, str(tiny_export), str(out), *map(str, photo_files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), dict(np.load(out))


@pytest.fixture(scope="module")
def predicted(tiny_checkpoint, photo_files) -> list[dict]:
    """`handray predict --json` on the same files and weights."""
    argv = ["predict", *map(str, photo_files), "--weights", str(tiny_checkpoint), "--json"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli.main([*argv, "--min-score", "0"]) == 0
    return json.loads(buffer.getvalue())


@pytest.mark.slow  # an export loaded in a fresh process
def test_export_runs_without_handray_and_matches_predict(loaded_in_fresh_process, predicted):
    meta, out = loaded_in_fresh_process
    assert not meta["handray_imported"]
    assert meta["signatures"] == [
        "metadata",
        "predict_image",
        "serving_default",
        "serving_thresholds",
    ]
    for index, record in enumerate(predicted):
        count = int(out["default_num_detections"][index])
        assert count == len(record["predictions"]) > 0
        height, width = out["default_image_sizes"][index]
        assert (height, width) == (record["height"], record["width"])
        for slot, prediction in enumerate(record["predictions"]):
            assert out["default_class_ids"][index, slot] == prediction["class_id"]
            assert out["default_scores"][index, slot] == pytest.approx(
                prediction["score"], abs=1e-4
            )
            np.testing.assert_allclose(
                out["default_boxes"][index, slot], prediction["roi"], atol=0.02
            )
            reference = mask_utils.decode(prediction["mask"]).astype(bool)
            exported = out["default_masks"][index, slot, :height, :width].astype(bool)
            assert (exported == reference).mean() >= 0.995
            np.testing.assert_allclose(
                out["default_keypoints"][index, slot], prediction["keypoints"], atol=0.02
            )
        # Padding past the image and past the detections is zero.
        assert not out["default_masks"][index, :, height:, :].any()
        assert not out["default_masks"][index, :, :, width:].any()
        assert not out["default_masks"][index, count:].any()
        assert not out["default_scores"][index, count:].any()


@pytest.mark.slow  # an export loaded in a fresh process
def test_thresholds_filter_the_same_detections(loaded_in_fresh_process):
    _, out = loaded_in_fresh_process
    pixels = {"looser": 0, "tighter": 0}
    for index in range(len(out["default_num_detections"])):
        scores = out["default_scores"][index, : out["default_num_detections"][index]]
        strict = int(out["strict_num_detections"][index])
        assert strict == int((scores >= out["strict_min_score"]).sum())
        np.testing.assert_array_equal(out["strict_scores"][index, :strict], scores[:strict])
        np.testing.assert_array_equal(out["optional_scores"][index, :strict], scores[:strict])
        looser = out["default_masks"][index, :strict].astype(bool)
        tighter = out["strict_masks"][index, :strict].astype(bool)
        assert not (tighter & ~looser).any()
        pixels["looser"] += looser.sum()
        pixels["tighter"] += tighter.sum()
    assert 0 < pixels["tighter"] < pixels["looser"], pixels


@pytest.mark.slow  # an export loaded in a fresh process
def test_predict_image_is_one_unpadded_row(loaded_in_fresh_process):
    _, out = loaded_in_fresh_process
    count = int(out["default_num_detections"][1])
    height, width = out["default_image_sizes"][1]
    assert out["single_masks"].shape == (count, height, width)
    np.testing.assert_allclose(out["single_rois"], out["default_boxes"][1, :count], atol=1e-3)
    np.testing.assert_array_equal(out["single_class_ids"], out["default_class_ids"][1, :count])
    np.testing.assert_array_equal(
        out["single_masks"], out["default_masks"][1, :count, :height, :width]
    )


@pytest.mark.slow  # an export loaded in a fresh process
def test_metadata_holds_classes_and_config(loaded_in_fresh_process, tiny_export):
    meta, _ = loaded_in_fresh_process
    assert meta["class_names"] == ["left_hand", "right_hand"]
    config = yaml.safe_load(meta["config"])
    assert config["preset"] == "tiny" and config["serve"]["min_score"] == 0
    assert meta["min_score"] == 0.0  # the default threshold is serve.min_score
    assert meta["name"] == "handray-tiny" and len(meta["version"]) > 12
    assert yaml.safe_load((tiny_export / "handray.yaml").read_text()) == config


def test_export_refuses_to_replace_files_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = cli.main(["export", "--weights", str(tiny_checkpoint), "--out", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
