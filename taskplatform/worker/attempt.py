"""Running one claimed attempt: its parameters checked, under its timeout, its lease renewed,
cancel requests honoured, and its result checked to be storable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from taskplatform.errors import Cancelled, InvalidInputError, PermanentFailure, StoreError
from taskplatform.events.bus import EventBus
from taskplatform.models import BackgroundTask
from taskplatform.submission import TaskSubmitter, ensure_storable
from taskplatform.tasks.executable import BackgroundTaskExecutable
from taskplatform.worker.claims import ClaimingStore
from taskplatform.worker.config import WorkerConfig
from taskplatform.worker.context import ExecutionContext
from taskplatform.worker.outcomes import Failed, Outcome, Succeeded, format_traceback

log = logging.getLogger(__name__)


class AttemptRunner:
    """Runs an attempt in its own asyncio task next to a watcher that renews its lease every
    third of ``lease_seconds`` and looks for a cancel request every ``cancel_poll`` seconds."""

    def __init__(
        self,
        store: ClaimingStore,
        config: WorkerConfig,
        *,
        bus: EventBus,
        submitter: TaskSubmitter | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._submitter = submitter
        self._node_id = config.node_id
        self._default_timeout = config.default_timeout
        self._lease = timedelta(seconds=config.lease_seconds)
        self._cancel_poll = config.cancel_poll
        self._cancel_grace = config.cancel_grace
        self._progress_interval = config.progress_interval

    async def run_claimed(
        self, task: BackgroundTask, executable: BackgroundTaskExecutable[Any, Any], received_at: datetime
    ) -> tuple[Outcome, int, dict[str, Any] | None]:
        """Run the claimed attempt of ``task`` with a context of its own.

        Returns the outcome, how many children the task has (submitted by this attempt or,
        for a retried parent, by an earlier one) and, for a plain success, the attempt's last
        progress not written yet (its completion writes it, saving a store write).
        """
        cls = type(executable)
        earlier = task.sub_task_status_summary.total if task.sub_task_status_summary else 0
        try:
            params = cls.Params.model_validate(task.parameters)
        except ValidationError as exc:
            return Failed(exc, format_traceback(exc)), earlier, None
        ctx: ExecutionContext[Any] = ExecutionContext(
            task,
            params,
            bus=self._bus,
            submitter=self._submitter,
            node_id=self._node_id,
            progress_model=cls.ProgressModel,
            progress_interval=self._progress_interval,
            received_at=received_at,
        )
        outcome = _storable_outcome(await self.run(task, executable, ctx))
        children = max(ctx.children, earlier)
        if isinstance(outcome, Succeeded) and children == 0:
            progress = await ctx.take_pending_progress()
            if progress is not None and not _storable(progress, "progress"):
                progress = None  # the last progress is best effort; the result must be stored
            return outcome, children, progress
        try:
            await ctx.flush_progress()
        except Exception as exc:  # progress is best effort
            log.warning("task %s: last progress not written: %s", task.id, exc)
        return outcome, children, None

    async def run(
        self, task: BackgroundTask, executable: BackgroundTaskExecutable[Any, Any], ctx: ExecutionContext[Any]
    ) -> Outcome:
        """Run ``executable`` for ``task``'s claimed attempt and return its outcome."""
        cls = type(executable)
        timeout = cls.timeout if cls.timeout is not None else self._default_timeout
        attempt = asyncio.create_task(_execute(executable, ctx, timeout), name=f"attempt-{task.id}")
        watcher = asyncio.create_task(self._watch(task, ctx, attempt), name=f"watch-{task.id}")
        try:
            outcome = await attempt
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled (shutdown): propagate
            # The watcher stopped the attempt (cancel requested, or lease lost).
            return Failed(Cancelled("stopped on request"), "")
        finally:
            if not attempt.done():
                attempt.cancel()  # we are being cancelled: stop the attempt, then the watcher
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(watcher)
        if ctx.cancelled and isinstance(outcome, Failed):
            # Asked to stop, it stopped by raising something: that is a cancellation.
            stopped = Cancelled(f"stopped on request ({type(outcome.error).__name__})")
            return Failed(stopped, outcome.traceback)
        return outcome

    async def _watch(
        self, task: BackgroundTask, ctx: ExecutionContext[Any], attempt: asyncio.Task[Outcome]
    ) -> None:
        """While the attempt runs: renew its lease every third of the lease length, so no
        duplicate can take a live task over, and look for a cancel request every
        ``cancel_poll`` seconds: first ``ctx.cancelled`` turns True, and an attempt still
        running ``cancel_grace`` seconds later is cancelled."""
        loop = asyncio.get_running_loop()
        renew_every = self._lease.total_seconds() / 3
        next_renewal = loop.time() + renew_every
        stop_at: float | None = None
        owned = True

        def ask_to_stop(why: str, level: int = logging.INFO) -> None:
            nonlocal stop_at
            if not ctx.cancelled:
                log.log(level, "task %s: %s; asking the executable to stop", task.id, why)
                ctx.request_cancel()
                stop_at = loop.time() + self._cancel_grace

        while not attempt.done():
            # Woken early when the attempt ends; never cancelled mid-call, so a store call in
            # flight always finishes and returns its connection.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(attempt), min(self._cancel_poll, renew_every))
            if attempt.done():
                return
            current: BackgroundTask | None = None
            try:
                if owned and loop.time() >= next_renewal:
                    current = await self._store.renew_lease(
                        task.id,
                        node_id=self._node_id,
                        attempt=task.retry_count,
                        lease_until=self._store.now() + self._lease,
                    )
                    if current is None:
                        # Reaped or taken over: another attempt may run now. This one must stop,
                        # its outcome can no longer be recorded.
                        owned = False
                        ask_to_stop("lease lost to another attempt", logging.WARNING)
                    else:
                        next_renewal = loop.time() + renew_every  # only after a renewal succeeded
                elif owned and not ctx.cancelled:
                    current = await self._store.get(task.id)
            except StoreError as exc:
                log.warning("watching task %s: store unavailable (%s); will retry", task.id, exc)
            if current is not None and current.cancel_requested:
                ask_to_stop("cancellation requested")
            if stop_at is not None and loop.time() >= stop_at:
                attempt.cancel()
                stop_at = None


async def _execute(
    executable: BackgroundTaskExecutable[Any, Any], ctx: ExecutionContext[Any], timeout: float
) -> Outcome:
    cls = type(executable)
    try:
        async with asyncio.timeout(timeout):
            result = await executable.execute(ctx)
        if not isinstance(result, cls.Result):
            result = cls.Result.model_validate(result)
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # stopped from outside (cancel request or shutdown)
        return Failed(exc, format_traceback(exc))  # the executable raised it on its own
    except Exception as exc:
        return Failed(exc, format_traceback(exc))
    return Succeeded(result)


def _storable(value: Any, name: str) -> bool:
    try:
        ensure_storable(value, (name,))
    except InvalidInputError:
        return False
    return True


def _storable_outcome(outcome: Outcome) -> Outcome:
    """A result no store can keep as it is (NUL in text, integers beyond 64 bits, NaN) fails its
    attempt for good, naming the field, instead of failing every write of it."""
    if isinstance(outcome, Succeeded):
        try:
            ensure_storable(outcome.result.model_dump(mode="json"), ("result",))
        except (InvalidInputError, ValueError, TypeError, RecursionError) as exc:
            # (pydantic cannot serialize a result nested too deep: a ValueError of its own)
            error = PermanentFailure(f"the result cannot be stored: {exc}")
            return Failed(error, format_traceback(error))
    return outcome
