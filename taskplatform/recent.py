"""A bounded memory of the latest ids seen, for "have I handled this one already?" checks."""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``limit`` ids added; the oldest is forgotten first."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> bool:
        """Remember ``item``; True if it was not remembered yet."""
        if item in self._ids:
            return False
        self._ids[item] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True
