"""`serve run` stops on Ctrl-C even when started from a background job (a shell starts those
with SIGINT ignored, and the children inherit it)."""

import signal
import subprocess
import sys
import time

import pytest

from handray.serve.launcher import ctrl_c_stops

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"


def sigint_after_start(**popen) -> subprocess.Popen:
    """A Python child started while this process ignores SIGINT, sent SIGINT once running."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
    finally:
        signal.signal(signal.SIGINT, before)
    assert child.stdout.readline() == "ready\n"
    child.send_signal(signal.SIGINT)
    return child


def test_a_child_started_with_ctrl_c_stops_ends_on_sigint_under_an_ignoring_parent():
    child = sigint_after_start(preexec_fn=ctrl_c_stops)
    started = time.monotonic()
    _, stderr = child.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr


def test_without_it_the_child_sleeps_through_sigint():
    child = sigint_after_start()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.communicate(timeout=3)
    finally:
        child.kill()
        child.communicate()
