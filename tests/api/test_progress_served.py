"""A completed task reads complete through the API: ``generate_summary`` reports 60 % and then
finishes; its progress is served as 100 % with its last message, in the task and in lists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from taskplatform.runtime import Runtime
from tests.support.api import client_of, served

pytestmark = pytest.mark.integration


async def test_a_completed_task_is_served_as_complete(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(role="dev", consume=True)
    async with served(runtime) as app, client_of(app) as client:
        body = {
            "task_type": "generate_summary",
            "parameters": {"text": "One. Two. Three.", "max_sentences": 1},
        }
        created = await client.post("/api/v1/tasks", json=body)
        assert created.status_code == 201
        task_id = created.json()["task_id"]
        async with asyncio.timeout(30):
            while (task := (await client.get(f"/api/v1/tasks/{task_id}")).json())["status"] != "COMPLETED":
                await asyncio.sleep(0.05)
        # The executable's last report said 60 % ("scored 3 sentences"); the task is done.
        assert task["progress"] == {"percent": 100.0, "message": "scored 3 sentences"}
        listed = (await client.get("/api/v1/tasks", params={"status": "COMPLETED"})).json()["items"]
        assert [t["progress"] for t in listed] == [task["progress"]]
