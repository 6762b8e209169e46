"""The model replica's batcher: a lone request runs at once, requests that queue while the model
is busy run together next, in order, and a failure or a cancelled caller touches only its own."""

import asyncio

import pytest

from handray.serve.batching import Batcher


class Model:
    """Records each batch; each run waits until the test lets it finish (`release`)."""

    def __init__(self, hold: bool = True):
        self.batches: list[list[int]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if -1 in items:
            raise ValueError("bad item")
        return [item * 10 for item in items]


def test_a_lone_request_runs_alone_without_waiting_for_company():
    async def scenario():
        model = Model(hold=False)
        batcher = Batcher(model.run, max_batch_size=8)
        result = await asyncio.wait_for(batcher.submit(3), timeout=1)
        return result, model.batches

    assert asyncio.run(scenario()) == (30, [[3]])


def test_requests_queued_while_busy_run_as_the_next_batches_capped_and_in_order():
    async def scenario():
        model = Model()
        batcher = Batcher(model.run, max_batch_size=4)
        first = asyncio.create_task(batcher.submit(0))
        await model.started.wait()  # the model is now busy with [0]
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
        await asyncio.sleep(0)
        model.gate.set()
        results = await asyncio.gather(first, *queued)
        return results, model.batches

    results, batches = asyncio.run(scenario())
    assert results == [i * 10 for i in range(11)]
    assert batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_an_idle_model_waits_batch_wait_timeout_for_company():
    async def scenario():
        model = Model(hold=False)
        batcher = Batcher(model.run, max_batch_size=8, batch_wait_timeout_s=0.2)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit(2))
        return await asyncio.gather(first, second), model.batches

    assert asyncio.run(scenario()) == ([10, 20], [[1, 2]])


def test_a_failing_batch_fails_its_own_requests_and_the_next_batch_still_runs():
    async def scenario():
        model = Model()
        batcher = Batcher(model.run, max_batch_size=2)
        first = asyncio.create_task(batcher.submit(-1))
        await model.started.wait()
        later = asyncio.create_task(batcher.submit(5))
        model.gate.set()
        with pytest.raises(ValueError, match="bad item"):
            await first
        return await later

    assert asyncio.run(scenario()) == 50


def test_a_cancelled_request_is_left_out_of_its_batch():
    async def scenario():
        model = Model()
        batcher = Batcher(model.run, max_batch_size=8)
        first = asyncio.create_task(batcher.submit(1))
        await model.started.wait()
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        model.gate.set()
        return await first, await kept, model.batches

    assert asyncio.run(scenario()) == (10, 30, [[1], [3]])
