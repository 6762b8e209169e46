"""A backstop behind pytest-timeout: a test still running some time after its limit has its
threads' stacks written to stderr, and the test process exits.

pytest-timeout's signal method fails a test by raising from a SIGALRM handler. A test blocked
in Ray's `ray.get` can swallow that exception (Ray runs the handler inside its own wait loop,
which drops it or turns it into a SystemError it keeps waiting through), and the suite then
waits for good: seen with a Train run whose workers could not be placed. This timer thread
does not need the main thread to come back."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "timeout_backstop",
        "seconds past a test's timeout after which the process dumps stacks and exits",
        default="60",
    )


def time_limit(item: pytest.Item) -> float:
    """The test's pytest-timeout limit: its `timeout` mark, else `--timeout` (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0] or 0)
    return float(item.config.getoption("timeout", None) or 0)


def give_up(item: pytest.Item, seconds: float) -> None:
    """Write every thread's stack where the run's log shows it, then end the process (under
    pytest-xdist the worker is reported crashed on `item`)."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    sys.stderr.write(
        f"\n{item.nodeid}: still running {seconds:g} s after its time limit (the timeout "
        "did not stop it); every thread's stack, then this test process exits:\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Arm the backstop for the test's setup, call and teardown."""
    if not (limit := time_limit(item)):
        yield
        return
    grace = float(item.config.getini("timeout_backstop"))
    timer = threading.Timer(limit + grace, give_up, (item, grace))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
