"""The deployment stack in ``deploy/``, checked as files: no Docker engine is needed.

The compose file, the Prometheus configuration and alert rules and the Grafana dashboard are
loaded and checked for what makes the stack work together (service names in URLs, ports,
mounts, health checks, settings that exist). ``docker compose config`` runs in
``test_compose_config.py`` when a compose tool is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from taskplatform.settings import PlatformSettings
from tests.deploy.stack_files import (
    ALERTS_FILE,
    API_JOB,
    COMPOSE_FILE,
    DASHBOARD_DATASOURCE,
    DASHBOARD_FILE,
    DATASOURCE_UID,
    DEPLOY,
    DURATION,
    HISTOGRAM_SUFFIX,
    INTERPOLATION,
    PLATFORM_SERVICES,
    PROMETHEUS_FILE,
    PROVISIONING,
    RABBITMQ_JOB,
    REPO,
    REQUIRED_INTERPOLATION,
    REQUIRED_SECRETS,
    SERVICES,
    SETTING_VAR,
    STRING_LITERAL,
    WORKER_JOB,
    alert_exprs,
    bind_mounts,
    dashboard_exprs,
    dashboard_panels,
    environment,
    host_path_of,
    load_yaml,
    metric_names_used,
    names_in,
)


# ---------------------------------------------------------------- compose
def test_compose_defines_the_seven_services_without_a_version_key(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert "version" not in compose, "the Compose Specification has no version key"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"service {name!r} has no healthcheck"
    assert not check.get("disable", False)
    test = check["test"]
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, test
    else:
        assert test.strip(), f"service {name!r} has an empty healthcheck"


@pytest.mark.parametrize("name", PLATFORM_SERVICES)
def test_platform_services_wait_for_healthy_broker_and_store(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends = services[name]["depends_on"]
    assert isinstance(depends, dict), "use the long depends_on form, with conditions"
    for dependency in ("rabbitmq", "mongo"):
        assert depends[dependency]["condition"] == "service_healthy", (name, dependency)


def test_worker_is_scalable(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name forbids --scale worker=N"
    assert not worker.get("ports"), "a published host port forbids --scale worker=N"


@pytest.mark.parametrize("name", PLATFORM_SERVICES)
def test_platform_services_use_the_broker_and_store_services(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = environment(services[name])
    amqp = urlsplit(INTERPOLATION.sub("x", env["TASKPLATFORM_AMQP_URL"]))  # credentials: required
    assert (amqp.scheme, amqp.hostname, amqp.port or 5672) == ("amqp", "rabbitmq", 5672)
    store = urlsplit(env["TASKPLATFORM_STORE_URL"])
    assert (store.scheme, store.hostname, store.port or 27017) == ("mongodb", "mongo", 27017)
    assert parse_qs(store.query).get("replicaSet") == ["rs0"]


def test_mongo_runs_the_replica_set_the_store_url_names(services: dict[str, dict[str, Any]]) -> None:
    mongo = services["mongo"]
    command = mongo["command"] if isinstance(mongo["command"], list) else mongo["command"].split()
    assert command[command.index("--replSet") + 1] == "rs0"
    assert "--bind_ip_all" in command
    probe = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate(" in probe and "_id:'rs0'" in probe and "host:'mongo:27017'" in probe
    assert any(isinstance(v, str) and not v.startswith((".", "/")) for v in mongo["volumes"]), (
        "MongoDB keeps its data in a named volume"
    )


def test_api_requires_a_jwt_secret_by_interpolation(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["api"])
    assert env["TASKPLATFORM_AUTH"] == "jwt"
    assert env["TASKPLATFORM_API_HOST"] == "0.0.0.0"  # noqa: S104 - inside its container
    assert re.fullmatch(r"\$\{TASKPLATFORM_JWT_SECRET:\?[^}]+\}", env["TASKPLATFORM_JWT_SECRET"]), (
        "the secret must be required (${VAR:?message}), never defaulted"
    )


def _required(value: str, variable: str) -> bool:
    return re.fullmatch(rf"\$\{{{variable}:\?[^}}]+\}}", value) is not None


def test_every_secret_is_required_never_defaulted() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    uses = [(name, rest) for name, rest in INTERPOLATION.findall(text)]
    assert {name for name, _ in uses} == set(REQUIRED_SECRETS), uses
    defaulted = [(name, rest) for name, rest in uses if not rest.startswith(":?") or len(rest) < 3]
    assert not defaulted, f"secrets with a default or without a message: {defaulted}"
    assert "$$" not in text


def test_rabbitmq_and_grafana_credentials_come_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    rabbitmq = environment(services["rabbitmq"])
    assert _required(rabbitmq["RABBITMQ_DEFAULT_USER"], "RABBITMQ_USER")
    assert _required(rabbitmq["RABBITMQ_DEFAULT_PASS"], "RABBITMQ_PASSWORD")
    grafana = environment(services["grafana"])
    assert _required(grafana["GF_SECURITY_ADMIN_USER"], "GRAFANA_ADMIN_USER")
    assert _required(grafana["GF_SECURITY_ADMIN_PASSWORD"], "GRAFANA_ADMIN_PASSWORD")
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false"
    for name in PLATFORM_SERVICES:
        url = environment(services[name])["TASKPLATFORM_AMQP_URL"]
        match = re.fullmatch(r"amqp://(\$\{[^}]+\}):(\$\{[^}]+\})@rabbitmq:5672/", url)
        assert match, f"{name}: the AMQP URL carries the required RabbitMQ credentials: {url}"
        assert _required(match[1], "RABBITMQ_USER") and _required(match[2], "RABBITMQ_PASSWORD"), url


def test_rabbitmq_allows_no_remote_guest() -> None:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    settings = dict(
        (part.strip() for part in line.split("=", 1))
        for line in conf.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    # Overrides the image's 10-defaults.conf (loopback_users.guest = false).
    assert settings.get("loopback_users.guest") == "true"
    assert settings.get("loopback_users", "") != "none"
    assert not {"default_user", "default_pass"} & set(settings), "credentials come from the environment"


#: Literal credentials, once every required interpolation is replaced by REQUIRED: guest or
#: admin logins, URL credentials, passwords or secrets given a value, ${VAR:-default} defaults.
_CREDENTIAL_LITERALS = (
    re.compile(r"(?i)(?<!loopback_users\.)\bguest\b"),  # restricting guest is fine
    re.compile(r"://(?!REQUIRED:REQUIRED@)[^/\s:@]+:[^/\s@]+@"),
    re.compile(r"(?i)\b\w*(?:user|pass|password|secret|admin)\w*\s*[:=]\s*[\"']?admin\b"),
    re.compile(r"(?i)\b\w*(?:pass|password|secret)\w*\s*[:=]\s*(?![\"']?REQUIRED\b)[\"']?[^\s\"'#]+"),
    re.compile(r"\$\{\w+:?-[^}]*\}"),
)


def test_no_default_credentials_in_deploy() -> None:
    found = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            bare = REQUIRED_INTERPOLATION.sub("REQUIRED", line)
            if any(pattern.search(bare) for pattern in _CREDENTIAL_LITERALS):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, f"default credentials in deploy/: {found}"


def test_only_the_front_doors_are_published_on_every_interface(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports") or []:
            if (name, str(port)) in (("api", "8000:8000"), ("grpc", "50051:50051")):
                continue
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"


def test_mongo_is_only_on_an_internal_network(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mongo = services["mongo"]
    assert not mongo.get("ports"), "MongoDB is not published"
    networks = list(mongo["networks"])
    assert networks and all(compose["networks"][n].get("internal") is True for n in networks), networks
    for name in PLATFORM_SERVICES:
        assert set(networks) <= set(services[name]["networks"]), f"{name} reaches MongoDB"


def test_platform_services_run_the_image_built_from_deploy_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    images = set()
    for name, command in (("api", "api"), ("worker", "worker")):
        service = services[name]
        build = service["build"]
        assert (COMPOSE_FILE.parent / build["context"]).resolve() == REPO, "build context: the repository"
        assert (REPO / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert service["command"] in (command, [command])
        images.add(service.get("image"))
    assert len(images) == 1, f"api and worker should share one image, got {images}"


def test_healthchecks_probe_the_platform_ports(services: dict[str, dict[str, Any]]) -> None:
    api_probe = " ".join(services["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/readyz" in api_probe
    assert "8000:8000" in [str(p) for p in services["api"]["ports"]]
    port = environment(services["worker"])["TASKPLATFORM_METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/metrics" in " ".join(services["worker"]["healthcheck"]["test"])


def test_every_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounts = [(name, host) for name, service in services.items() for host, _ in bind_mounts(service)]
    assert mounts, "the stack mounts its configuration from deploy/"
    missing = [f"{name}: {host}" for name, host in mounts if not host.exists()]
    assert not missing, f"mounted from the repository but missing: {missing}"
    outside = [f"{name}: {host}" for name, host in mounts if DEPLOY not in host.parents]
    assert not outside, f"mounts from outside deploy/: {outside}"


def test_every_taskplatform_variable_is_a_setting() -> None:
    used: set[str] = set()
    for path in (COMPOSE_FILE, ALERTS_FILE, DEPLOY / "Dockerfile"):
        used |= {name.lower() for name in SETTING_VAR.findall(path.read_text(encoding="utf-8"))}
    assert {"amqp_url", "store_url", "jwt_secret", "metrics_port"} <= used
    unknown = used - set(PlatformSettings.model_fields)
    assert not unknown, f"TASKPLATFORM_ variables that are no setting: {sorted(unknown)}"


def test_rabbitmq_enables_management_and_per_queue_prometheus_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    rabbitmq = services["rabbitmq"]
    assert str(rabbitmq["image"]).startswith("rabbitmq:4.")
    plugins = host_path_of(rabbitmq, "/etc/rabbitmq/enabled_plugins")
    assert plugins is not None, "enabled_plugins is mounted"
    assert plugins.read_text(encoding="utf-8").strip() == "[rabbitmq_management,rabbitmq_prometheus]."
    conf_mounts = [h for h, t in bind_mounts(rabbitmq) if str(t).startswith("/etc/rabbitmq/conf.d/")]
    assert conf_mounts, "rabbitmq.conf is mounted into conf.d/"
    settings = dict(
        (part.strip() for part in line.split("=", 1))
        for line in conf_mounts[0].read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert settings.get("prometheus.return_per_object_metrics") == "true"
    assert {"127.0.0.1:5672:5672", "127.0.0.1:15672:15672"} == {str(p) for p in rabbitmq["ports"]}
    assert "15692" in [str(p) for p in rabbitmq["expose"]], "/metrics stays on the compose network"


def test_dockerfile_builds_a_non_root_platform_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    by_name: dict[str, list[str]] = {}
    for parts in instructions:
        if len(parts) == 2 and parts[0].isupper():
            by_name.setdefault(parts[0], []).append(parts[1].strip())
    assert all(image.split()[0] == "python:3.11-slim" for image in by_name["FROM"])
    user = by_name["USER"][-1].split(":")[0]
    assert user not in ("root", "0")
    assert json.loads(by_name["ENTRYPOINT"][-1]) == ["taskplatform"]
    assert json.loads(by_name["CMD"][-1]) == ["api"]
    installs = [run for run in by_name["RUN"] if "pip install" in run]
    assert installs and all(run.rstrip().endswith("pip install .") for run in installs), installs
    ignored = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "var"} <= ignored


# ---------------------------------------------------------------- prometheus
def test_prometheus_scrapes_the_api_the_workers_and_rabbitmq(
    scrape_jobs: dict[str, dict[str, Any]], services: dict[str, dict[str, Any]]
) -> None:
    assert {API_JOB, WORKER_JOB, RABBITMQ_JOB} <= set(scrape_jobs)

    api = scrape_jobs[API_JOB]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert [t for c in api["static_configs"] for t in c["targets"]] == ["api:8000"]

    # Docker's DNS answers the service name with every replica's address (not tasks.worker).
    worker = scrape_jobs[WORKER_JOB]
    assert worker.get("metrics_path", "/metrics") == "/metrics"
    [sd] = worker["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == (["worker"], "A", 9100)
    assert environment(services["worker"])["TASKPLATFORM_METRICS_PORT"] == str(sd["port"])

    rabbitmq = scrape_jobs[RABBITMQ_JOB]
    assert rabbitmq.get("metrics_path", "/metrics") == "/metrics"
    assert [t for c in rabbitmq["static_configs"] for t in c["targets"]] == ["rabbitmq:15692"]

    grpc = scrape_jobs["taskplatform-grpc"]  # the gRPC front door's own metrics port
    assert [t for c in grpc["static_configs"] for t in c["targets"]] == ["grpc:9100"]
    env = environment(services["grpc"])
    assert (env["TASKPLATFORM_METRICS_PORT"], env["TASKPLATFORM_METRICS_HOST"]) == ("9100", "0.0.0.0")
    assert services["grpc"]["command"] == ["grpc"] and env["TASKPLATFORM_AUTH"] == "jwt"


def test_prometheus_loads_its_config_and_the_alert_rules_from_deploy(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    service = services["prometheus"]
    flags = dict(arg.split("=", 1) for arg in service.get("command", []) if "=" in arg)
    config_path = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    assert host_path_of(service, config_path) == PROMETHEUS_FILE
    assert prometheus["rule_files"], "rule_files loads the alerts"
    # relative paths are resolved against the configuration file's directory
    rules = [str(PurePosixPath(config_path).parent / path) for path in prometheus["rule_files"]]
    assert [host_path_of(service, path) for path in rules] == [ALERTS_FILE]
    assert [str(p) for p in service["ports"]] == ["127.0.0.1:9090:9090"]


def test_every_alert_rule_is_complete(alert_rules: list[dict[str, Any]]) -> None:
    assert alert_rules
    names = [rule.get("alert") for rule in alert_rules]
    assert all(names) and len(set(names)) == len(names), names
    for rule in alert_rules:
        name = rule["alert"]
        assert str(rule.get("expr", "")).strip(), name
        assert DURATION.match(str(rule.get("for", ""))), f"{name}: 'for' is a duration"
        assert rule.get("labels", {}).get("severity") in ("info", "warning", "critical"), name
        annotations = rule.get("annotations", {})
        assert str(annotations.get("summary", "")).strip(), f"{name}: no summary"
        assert str(annotations.get("description", "")).strip(), f"{name}: no description"


#: What the alert rules must watch, and a pattern one of their expressions matches.
ALERT_CONDITIONS = dict(
    [
        ("dead letters in the last 15 minutes", r"increase\(taskplatform_dead_letters_total\[15m\]\)"),
        ("pending dead letters above a threshold", r"taskplatform_dead_letters_pending\)?\s*>\s*\d+"),
        ("dead-lettered / finished over 10 minutes", r'status="DEAD_LETTER"\}\[10m\].*>\s*0\.10?\b'),
        (
            "a minimum volume for the failure ratio",
            r"and\s+sum\(increase\(taskplatform_tasks_finished_total\[10m\]\)\)\s*>=",
        ),
        (
            "oldest queued task above 10 minutes",
            r"taskplatform_oldest_queued_task_age_seconds\)?\s*>\s*600\b",
        ),
        (
            "outbox not draining: an unpublished task older than a minute",
            r"taskplatform_outbox_oldest_pending_age_seconds\)?\s*>\s*60\b",
        ),
        (
            "a process whose event loop stopped sampling",
            r"time\(\)\s*-\s*max by \(instance\) \(taskplatform_heartbeat_timestamp_seconds\)\s*>",
        ),
        ("a worker target down", r'up\{job="taskplatform-worker"\}\s*==\s*0'),
    ]
)


@pytest.mark.parametrize("what", list(ALERT_CONDITIONS))
def test_alerts_cover(alert_rules: list[dict[str, Any]], what: str) -> None:
    pattern = ALERT_CONDITIONS[what]
    exprs = [" ".join(str(rule["expr"]).split()) for rule in alert_rules]
    assert any(re.search(pattern, expr) for expr in exprs), f"no alert on {what}"


def _balanced(expr: str) -> bool:
    """Brackets pair up outside string literals (a cheap syntax check: no promtool here)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in STRING_LITERAL.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack and expr.count('"') % 2 == 0


