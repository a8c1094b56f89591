"""The TaskStore contract, idempotency keys: one task per (user, key)."""

from __future__ import annotations

import pytest

from taskplatform.errors import DuplicateTaskError
from taskplatform.store import BaseTaskStore
from tests.store.helpers import make_task


async def test_a_key_names_one_task_per_user(store: BaseTaskStore) -> None:
    first = make_task(user_id="u1", idempotency_key="order-42")
    await store.create(first)
    with pytest.raises(DuplicateTaskError):
        await store.create(make_task(user_id="u1", idempotency_key="order-42"))
    other_user = make_task(user_id="u2", idempotency_key="order-42")
    await store.create(other_user)  # the same key from another user is another task
    found = await store.find_by_idempotency_key("u1", "order-42")
    assert found is not None and found.id == first.id and found.idempotency_key == "order-42"
    assert (await store.find_by_idempotency_key("u2", "order-42")).id == other_user.id  # type: ignore[union-attr]
    assert await store.find_by_idempotency_key("u3", "order-42") is None


async def test_tasks_without_a_key_are_never_deduplicated(store: BaseTaskStore) -> None:
    await store.create_many([make_task(user_id="u1"), make_task(user_id="u1"), make_task()])
    assert sum((await store.count_by_status()).values()) == 3


async def test_an_anonymous_key_is_unique_among_anonymous_submissions(store: BaseTaskStore) -> None:
    await store.create(make_task(idempotency_key="k"))
    with pytest.raises(DuplicateTaskError):
        await store.create(make_task(idempotency_key="k"))
    assert await store.find_by_idempotency_key(None, "k") is not None
