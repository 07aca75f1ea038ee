"""The micro-batcher groups concurrent inputs, keeps their order, honours max_batch, skips inputs
whose request gave up, refuses work when its queue is full and survives a failing batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from graftkit.serve.batching import MicroBatcher, Overloaded


class Model:
    """Doubles its inputs; records batch sizes; can be held while inputs pile up."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, batch: list[int]) -> list[int]:
        self.gate.wait(5)
        self.sizes.append(len(batch))
        if self.fail_on in batch:
            raise ValueError(f"bad input {self.fail_on}")
        return [2 * x for x in batch]


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_inputs_share_batches_in_order() -> None:
    model = Model()

    async def main() -> list[list[int]]:
        b = MicroBatcher(model, max_batch=8, max_wait_s=0.05)
        out = await asyncio.gather(*(b.submit([i]) for i in range(20)))
        await b.stop()
        return out

    assert run(main()) == [[2 * i] for i in range(20)]
    assert sum(model.sizes) == 20 and max(model.sizes) == 8 and len(model.sizes) <= 4


def test_inputs_arriving_while_the_model_runs_form_the_next_batch() -> None:
    model = Model()

    async def main() -> list[int]:
        b = MicroBatcher(model, max_batch=16, max_wait_s=0.0)  # no waiting at all
        model.gate.clear()
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # the worker holds [0] in the (blocked) model
        rest = [asyncio.ensure_future(b.submit([i])) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        model.gate.set()
        out = [(await first)[0]] + [(await r)[0] for r in rest]
        await b.stop()
        return out

    assert run(main()) == [2 * i for i in range(11)]
    assert model.sizes == [1, 10]


def test_max_batch_one_turns_batching_off() -> None:
    model = Model()

    async def main() -> None:
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.05)
        await asyncio.gather(*(b.submit([i]) for i in range(6)))
        await b.stop()

    run(main())
    assert model.sizes == [1] * 6


def test_a_request_with_many_inputs_is_split_by_max_batch() -> None:
    model = Model()

    async def main() -> list[int]:
        b = MicroBatcher(model, max_batch=4, max_wait_s=0.01)
        out = await b.submit(list(range(10)))
        await b.stop()
        return out

    assert run(main()) == [2 * i for i in range(10)]
    assert model.sizes == [4, 4, 2]


def test_inputs_of_requests_that_gave_up_are_skipped() -> None:
    model = Model()

    async def main() -> list[int]:
        b = MicroBatcher(model, max_batch=16, max_wait_s=0.0)
        model.gate.clear()
        blocker = asyncio.ensure_future(b.submit([100]))
        await asyncio.sleep(0.05)
        futures = b.submit_nowait([1, 2, 3])
        futures[1].cancel()  # e.g. its request timed out
        model.gate.set()
        await blocker
        out = [await futures[0], await futures[2]]
        await b.stop()
        return out

    assert run(main()) == [2, 6]
    assert model.sizes == [1, 2]


def test_a_full_queue_refuses_at_once() -> None:
    model = Model()

    async def main() -> None:
        b = MicroBatcher(model, max_batch=1, max_wait_s=0.0, max_queue=3)
        model.gate.clear()
        running = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # [0] is in the model; the queue is empty again
        queued = b.submit_nowait([1, 2, 3])
        with pytest.raises(Overloaded):
            b.submit_nowait([4])
        with pytest.raises(Overloaded):  # all or nothing
            b.submit_nowait([5, 6])
        assert b.pending == 3
        model.gate.set()
        assert await running == [0] and [await f for f in queued] == [2, 4, 6]
        await b.stop()

    run(main())


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    model = Model(fail_on=3)

    async def main() -> None:
        b = MicroBatcher(model, max_batch=8, max_wait_s=0.05)
        with pytest.raises(ValueError, match="bad input 3"):
            await b.submit([1, 3])
        assert await b.submit([5]) == [10]
        await b.stop()

    run(main())


def test_wrong_number_of_outputs_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        b = MicroBatcher(lambda xs: xs[:-1], max_batch=4, max_wait_s=0.01)
        with pytest.raises(RuntimeError, match="1 outputs for 2 inputs"):
            await b.submit([1, 2])
        await b.stop()

    run(main())


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, max_batch=0)
