"""Ordered parallel map over worker processes, for the data tools (conversion, generation)."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


@contextlib.contextmanager
def process_map(workers: int, chunksize: int = 4) -> Iterator[Mapper]:
    """Yield a `map` whose results keep task order: in this process for one worker, else a pool.

    Workers are forked where the platform can (Linux): unlike spawn, that does not re-run the
    caller's main script in every worker, so plain scripts and notebooks need no main guard.
    The mapped functions touch only numpy and PIL, never TensorFlow's threads.
    """
    if workers <= 1:
        yield map
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        yield functools.partial(pool.imap, chunksize=chunksize)