def test_every_expression_is_balanced(dashboard: dict[str, Any]) -> None:
    exprs = [*dashboard_exprs(dashboard), *alert_exprs()]
    assert not _balanced("sum(rate(x[5m])"), "the check itself"
    unbalanced = [expr for expr in exprs if not _balanced(expr)]
    assert not unbalanced, unbalanced


def test_every_job_label_used_is_a_scrape_job(
    dashboard: dict[str, Any], scrape_jobs: dict[str, dict[str, Any]]
) -> None:
    jobs = {
        job
        for expr in (*dashboard_exprs(dashboard), *alert_exprs())
        for job in re.findall(r'job="([^"]+)"', expr)
    }
    assert WORKER_JOB in jobs
    assert jobs <= set(scrape_jobs), f"unknown jobs: {sorted(jobs - set(scrape_jobs))}"


# ---------------------------------------------------------------- grafana
def test_dashboard_is_a_grafana_dashboard_on_the_prometheus_datasource(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in dashboard_panels(dashboard)]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    assert {p["type"] for p in panels} == {"timeseries", "stat"}
    for panel in panels:
        title = panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, title
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, title
        assert panel["datasource"] == DASHBOARD_DATASOURCE, title
        assert panel["targets"], f"{title}: no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target.get("datasource", DASHBOARD_DATASOURCE) == DASHBOARD_DATASOURCE, title
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            assert variable["datasource"] == DASHBOARD_DATASOURCE, variable["name"]


