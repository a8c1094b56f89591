"""The published-marker: outbox entries marked in batches off the submit path; a store that fails
to take a batch costs that batch only (the relay republishes it), never the marker's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from taskplatform.errors import StoreError
from taskplatform.outbox import PublishedMarker


class MarkingStore:
    """What the marker uses of the store: ``mark_published``, recorded; ``fail`` batches raise."""

    def __init__(self) -> None:
        self.marked: list[list[str]] = []
        self.fail = 0

    async def mark_published(self, task_ids: Sequence[str], *, owner: str | None = None) -> int:
        if self.fail:
            self.fail -= 1
            raise StoreError("the store is unreachable (test)")
        self.marked.append(list(task_ids))
        return len(task_ids)


async def test_adding_before_start_is_a_programming_error() -> None:
    marker = PublishedMarker(MarkingStore())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="start"):
        marker.add(["t1"])
    await marker.stop()  # stopping one never started is a no-op


async def test_ids_added_together_are_marked_in_one_statement_after_the_linger() -> None:
    store = MarkingStore()
    marker = PublishedMarker(store, linger=0.01)  # type: ignore[arg-type]
    marker.start()
    marker.start()  # idempotent: one loop
    marker.add(["a", "b"])
    marker.add(["c"])
    await asyncio.wait_for(marker.flush(), 2)
    assert store.marked == [["a", "b", "c"]]
    await marker.stop()


async def test_a_full_batch_is_written_at_once_without_the_linger() -> None:
    store = MarkingStore()
    marker = PublishedMarker(store, max_batch=2, linger=60)  # type: ignore[arg-type]
    marker.start()
    marker.add(["a", "b", "c"])
    await asyncio.wait_for(marker.flush(), 2)  # a 60 s linger would time this out
    assert store.marked == [["a", "b"], ["c"]]
    await marker.stop()


async def test_a_batch_the_store_refuses_is_logged_and_left_to_the_relay_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MarkingStore()
    store.fail = 1
    marker = PublishedMarker(store, linger=0.01)  # type: ignore[arg-type]
    marker.start()
    with caplog.at_level(logging.WARNING, logger="taskplatform.outbox"):
        marker.add(["lost"])
        await asyncio.wait_for(marker.flush(), 2)
    assert store.marked == []
    assert "could not mark 1 outbox entries published" in caplog.text
    marker.add(["next"])
    await asyncio.wait_for(marker.flush(), 2)
    assert store.marked == [["next"]]
    await marker.stop()
