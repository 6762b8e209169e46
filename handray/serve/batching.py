"""Requests that arrive while the model is busy run together as the next batch.

Ray Serve's `@serve.batch` closes a batch after `batch_wait_timeout_s` whether or not the model
is free, so a lone request always waits that long for company, and under load batches form on a
timer instead of from what queued during the last run. Here a batch starts the moment the model
is free and takes everything queued, up to `max_batch_size`: an idle server runs a lone request
at once, a busy one runs full batches. `batch_wait_timeout_s` (0 by default) only adds a wait
for company when the model is idle and the batch is not full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """One batch at a time through `run(items) -> results` (same length, same order)."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        max_batch_size: int,
        batch_wait_timeout_s: float = 0.0,
    ):
        self._run = run
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        """`item`'s result, computed in the next batch the model runs."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._serve())
        return await future

    async def _serve(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not self._queue:  # what set the event ran in the last drain
                continue
            if self.batch_wait_timeout_s > 0 and len(self._queue) < self.max_batch_size:
                await asyncio.sleep(self.batch_wait_timeout_s)
            while self._queue:
                batch = self._queue[: self.max_batch_size]
                del self._queue[: self.max_batch_size]
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        live = [(item, future) for item, future in batch if not future.done()]  # not cancelled
        if not live:
            return
        try:
            results = await self._run([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"{len(live)} items in a batch gave {len(results)} results")
        except Exception as err:
            for _, future in live:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)
