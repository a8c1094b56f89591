"""WorkerConfig needs its dead-letter exchange; the recorder logs under the settlement logger.

With an empty exchange a refused delivery's copy would go to the default exchange under its
routing key (unroutable, or into a queue of that name) instead of the dead-letter queue, so the
exchange has no default. Operators filter the worker's settlement lines on
``taskplatform.worker.settlement``; the recorder's store-retry lines are among them.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from taskplatform.errors import StoreError
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.recording import EventRecorder

SETTLEMENT = "taskplatform.worker.settlement"


def test_the_dead_letter_exchange_is_required() -> None:
    with pytest.raises(TypeError, match="dead_letter_exchange"):
        WorkerConfig(node_id="n")  # type: ignore[call-arg]
    field = {f.name: f for f in dataclasses.fields(WorkerConfig)}["dead_letter_exchange"]
    assert field.default is dataclasses.MISSING
    assert WorkerConfig(node_id="n", dead_letter_exchange="dlx").dead_letter_exchange == "dlx"


class Unmarkable:
    """A store whose outbox mark fails."""

    async def mark_published(self, ids: list[str], *, owner: str) -> int:
        raise StoreError("down")


async def test_a_failed_retry_mark_is_logged_by_the_settlement_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    recorder = EventRecorder(Unmarkable(), EventBus(), node_id="n", store_hold=1.0)  # type: ignore[arg-type]
    task = BackgroundTask(task_type="t")
    await recorder.mark_retry_published(task)
    lines = [r for r in caplog.records if "could not mark the retry" in r.getMessage()]
    assert [r.name for r in lines] == [SETTLEMENT]
    assert task.id in lines[0].getMessage()
