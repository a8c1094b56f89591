"""Every metric the Grafana dashboard and the alert rules use exists: the platform's in its
registry, RabbitMQ's in the list of rabbitmq_prometheus series the stack relies on."""

from __future__ import annotations

from taskplatform.metrics import Metrics
from tests.deploy.test_stack import metric_names_used

#: The rabbitmq_prometheus series the dashboard and alerts may use (per-queue series need
#: ``prometheus.return_per_object_metrics = true``, set in deploy/rabbitmq/rabbitmq.conf).
RABBITMQ_SERIES = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
}


def test_every_metric_the_dashboard_and_alerts_use_is_exposed() -> None:
    used = metric_names_used()
    exposed = Metrics().exposed_names()
    platform = {name for name in used if name.startswith("taskplatform_")}
    assert platform, "the dashboard uses platform metrics"
    assert not platform - exposed, f"not in the registry: {sorted(platform - exposed)}"
    rabbitmq = {name for name in used if name.startswith("rabbitmq_")}
    assert not rabbitmq - RABBITMQ_SERIES, f"unknown RabbitMQ series: {sorted(rabbitmq - RABBITMQ_SERIES)}"
    # and nothing the platform exposes is forgotten by the dashboard
    assert not exposed - used, f"exposed but on no panel or alert: {sorted(exposed - used)}"
