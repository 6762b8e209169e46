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

    Workers are spawned, not forked, so a caller that already runs threads (TensorFlow, Ray)
    cannot deadlock them; the mapped function must therefore be importable (module level).
    """
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield functools.partial(pool.imap, chunksize=chunksize)
