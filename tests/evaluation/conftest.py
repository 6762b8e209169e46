"""Fixtures the evaluation tests share."""

import functools

import pytest

from handray.inference import checkpoints as checkpoint


@pytest.fixture
def no_xla(monkeypatch):
    """Plain graphs: compiling the heads with XLA takes longer than these checks."""
    plain = functools.partial(checkpoint.load_trained_model, jit_compile=False)
    monkeypatch.setattr(checkpoint, "load_trained_model", plain)
