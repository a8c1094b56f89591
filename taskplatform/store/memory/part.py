"""What every mixin of ``MemoryTaskStore`` shares: the data, and reaching it like a server."""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import dataclass, field
from typing import Any, TypeVar

from taskplatform.errors import StoreError
from taskplatform.models import AuditEntry, DeadLetter
from taskplatform.models.attempt import AttemptRecord
from taskplatform.models.worker import WorkerRecord
from taskplatform.store.rollup import LedgerEntry

T = TypeVar("T")


@dataclass
class MemoryData:
    """Everything a memory store holds. Task documents are plain dicts (``model_dump``); nothing
    stored is ever handed out, only deep copies."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Each parent's roll-up ledger, by child id (see ``taskplatform.store.rollup``).
    ledgers: dict[str, dict[str, LedgerEntry]] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter] = field(default_factory=dict)
    audit: dict[str, AuditEntry] = field(default_factory=dict)
    #: Rate-limit keys (as stored: ``rate_key``) and their theoretical arrival time.
    rates: dict[str, float] = field(default_factory=dict)
    #: The worker registry, by node id.
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    #: Each task's attempt history, by record id (see ``taskplatform.store.history``).
    attempts: dict[str, dict[str, AttemptRecord]] = field(default_factory=dict)


#: The named datasets of this process (``memory://<name>``), shared by every store of that name.
_DATASETS: dict[str, MemoryData] = {}
_DATASETS_LOCK = threading.Lock()


def dataset_name(url: str) -> str:
    """The dataset a ``memory://`` URL names (``memory://shared`` -> ``shared``); "" for none."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    return rest.split("?", 1)[0].strip("/")


def dataset_of(url: str) -> MemoryData:
    """A named URL's dataset, the same for every store of this process naming it (created on
    first use); a URL without a name gets data of its own."""
    name = dataset_name(url)
    if not name:
        return MemoryData()
    with _DATASETS_LOCK:
        return _DATASETS.setdefault(name, MemoryData())


def forget_dataset(name: str) -> bool:
    """Drop the named dataset (stores holding it keep it; the next store of that name starts
    empty). Whether there was one."""
    with _DATASETS_LOCK:
        return _DATASETS.pop(name, None) is not None


class MemoryPart:
    """The store's data, reached through ``_reach`` by every operation."""

    #: False makes every operation raise StoreError, as an unreachable server would (tests of
    #: outages); ``answers()`` is then False. Set it back to True to end the outage.
    available: bool = True

    def __init__(self, data: MemoryData | None = None) -> None:
        self._data = data if data is not None else MemoryData()
        self._open = False

    async def _reach(self) -> MemoryData:
        """The data, after yielding to the event loop once, as a round trip to a server would:
        concurrent callers interleave between operations. Every operation then runs to its end
        without awaiting, so each is atomic. StoreError when closed or ``available`` is False."""
        await asyncio.sleep(0)
        if not self._open:
            raise StoreError("store is not open; call open() first")
        if not self.available:
            raise StoreError("store unavailable (memory store: available is False)")
        return self._data


def copied(value: T) -> T:
    """A deep copy: what goes in or comes out of the store shares nothing with what is kept."""
    return copy.deepcopy(value)
