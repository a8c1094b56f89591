"""Fuzzing the running API from its own OpenAPI document (schemathesis), with authentication.

A real ``taskplatform dev`` process (API, worker, DLQ consumer; JWT authentication; its own
topology prefix on the test broker) runs once per store, SQLite and a fresh PostgreSQL
database, and answers schemathesis' generated requests:

* stateless: every operation, valid and invalid input, as a submitter, an operator and with an
  expired token;
* stateful: sequences that follow OpenAPI links added to the document here (the API's own has
  none): a submitted task's ``task_id`` into get, amend, delete, cancel, its children and the
  list filtered by parent; a listed dead letter's ``id`` into get, discard, replay and audit.
  Submissions in that document name ``test_noop`` or ``test_boom`` with valid parameters, so
  sequences run on real tasks and real dead letters rather than on 404s; the stateless run
  sends such submissions too, beside the served schema's.

Each response must not be a server error and must match what the document promises: status
code, content type, headers, body. Examples are bounded and derandomized, so the run is the
same every time. A failure quotes the server's tracebacks.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition, Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.tokens import SECRET, bearer, token
from tests.support.server import delete_topology_now, platform_env, served_topology, serving
from tests.support.services import RABBITMQ_URL, fresh_postgres_database, require_rabbitmq

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

#: Generated examples per operation and generation mode (each sent as every caller).
EXAMPLES = 60
#: Stateful scenarios per caller, and the most steps in one.
SCENARIOS = 150
STEPS = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CALLERS = {
    "submitter": bearer(token("fuzz-submitter")),
    "operator": bearer(token("fuzz-operator", "operator")),
    "expired": bearer(token("fuzz-submitter", exp=int(time.time()) - 3600)),  # every answer a 401
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A running ``taskplatform dev`` with JWT authentication on the store; its base URL and log."""
    require_rabbitmq()
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            store_url = stack.enter_context(fresh_postgres_database("fuzz"))
        else:
            store_url = f"sqlite+aiosqlite:///{tmp / 'tasks.db'}"
        log = tmp / "server.log"
        yield stack.enter_context(_server(store_url, log)), log


@contextlib.contextmanager
def _server(store_url: str, log: Path) -> Iterator[str]:
    prefix = f"fz{uuid.uuid4().hex[:8]}."
    env = platform_env(
        TASKPLATFORM_AUTH="jwt",
        TASKPLATFORM_JWT_SECRET=SECRET,
        TASKPLATFORM_AMQP_URL=RABBITMQ_URL,
        TASKPLATFORM_STORE_URL=store_url,
        TASKPLATFORM_TOPOLOGY_PREFIX=prefix,
        TASKPLATFORM_EXECUTOR_MODULES='["tests.support.executables"]',
        TASKPLATFORM_LOG_LEVEL="ERROR",
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="2",
    )
    try:
        with serving("dev", env, log, ready_timeout=60) as base:
            yield base
    finally:
        delete_topology_now(served_topology(prefix))


def _tail(log: Path, limit: int = 6000) -> str:
    return log.read_text(errors="replace")[-limit:]


def _tracebacks(log: Path, limit: int = 8000) -> str:
    """The server's tracebacks (its log is at ERROR level), the last ``limit`` characters."""
    text = log.read_text(errors="replace")
    return text[-limit:] if "Traceback" in text else ""


#: The operations the added links join, by method and path.
_TASK = ("get", "/api/v1/tasks/{task_id}")
_LINKS: dict[tuple[str, str], dict[str, Any]] = {
    # A submission's task_id into everything that takes one.
    ("post", "/api/v1/tasks"): {
        "statuses": ("200", "201", "202"),
        "value": "$response.body#/task_id",
        "targets": {
            "GetTask": (_TASK, {"path.task_id": None}),
            "AmendTask": (("patch", "/api/v1/tasks/{task_id}"), {"path.task_id": None}),
            "DeleteTask": (("delete", "/api/v1/tasks/{task_id}"), {"path.task_id": None}),
            "CancelTask": (("post", "/api/v1/tasks/{task_id}/cancel"), {"path.task_id": None}),
            "ListChildren": (("get", "/api/v1/tasks/{task_id}/children"), {"path.task_id": None}),
            "ListByParent": (("get", "/api/v1/tasks"), {"query.parent_task_id": None}),
        },
    },
    # A listed task's id back into the single-task operations.
    ("get", "/api/v1/tasks"): {
        "statuses": ("200",),
        "value": "$response.body#/items/0/id",
        "targets": {
            "GetListedTask": (_TASK, {"path.task_id": None}),
            "CancelListedTask": (("post", "/api/v1/tasks/{task_id}/cancel"), {"path.task_id": None}),
        },
    },
    # A listed dead letter's id into get, discard, replay and its audit.
    ("get", "/api/v1/dead-letters"): {
        "statuses": ("200",),
        "value": "$response.body#/items/0/id",
        "targets": {
            "GetDeadLetter": (("get", "/api/v1/dead-letters/{record_id}"), {"path.record_id": None}),
            "DiscardDeadLetter": (("delete", "/api/v1/dead-letters/{record_id}"), {"path.record_id": None}),
            "ReplayDeadLetter": (
                ("post", "/api/v1/dead-letters/{record_id}/replay"),
                {"path.record_id": None},
            ),
            "AuditDeadLetter": (("get", "/api/v1/dead-letters/audit"), {"query.dead_letter_id": None}),
        },
    },
}
#: Typed submissions the test executables accept: a quick success, and a failure that dead-letters.
_TYPED_PARAMETERS = {
    "type": "object",
    "properties": {
        "value": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
        "sleep": {"type": "number", "minimum": 0, "maximum": 0.01},
    },
    "additionalProperties": False,
}


