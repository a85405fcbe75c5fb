"""Group commit: one bad item in a batch fails alone; the others are written."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.batching import GroupCommit
from gateway.errors import DatabaseUnavailable


class Writer:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.written: list[str] = []

    async def flush(self, items: list[str]) -> Sequence[str | BaseException]:
        self.batches.append(items)
        await asyncio.sleep(0.001)
        if "down" in items:
            raise DatabaseUnavailable("gone")
        if any(i.startswith("bad") for i in items):
            raise ValueError("the whole statement failed")
        self.written += items
        return [i.upper() for i in items]


async def test_one_bad_item_fails_alone_and_every_other_item_is_written() -> None:
    writer = Writer()
    batcher: GroupCommit[str, str] = GroupCommit(writer.flush, max_batch=64,
                                                 fails_together=(DatabaseUnavailable,))
    items = [f"ok{i}" for i in range(40)] + ["bad"] + [f"ok{i}" for i in range(40, 60)]
    results = await asyncio.gather(*[batcher.submit(i) for i in items],
                                   return_exceptions=True)
    await batcher.close()
    failed = [i for i, r in zip(items, results, strict=True) if isinstance(r, BaseException)]
    assert failed == ["bad"]
    assert sorted(writer.written) == sorted(i for i in items if i != "bad")
    assert all(r == i.upper() for i, r in zip(items, results, strict=True) if i != "bad")
    assert max(len(b) for b in writer.batches) > 1  # they were batched at all


async def test_a_failure_that_would_fail_any_write_fails_the_batch_at_once() -> None:
    writer = Writer()
    batcher: GroupCommit[str, str] = GroupCommit(writer.flush,
                                                 fails_together=(DatabaseUnavailable,))
    results = await asyncio.gather(*[batcher.submit(i) for i in ("a", "down", "b")],
                                   return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert len(writer.batches) == 1


async def test_items_submitted_after_close_are_refused() -> None:
    batcher: GroupCommit[str, str] = GroupCommit(Writer().flush)
    await batcher.close()
    with pytest.raises(RuntimeError):
        await batcher.submit("late")


async def test_an_item_submitted_as_the_last_flusher_finishes_is_still_written() -> None:
    # The caller whose item a flusher wrote last resumes before that flusher's done
    # callback runs; what it submits then must start a flusher of its own, not wait for a
    # later submit that may never come (a request that never got its answer).
    writer = Writer()
    batcher: GroupCommit[str, str] = GroupCommit(writer.flush, max_flushers=1)
    for i in range(5):
        assert await batcher.submit(f"a{i}") == f"A{i}"
        # Bounded so that a lost item fails the test instead of hanging it.
        assert await asyncio.wait_for(batcher.submit(f"b{i}"), timeout=10) == f"B{i}"
    await batcher.close()


async def test_a_submitted_item_is_a_future_that_its_batch_settles() -> None:
    async def flush(items: list[int]) -> list[int | BaseException]:
        await asyncio.sleep(0)
        return [i * 2 for i in items]

    batcher: GroupCommit[int, int] = GroupCommit(flush)
    pending = [batcher.submit(i) for i in range(3)]
    assert all(isinstance(p, asyncio.Future) for p in pending)
    assert await asyncio.gather(*pending) == [0, 2, 4]
    await batcher.close()


async def test_with_a_minimum_interval_a_trickle_of_items_shares_one_write() -> None:
    """The dispatcher's results: after a write, the next batch waits out the interval, so
    items that trickle in meanwhile are written together; every item is still written."""
    writer = Writer()
    batcher: GroupCommit[str, str] = GroupCommit(writer.flush, min_interval_s=0.5)
    assert await batcher.submit("first") == "FIRST"
    answers = []
    for n in range(9):
        answers.append(batcher.submit(f"item{n}"))
        await asyncio.sleep(0.002)
    assert await asyncio.gather(*answers) == [f"ITEM{n}" for n in range(9)]
    assert writer.batches == [["first"], [f"item{n}" for n in range(9)]]
    await batcher.close()


async def test_without_an_interval_a_trickle_of_items_is_written_as_it_comes() -> None:
    writer = Writer()
    batcher: GroupCommit[str, str] = GroupCommit(writer.flush)
    assert await batcher.submit("first") == "FIRST"
    answers = []
    for n in range(9):
        answers.append(batcher.submit(f"item{n}"))
        await asyncio.sleep(0.002)
    await asyncio.gather(*answers)
    assert len(writer.batches) >= 6
    await batcher.close()


class Gated:
    """A writer whose writes wait until let go, counting how many are in flight."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()

    async def flush(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(items)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await self.gate.wait()
        self.in_flight -= 1
        return items

    async def burst(self, batcher: GroupCommit[int, int], count: int) -> list[list[int]]:
        """Submit ``count`` items at once: the batches begun before any write ended
        (every item's answer checked, the batcher closed)."""
        answers = [batcher.submit(i) for i in range(count)]
        await asyncio.sleep(0.01)
        begun = list(self.batches)
        self.gate.set()
        assert await asyncio.gather(*answers) == list(range(count))
        await batcher.close()
        return begun

    async def beside_a_commit(self, batcher: GroupCommit[int, int],
                              count: int) -> list[list[int]]:
        """Submit one item, then ``count`` more while its commit is in flight: the
        batches begun before any write ended (every item's answer checked, the batcher
        closed)."""
        first = batcher.submit(0)
        await asyncio.sleep(0.01)
        later = [batcher.submit(i) for i in range(1, count + 1)]
        await asyncio.sleep(0.01)
        begun = list(self.batches)
        self.gate.set()
        assert await asyncio.gather(first, *later) == list(range(count + 1))
        await batcher.close()
        return begun


async def test_a_burst_callers_wait_on_is_shared_so_two_commits_are_in_flight() -> None:
    """Written in one batch, a burst would be answered at once and come back at once,
    and the process would wait idle on each commit in turn (lock-step)."""
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=32)
    assert await writer.burst(batcher, 64) == [list(range(32)), list(range(32, 64))]
    assert writer.most_in_flight == 2


