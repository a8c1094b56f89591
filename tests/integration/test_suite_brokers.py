"""Which broker the suite uses: its URL and virtual host, and the RabbitMQ node of its own that
the disruptive tests get instead of the shared broker."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import aio_pika
import pytest

from tests.support import services
from tests.support.rabbit_node import RabbitNode, RabbitNodeError, find_scripts
from tests.support.services import (
    RABBITMQ_URL,
    _vhost_problem,
    _with_vhost,
    amqp_url_via,
    open_disruptable_broker,
    rabbitmq_address,
    require_rabbitmq,
    vhost_of,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("url", "vhost", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "tp-suite", "amqp://guest:guest@127.0.0.1:5672/tp-suite"),
        ("amqp://u:p@rabbit:5673/other?heartbeat=5", "a/b", "amqp://u:p@rabbit:5673/a%2Fb?heartbeat=5"),
        ("amqp://guest:guest@127.0.0.1:5672/kept", None, "amqp://guest:guest@127.0.0.1:5672/kept"),
    ],
)
def test_the_vhost_setting_replaces_the_urls_virtual_host(url: str, vhost: str | None, expected: str) -> None:
    assert _with_vhost(url, vhost) == expected
    assert vhost_of(expected) == (vhost or "kept")


def test_a_proxy_url_keeps_credentials_and_virtual_host() -> None:
    url = "amqp://u:p%40ss@rabbit:5673/tp-suite"
    assert rabbitmq_address(url) == ("rabbit", 5673)
    assert amqp_url_via("127.0.0.1", 40001, url) == "amqp://u:p%40ss@127.0.0.1:40001/tp-suite"
    assert amqp_url_via("127.0.0.1", 40001, "amqp://rabbit/") == "amqp://127.0.0.1:40001/"
    assert vhost_of("amqp://rabbit") == "/"


def test_a_missing_virtual_host_is_reported_with_the_commands_that_create_it() -> None:
    require_rabbitmq()
    vhost = f"tp-missing-{uuid.uuid4().hex[:8]}"
    problem = _vhost_problem(_with_vhost(RABBITMQ_URL, vhost))
    assert problem is not None
    assert f"cannot open the test virtual host {vhost!r}" in problem
    assert f"rabbitmqctl add_vhost {vhost} && rabbitmqctl set_permissions -p {vhost}" in problem
    assert ":guest@" not in problem  # the password is masked
    assert _vhost_problem(RABBITMQ_URL) is None


def test_without_a_rabbitmq_server_the_disruptive_tests_skip_locally_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(services, "BROKER_DISRUPTABLE", False)
    monkeypatch.setenv("TASKPLATFORM_TEST_RABBITMQ_SERVER", str(tmp_path / "rabbitmq-server"))
    monkeypatch.setattr("tests.support.rabbit_node.PACKAGE_SCRIPTS", tmp_path)
    with pytest.raises(RabbitNodeError, match="TASKPLATFORM_TEST_RABBITMQ_SERVER"):
        find_scripts(str(tmp_path / "rabbitmq-server"))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="SKIPPED LOUDLY: the disruptive broker tests need"):
        with open_disruptable_broker():
            pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and the disruptive broker tests need"):
        with open_disruptable_broker():
            pass


def test_a_declared_disruptable_broker_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    require_rabbitmq()
    monkeypatch.setattr(services, "BROKER_DISRUPTABLE", True)
    monkeypatch.setenv("TASKPLATFORM_TEST_RABBITMQ_NODE", "rabbit@elsewhere")
    started: list[RabbitNode] = []
    with open_disruptable_broker(started) as broker:
        assert isinstance(broker, services.ConfiguredBroker)
        assert (broker.url, broker.node) == (RABBITMQ_URL, "rabbit@elsewhere")
    assert started == []


@pytest.mark.slow
async def test_an_own_node_serves_beside_the_shared_broker_and_leaves_nothing_behind() -> None:
    try:
        scripts = find_scripts()
    except RabbitNodeError as exc:
        services.missing(str(exc))
    node = RabbitNode(scripts)
    try:
        node.start()
        assert node.startup_seconds is not None
        assert node.url != RABBITMQ_URL and node.amqp_port != rabbitmq_address()[1]
        connection = await aio_pika.connect(node.url, timeout=10)
        await connection.close()
        assert f"Node name: {node.name}" in await node.actl("status")
    finally:
        node.stop()
    assert not node.base.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", node.amqp_port), timeout=2):
        pass
