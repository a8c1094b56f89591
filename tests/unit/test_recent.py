"""RecentIds: a bounded memory of ids, oldest forgotten first."""

from __future__ import annotations

import pytest

from taskplatform.recent import RecentIds


def test_an_id_is_new_once_and_the_oldest_is_forgotten_past_the_limit() -> None:
    recent = RecentIds(2)
    assert recent.add("a") and recent.add("b")
    assert not recent.add("a")  # remembered: not new
    assert recent.add("c")  # a third: "a", the oldest, is forgotten
    assert "a" not in recent and "b" in recent and "c" in recent and len(recent) == 2
    assert recent.add("a")  # new again once forgotten
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(0)
