"""The deployment files of ``deploy/`` as data, for the tests that check them: their paths, the
compose services' environments and mounts, and the metric names the dashboard and alerts use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_FILE = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "taskplatform.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

SERVICES = {"rabbitmq", "mongo", "api", "worker", "grpc", "prometheus", "grafana"}
PLATFORM_SERVICES = ("api", "worker", "grpc")
API_JOB, WORKER_JOB, RABBITMQ_JOB = "taskplatform-api", "taskplatform-worker", "rabbitmq"
DATASOURCE_UID = "prometheus"
#: Panels and variables use the dashboard's datasource variable (its default: the one chosen on
#: import; provisioned, Grafana takes the first Prometheus datasource, the stack's only one).
DASHBOARD_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

HISTOGRAM_SUFFIX = re.compile(r"_(?:bucket|sum|count)$")
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:taskplatform|grpc_server|rabbitmq)_[A-Za-z0-9_:]*)")
STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
SETTING_VAR = re.compile(r"\bTASKPLATFORM_([A-Z0-9_]+)\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
REQUIRED_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of a service's bind mounts; named volumes are left out."""
    mounts: list[tuple[Path, PurePosixPath]] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":", 1)[0]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/", "~")):
            mounts.append(((COMPOSE_FILE.parent / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path_of(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a container path of ``service`` comes from, through its bind mounts."""
    wanted = PurePosixPath(container_path)
    for host, target in bind_mounts(service):
        if wanted == target:
            return host
        if target in wanted.parents:
            return host / wanted.relative_to(target)
    return None


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return exprs


def alert_exprs() -> list[str]:
    return [str(rule["expr"]) for group in load_yaml(ALERTS_FILE)["groups"] for rule in group["rules"]]


def names_in(expr: str) -> set[str]:
    bare = STRING_LITERAL.sub('""', expr)  # label values are not metric names
    return {HISTOGRAM_SUFFIX.sub("", name) for name in METRIC_NAME.findall(bare)}


def metric_names_used() -> set[str]:
    """Every ``taskplatform_…``, ``grpc_server_…`` and ``rabbitmq_…`` metric name the dashboard
    (its targets and template variables) and the alert rules use: histograms by their base name
    (``_bucket``, ``_sum`` and ``_count`` stripped), counters as exposed (with ``_total``)."""
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    names: set[str] = set()
    for expr in (*dashboard_exprs(dashboard), *alert_exprs()):
        names |= names_in(expr)
    return names


#: Compose-level variables every secret comes from (not TASKPLATFORM_ settings: only the
#: platform's own settings carry that prefix), each required by ``${VAR:?message}``.
REQUIRED_SECRETS = (
    "TASKPLATFORM_JWT_SECRET",
    "RABBITMQ_USER",
    "RABBITMQ_PASSWORD",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_ADMIN_PASSWORD",
)
