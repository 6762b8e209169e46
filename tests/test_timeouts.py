"""The suite cannot hang: every test has its tier's time limit (tests/conftest.py), and a test
past it fails with the stacks of all threads in the log."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT_S

ROOT = Path(__file__).resolve().parent.parent


def limit_of(request: pytest.FixtureRequest) -> float:
    return request.node.get_closest_marker("timeout").args[0]


def test_a_unit_test_gets_the_fast_limit(request):
    assert limit_of(request) == TIMEOUT_S["fast"]


@pytest.mark.slow
def test_a_slow_test_gets_the_slow_limit(request):
    assert limit_of(request) == TIMEOUT_S["slow"]


@pytest.mark.timeout(7)
def test_a_test_may_set_its_own_limit(request):
    assert limit_of(request) == 7


def test_a_stuck_test_fails_with_every_threads_stack(tmp_path):
    """As this project's settings run it (signal method): a test waiting on a lock that a
    background thread never releases fails after its limit, naming both threads' frames."""
    (tmp_path / "test_stuck.py").write_text(
        textwrap.dedent(
            """
            import threading, time

            def hold(lock):
                with lock:
                    time.sleep(60)

            def test_waits_forever():
                lock = threading.Lock()
                threading.Thread(target=hold, args=(lock,), daemon=True, name="holder").start()
                time.sleep(0.2)
                lock.acquire()
            """
        )
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout_method=signal",
        "--timeout",
        "2",
        str(tmp_path / "test_stuck.py"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout (>2.0s)" in done.stdout and "1 failed" in done.stdout, done.stdout
    assert "holder" in done.stdout and "in hold" in done.stdout  # the other thread's stack


def test_a_test_that_swallows_its_timeout_still_ends_with_every_threads_stack(tmp_path):
    """As a test blocked in `ray.get` does (Ray drops the exception the timeout raises): the
    backstop (tests/backstop.py) dumps the stacks and ends the process."""
    (tmp_path / "test_swallows.py").write_text(
        textwrap.dedent(
            """
            import time

            def test_waits_through_its_timeout():
                while True:
                    try:
                        time.sleep(30)
                    except BaseException:
                        pass
            """
        )
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.backstop"]
    command += ["-o", "timeout_method=signal", "-o", "timeout_backstop=2", "--timeout", "1"]
    command.append(str(tmp_path / "test_swallows.py"))
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=environment
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert time.monotonic() - started < 30, "the backstop did not end the process"
    assert "still running 2 s after its time limit" in output, output
    assert "test_waits_through_its_timeout" in output and "Current thread" in output, output
