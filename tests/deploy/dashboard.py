"""The Grafana dashboard as data, for the tests of the file and of the running platform: its
panels' queries and variables, the RabbitMQ series it may use, and ``with_bool``, which makes a
comparison keep every series."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.deploy.stack_files import DASHBOARD_FILE, dashboard_panels

#: The rabbitmq_prometheus series the dashboard and alerts may use (per-queue series need
#: ``prometheus.return_per_object_metrics = true``, set in deploy/rabbitmq/rabbitmq.conf).
RABBITMQ_SERIES = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
}
SELECTOR = re.compile(r"(?<![\w:])(\w+)\{([^}]*)\}")


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return data


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query of the dashboard."""
    return [(p, t) for p in dashboard_panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = dashboard["templating"]["list"]
    return variables


def with_bool(expr: str) -> str:
    """``expr`` with ``bool`` after each comparison (outside label matchers, ranges and strings):
    a comparison then returns 0 or 1 for every series instead of dropping the false ones."""
    out: list[str] = []
    i, depth, quote = 0, 0, ""
    while i < len(expr):
        char = expr[i]
        if quote:
            out.append(char)
            if char == "\\":
                out.append(expr[i + 1])
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
            out.append(char)
        elif char in "{[":
            depth += 1
            out.append(char)
        elif char in "}]":
            depth -= 1
            out.append(char)
        elif depth == 0 and (op := re.match(r"==|!=|>=|<=|>|<", expr[i:])):
            out.append(op.group(0))
            i += len(op.group(0))
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)
