"""The `handray` console script, run as a user runs it: a subprocess, its output and exit code."""

import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

HANDRAY = str(Path(sys.executable).with_name("handray"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HANDRAY, *args], capture_output=True, text=True, timeout=300)


def test_config_prints_the_resolved_yaml_and_writes_it(tmp_path):
    result = run(
        "config",
        "tiny",
        "--set",
        "train.epochs=3",
        "data.seed=7",
        "--out",
        str(tmp_path / "c.yaml"),
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["epochs"] == 3 and printed["data"]["seed"] == 7
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == printed


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    result = run("config", "tiny", "--set", "train.epochs=many")
    assert result.returncode == 2
    assert "error: train.epochs: expected int, got str 'many'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run("convert-rhd", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_synth_then_preview(tmp_path):
    out = tmp_path / "hands"
    result = run("synth", str(out), "--train", "6", "--val", "2", "--size", "64", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "left_hand" in result.stdout
    assert (out / "annotations" / "instances_train.json").is_file()
    again = run("synth", str(out), "--train", "2", "--val", "1", "--size", "64")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    preview = run("preview", str(out), "--count", "4", "--out", str(tmp_path / "p.png"))
    assert preview.returncode == 0, preview.stderr
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == (4 * 64, 64)
