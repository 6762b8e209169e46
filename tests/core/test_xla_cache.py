"""XLA's persistent compilation cache (`handray.core.xla_cache`): where it lives, how it is
turned off, and, in real TensorFlow processes, that a second process loads what the first
compiled instead of compiling it again."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from handray.core.xla_cache import CACHE_FLAG, cache_directory, machine_key, use_xla_cache

COMPILE = (
    "from handray.core.xla_cache import use_xla_cache; use_xla_cache(); "
    "import tensorflow as tf; "
    "f = tf.function(lambda x: tf.nn.relu(x @ x) + 1.0, jit_compile=True); "
    "print(float(tf.reduce_sum(f(tf.ones((8, 8))))))"
)


def test_the_folder_is_per_tensorflow_and_cpu_and_can_be_moved_or_turned_off(monkeypatch, tmp_path):
    monkeypatch.delenv("HANDRAY_XLA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    key = machine_key()
    assert key.startswith("tf-") and key.split("-")[1][0].isdigit()  # tf-2.21.0-x86_64-...
    assert cache_directory() == tmp_path / "xdg" / "handray" / "xla" / key
    monkeypatch.setenv("HANDRAY_XLA_CACHE", str(tmp_path / "mine"))
    assert cache_directory() == tmp_path / "mine" / key
    for off in ("off", "0", "", "None"):
        monkeypatch.setenv("HANDRAY_XLA_CACHE", off)
        assert cache_directory() is None


def test_flags_gain_the_cache_once_and_a_cache_named_by_the_user_stays(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDRAY_XLA_CACHE", str(tmp_path))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    directory = use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 {CACHE_FLAG}={directory}"
    assert use_xla_cache() is None  # already named: unchanged
    assert os.environ["TF_XLA_FLAGS"].count(CACHE_FLAG) == 1
    monkeypatch.setenv("TF_XLA_FLAGS", f"{CACHE_FLAG}=/elsewhere")
    assert use_xla_cache() is None and os.environ["TF_XLA_FLAGS"] == f"{CACHE_FLAG}=/elsewhere"
    monkeypatch.delenv("TF_XLA_FLAGS")
    monkeypatch.setenv("HANDRAY_XLA_CACHE", "off")
    assert use_xla_cache() is None and "TF_XLA_FLAGS" not in os.environ


def compile_in_a_new_process(cache: str) -> None:
    environment = {**os.environ, "HANDRAY_XLA_CACHE": cache, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_XLA_FLAGS", None)  # the test session's own cache
    done = subprocess.run(
        [sys.executable, "-c", COMPILE], env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "576.0", done.stderr[-2000:]


def entries(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # three processes that start TensorFlow
def test_a_second_process_loads_the_executable_the_first_compiled(tmp_path):
    compile_in_a_new_process(str(tmp_path / "cache"))
    first = entries(tmp_path / "cache")
    assert len(first) == 1 and next(iter(first)).endswith("XLA_CPU_JIT.pb"), first
    assert (tmp_path / "cache" / machine_key()).is_dir()
    compile_in_a_new_process(str(tmp_path / "cache"))
    assert entries(tmp_path / "cache") == first  # found, not compiled and written again
    compile_in_a_new_process("off")
    assert entries(tmp_path / "cache") == first and not (tmp_path / "off").exists()
