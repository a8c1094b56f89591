"""The process-wide budget of request body bytes held in memory at once."""

from __future__ import annotations


class BodyBudget:
    """Counts the body bytes every request in this process holds; ``take`` refuses what would
    exceed ``max_bytes``, so many slow or concurrent uploads cannot exhaust the memory.

    One event loop uses it: no lock is needed.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when the budget cannot hold them."""
        if self.in_use + size > self.max_bytes:
            return False
        self.in_use += size
        return True

    def give_back(self, size: int) -> None:
        self.in_use = max(0, self.in_use - size)