async def test_with_one_commit_in_flight_the_other_flusher_takes_all_that_waits() -> None:
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=5)
    first = [batcher.submit(i) for i in range(10)]
    await asyncio.sleep(0.01)
    later = [batcher.submit(i) for i in range(10, 20)]
    await asyncio.sleep(0.01)
    assert writer.batches == [list(range(5)), list(range(5, 10))]  # both busy: it waits
    writer.gate.set()
    assert await asyncio.gather(*first, *later) == list(range(20))
    # Not shared: the other flusher is still writing when the first takes them.
    assert writer.batches[2:] == [list(range(10, 20))]
    await batcher.close()


async def test_a_burst_whose_shares_would_be_small_is_written_in_one_batch() -> None:
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=32)
    assert await writer.burst(batcher, 63) == [list(range(63))]


async def test_without_a_share_a_burst_is_written_in_one_batch() -> None:
    """The dispatcher's results: nobody waits on them, and fewer writes cost less."""
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2)
    assert await writer.burst(batcher, 64) == [list(range(64))]


async def test_while_a_commit_is_in_flight_fewer_than_a_share_wait_for_it() -> None:
    """A second statement of a few items would only cost the database: they go with the
    next commit, when the one in flight is done."""
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=32)
    assert await writer.beside_a_commit(batcher, 31) == [[0]]
    assert writer.batches == [[0], list(range(1, 32))]


async def test_while_a_commit_is_in_flight_a_share_starts_a_second() -> None:
    writer = Gated()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=32)
    assert await writer.beside_a_commit(batcher, 32) == [[0], list(range(1, 33))]
    assert writer.most_in_flight == 2


async def test_what_waited_for_a_commit_that_was_cancelled_is_still_written() -> None:
    """The flusher in flight ends without looking at the queue again: another takes
    what waited for it."""
    writer = Gated()
    dies = asyncio.Event()

    async def flush(items: list[int]) -> Sequence[int | BaseException]:
        if items == [0]:
            await dies.wait()
            raise asyncio.CancelledError  # as ingest's write passes a cancellation on
        return await writer.flush(items)

    batcher: GroupCommit[int, int] = GroupCommit(flush, max_flushers=2, min_share=32)
    first = batcher.submit(0)
    await asyncio.sleep(0.01)
    waiting = [batcher.submit(i) for i in range(1, 5)]
    await asyncio.sleep(0.01)
    dies.set()
    writer.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(asyncio.gather(*waiting), timeout=10) == [1, 2, 3, 4]
    await batcher.close()


async def test_an_item_whose_flusher_was_cancelled_before_it_ran_is_still_written() -> None:
    writer = Gated()
    writer.gate.set()
    batcher: GroupCommit[int, int] = GroupCommit(writer.flush, max_flushers=2, min_share=32)
    answer = batcher.submit(7)
    for task in asyncio.all_tasks():
        if task.get_name() == "batch-flusher":
            task.cancel()
    assert await asyncio.wait_for(answer, timeout=10) == 7
    await batcher.close()


async def test_a_failed_batch_written_in_halves_holds_up_no_other_item() -> None:
    """Its halves take several round trips: an item that comes meanwhile gets a commit
    of its own instead of waiting for all of them."""
    writer = Gated()

    async def flush(items: list[int]) -> Sequence[int | BaseException]:
        if -1 in items:
            writer.batches.append(items)
            raise ValueError("the whole statement failed")
        return await writer.flush(items)

    batcher: GroupCommit[int, int] = GroupCommit(flush, max_flushers=2, min_share=32)
    failing = [batcher.submit(i) for i in (1, -1, 3, 4)]
    await asyncio.sleep(0.01)
    assert writer.batches == [[1, -1, 3, 4], [1, -1], [1]]  # [1] waits at the gate
    lone = batcher.submit(9)
    await asyncio.sleep(0.01)
    assert writer.batches[-1] == [9]
    writer.gate.set()
    results = await asyncio.gather(*failing, lone, return_exceptions=True)
    assert isinstance(results[1], ValueError) and [results[i] for i in (0, 2, 3, 4)] == [
        1, 3, 4, 9]
    await batcher.close()


@pytest.mark.parametrize("answers", [1, 3], ids=["too-few", "too-many"])
async def test_a_flush_that_answers_the_wrong_number_of_items_fails_its_batch_and_no_other(
        answers: int, caplog: pytest.LogCaptureFixture) -> None:
    """Which answer belongs to which item is then unknown: every item of that batch gets
    an error (none waits for ever, none gets another's answer) and the next batch is
    written as usual."""
    async def flush(items: list[str]) -> Sequence[str | BaseException]:
        await asyncio.sleep(0)
        if "odd" in items:
            return ["?"] * answers
        return [i.upper() for i in items]

    batcher: GroupCommit[str, str] = GroupCommit(flush, name="ingest")
    broken = [batcher.submit(i) for i in ("odd", "a")]
    results = await asyncio.wait_for(asyncio.gather(*broken, return_exceptions=True),
                                     timeout=10)
    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in results)
    assert "ingest: a flush answered" in caplog.text
    assert await asyncio.wait_for(batcher.submit("b"), timeout=10) == "B"
    await batcher.close()