def fuzz_document(document: dict[str, Any]) -> dict[str, Any]:
    """The API's document with the links above, its submissions limited to the test executables."""
    doc = copy.deepcopy(document)
    paths = doc["paths"]
    for (method, path), spec in _LINKS.items():
        responses = paths[path][method]["responses"]
        links = {
            name: {
                "operationId": paths[target_path][target_method]["operationId"],
                "parameters": {key: spec["value"] for key in parameters},
            }
            for name, ((target_method, target_path), parameters) in spec["targets"].items()
        }
        for status in spec["statuses"]:
            responses[status].setdefault("links", {}).update(links)
    # Submissions of the test executables only: the served schema takes any task type, and a
    # generator drawing from it (or from an anyOf of both) almost never names a registered one.
    # The served schema is fuzzed as it is as well (stateless test).
    free = doc["components"]["schemas"]["SubmitRequest"]
    doc["components"]["schemas"]["SubmitRequest"] = {
        **free,
        "properties": {
            **{k: v for k, v in free["properties"].items() if k != "user_id"},
            "task_type": {"type": "string", "enum": ["test_noop", "test_boom"]},
            "parameters": _TYPED_PARAMETERS,
        },
        "required": ["task_type", "parameters"],
    }
    return doc


def _schema(api_url: str, *, served: bool = False) -> schemathesis.schemas.BaseSchema:
    """The served document (``served``), or the one with links and typed submissions."""
    document = httpx.get(f"{api_url}/openapi.json", timeout=10).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(document if served else fuzz_document(document))
    schema.config.update(base_url=api_url)
    return schema


_SETTINGS = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "phases": [Phase.explicit, Phase.generate, Phase.shrink],
}


def test_every_response_is_documented_and_none_is_a_server_error(api: tuple[str, Path]) -> None:
    api_url, log = api
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in _schema(api_url, served=True).get_all_operations()]
    assert len(operations) >= 16, [op.label for op in operations]
    # and submissions that name a registered type with valid parameters, so tasks get created
    typed = [r.ok() for r in _schema(api_url).get_all_operations() if r.ok().label == "POST /api/v1/tasks"]
    operations += typed
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, **_SETTINGS)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                for headers in CALLERS.values():  # as a submitter, an operator, an expired token
                    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
                    statuses[response.status_code] += 1

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                # an operation without parameters or body has no invalid input to send
            except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all are reported
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}"[:3000])
    requests = sum(statuses.values())
    print(
        f"\nstateless: {len(operations)} operations, {requests} requests in "
        f"{time.monotonic() - started:.0f} s: {dict(sorted(statuses.items()))}"
    )
    assert not failures, "\n\n".join(failures) + f"\n\nserver log:\n{_tracebacks(log)}"
    # it created tasks, read them, and was refused
    assert statuses[201] > 0 and statuses[200] > 0 and statuses[422] > 0, statuses


def test_linked_sequences_are_documented_and_none_is_a_server_error(api: tuple[str, Path]) -> None:
    api_url, log = api
    schema = _schema(api_url)
    statuses: Counter[int] = Counter()
    steps: Counter[str] = Counter()
    base = schema.as_state_machine()
    failures: list[str] = []
    flaky: Counter[str] = Counter()
    started = time.monotonic()
    for caller in ("submitter", "operator"):
        headers = CALLERS[caller]

        class Workflow(base):  # type: ignore[valid-type, misc]
            caller_headers = headers

            def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
                return {"headers": self.caller_headers, "timeout": 30}

            def after_call(self, response: Any, case: schemathesis.Case) -> None:
                super().after_call(response, case)
                statuses[response.status_code] += 1
                steps[case.operation.label] += 1

            def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
                # Every failing step is recorded, none raised: hypothesis would replay a failing
                # sequence against a server whose state has moved on, draw differently and report
                # that (FlakyStrategyDefinition) instead of the failure.
                try:
                    case.validate_response(response, checks=CHECKS, headers=self.caller_headers)
                except (Exception, BaseExceptionGroup) as exc:
                    failures.append(
                        f"as {self.caller}: {case.operation.label}: {type(exc).__name__}: {exc}"[:3000]
                    )

        Workflow.caller = caller
        try:
            Workflow.run(
                settings=settings(
                    max_examples=SCENARIOS,
                    stateful_step_count=STEPS,
                    **{**_SETTINGS, "phases": [Phase.explicit, Phase.generate]},
                )
            )
        except FlakyStrategyDefinition:
            # Hypothesis re-drew a sequence and the server's answers (its state) differed; the
            # steps taken until then were checked above. The coverage asserted below still holds.
            flaky[caller] += 1
    requests = sum(statuses.values())
    print(
        f"\nstateful: {requests} requests in {time.monotonic() - started:.0f} s: "
        f"{dict(sorted(statuses.items()))}\n  per operation: {dict(sorted(steps.items()))}"
        f"\n  runs cut short by a redraw against changed server state: {dict(flaky)}"
    )
    assert not failures, "\n\n".join(failures) + f"\n\nserver log:\n{_tracebacks(log)}"
    # The links were followed: a created task's id and a listed dead letter's id reached the
    # operations that take them.
    for operation in (
        "GET /api/v1/tasks/{task_id}",
        "PATCH /api/v1/tasks/{task_id}",
        "GET /api/v1/tasks/{task_id}/children",
        "GET /api/v1/dead-letters/{record_id}",
    ):
        assert steps[operation] > 0, (operation, steps)
    assert statuses[201] > 0, statuses
