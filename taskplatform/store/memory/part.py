"""What every mixin of ``MemoryTaskStore`` shares: the data, and reaching it like a server."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any, TypeVar

from taskplatform.errors import StoreError
from taskplatform.models import AuditEntry, DeadLetter
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


class MemoryPart:
    """The store's data, reached through ``_reach`` by every operation."""

    #: False makes every operation raise StoreError, as an unreachable server would (tests of
    #: outages); ``answers()`` is then False. Set it back to True to end the outage.
    available: bool = True

    def __init__(self) -> None:
        self._data = MemoryData()
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
