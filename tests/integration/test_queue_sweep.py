"""The suite sweeps what its tests leave on the shared broker: every queue and exchange a
process of the suite may declare under a test's prefix goes, after each module."""

from __future__ import annotations

import uuid

import aio_pika
import pytest

from tests.support.server import delete_topology_now, served_topology, sweep_prefixes
from tests.support.services import RABBITMQ_URL, require_rabbitmq
from topology import declare_topology

pytestmark = [pytest.mark.integration]


async def _exists(connection: aio_pika.abc.AbstractRobustConnection, queue: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_a_topology_left_behind_is_swept_and_another_prefix_is_kept() -> None:
    require_rabbitmq()
    left, kept = f"sw{uuid.uuid4().hex[:8]}.", f"sk{uuid.uuid4().hex[:8]}."
    connection = await aio_pika.connect_robust(RABBITMQ_URL, timeout=10)
    try:
        for prefix in (left, kept):
            await declare_topology(connection, served_topology(prefix))
        left_topology, kept_topology = served_topology(left), served_topology(kept)
        assert await _exists(connection, left_topology.dead_letter_queue)

        assert await sweep_prefixes([left]) == 1

        for queue in left_topology.queues:
            assert not await _exists(connection, queue.name), queue.name
        assert await _exists(connection, kept_topology.dead_letter_queue)  # not its prefix
    finally:
        await sweep_prefixes([left, kept])
        await connection.close()


async def test_sweeping_nothing_does_nothing() -> None:
    assert await sweep_prefixes([]) == 0


async def test_a_broker_that_does_not_answer_is_a_warning_not_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await sweep_prefixes(["t0."], url="amqp://guest:guest@127.0.0.1:1/", timeout=5) == 0
    assert "warning: sweeping the queues of 1 test prefixes failed" in capsys.readouterr().out


def test_a_server_topology_that_cannot_be_deleted_is_a_warning_not_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    delete_topology_now(served_topology("t0."), url="amqp://guest:guest@127.0.0.1:1/", timeout=5)
    assert "warning: deleting the topology t0.tasks.exchange failed" in capsys.readouterr().out