#: What the dashboard must show (the platform's names, as exposed, and rabbitmq_prometheus's).
DASHBOARD_METRICS = {
    "taskplatform_tasks_submitted_total",
    "taskplatform_tasks_finished_total",
    "taskplatform_task_duration_seconds",
    "taskplatform_task_queue_wait_seconds",
    "taskplatform_tasks_in_progress",
    "taskplatform_task_retries_total",
    "taskplatform_dead_letters_total",
    "taskplatform_dead_letters_pending",
    "taskplatform_outbox_pending",
    "taskplatform_oldest_queued_task_age_seconds",
    "taskplatform_publish_failures_total",
    "taskplatform_event_subscriber_errors_total",
    "taskplatform_api_requests_total",
    "taskplatform_api_request_duration_seconds",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages",
}


def test_dashboard_shows_every_platform_and_queue_metric(dashboard: dict[str, Any]) -> None:
    shown = {name for expr in dashboard_exprs(dashboard) for name in names_in(expr)}
    assert not DASHBOARD_METRICS - shown, f"not on the dashboard: {sorted(DASHBOARD_METRICS - shown)}"
    exprs = " ".join(dashboard_exprs(dashboard))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(taskplatform_task_queue_wait" in exprs
        assert f"histogram_quantile({quantile}, sum by (le) (rate(taskplatform_task_duration" in exprs
    assert "sum by (vhost, queue) (rabbitmq_queue_messages_ready" in exprs


def test_grafana_provisions_the_datasource_and_the_dashboards(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert host_path_of(grafana, "/etc/grafana/provisioning") == PROVISIONING
    assert [str(p) for p in grafana["ports"]] == ["127.0.0.1:3000:3000"]

    datasources = [
        ds
        for path in sorted((PROVISIONING / "datasources").glob("*.y*ml"))
        for ds in load_yaml(path)["datasources"]
    ]
    [prometheus] = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert (prometheus["uid"], prometheus["url"]) == (DATASOURCE_UID, "http://prometheus:9090")

    providers = [
        p
        for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml"))
        for p in load_yaml(path)["providers"]
    ]
    assert [host_path_of(grafana, p["options"]["path"]) for p in providers] == [DASHBOARD_FILE.parent]


def test_metric_names_used_finds_the_dashboard_and_alert_metrics() -> None:
    names = metric_names_used()
    assert {"taskplatform_tasks_finished_total", "rabbitmq_queue_messages_ready"} <= names
    assert "taskplatform_task_duration_seconds" in names, "histograms by their base name"
    assert not {n for n in names if HISTOGRAM_SUFFIX.search(n)}, names
    assert all(n.startswith(("taskplatform_", "grpc_server_", "rabbitmq_")) for n in names)
    assert "grpc_server_handling_seconds" in names  # the gRPC row's latency, by its base name
    assert "taskplatform" not in {n.rstrip("_") for n in names}, "job label values are no metric names"
    assert names_in('sum(rate(taskplatform_x_seconds_bucket{job="taskplatform-api"}[5m]))') == {
        "taskplatform_x_seconds"
    }
