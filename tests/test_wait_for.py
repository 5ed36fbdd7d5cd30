"""``asyncio.wait_for`` as the server runs it: in the caller's task, same contract."""

import asyncio

import pytest

import wait_for


def test_installed_for_pipecat_modules():
    """Pipecat's transports call ``asyncio.wait_for`` through the module: they get ours."""
    import pipecat.transports.base_input as base_input

    assert base_input.asyncio.wait_for is wait_for.wait_for


@pytest.mark.asyncio
async def test_the_awaitable_runs_in_the_callers_task_with_no_extra_loop_turns():
    caller = asyncio.current_task()
    seen = []

    async def work():
        seen.append(asyncio.current_task())
        return 7

    turns = 0
    done = False

    async def count_turns():
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)  # the counter is running
    before = turns
    assert await asyncio.wait_for(work(), timeout=5) == 7
    after = turns
    done = True
    await counter
    assert seen == [caller]
    assert after == before  # no loop turn passed: a task per call costs two


@pytest.mark.asyncio
async def test_timeout_cancels_the_awaitable_and_waits_for_its_end():
    events = []

    async def slow():
        try:
            await asyncio.sleep(10)
        finally:
            events.append("cleaned up")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow(), timeout=0.01)
    assert events == ["cleaned up"]


@pytest.mark.asyncio
async def test_cancelling_the_caller_cancels_the_awaitable_and_is_no_timeout():
    events = []

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    waiter = asyncio.create_task(asyncio.wait_for(slow(), timeout=5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert events == ["cancelled"]


@pytest.mark.asyncio
async def test_errors_of_the_awaitable_pass_through():
    async def broken():
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        await asyncio.wait_for(broken(), timeout=1)


@pytest.mark.asyncio
async def test_no_timeout_and_zero_timeout():
    async def value():
        return "ok"

    assert await asyncio.wait_for(value(), timeout=None) == "ok"
    done = asyncio.get_running_loop().create_future()
    done.set_result(3)
    assert await asyncio.wait_for(done, timeout=0) == 3
    pending = asyncio.ensure_future(asyncio.sleep(10))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pending, timeout=0)
    assert pending.cancelled()


@pytest.mark.asyncio
async def test_a_queue_get_that_timed_out_takes_no_item():
    """The way Pipecat's audio tasks use it: a timed-out ``get`` leaves the queue whole."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), timeout=0.01)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert [await asyncio.wait_for(queue.get(), timeout=1) for _ in range(2)] == [1, 2]
