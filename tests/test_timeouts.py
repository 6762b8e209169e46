"""The suite cannot hang: every test has its tier's time limit (tests/conftest.py), and a test
past it fails with the stacks of all threads in the log."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import TIMEOUT_S


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
