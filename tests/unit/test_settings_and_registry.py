from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel, ValidationError

from taskplatform.errors import ConfigError, UnknownTaskTypeError
from taskplatform.settings import DEFAULT_STORE_URL, PlatformSettings
from taskplatform.store import create_store
from taskplatform.tasks.executable import BackgroundTaskExecutable, TaskContext
from taskplatform.tasks.registry import ExecutableRegistry


def test_settings_read_the_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_PREFETCH", "7")
    monkeypatch.setenv("TASKPLATFORM_LOG_LEVEL", "debug")
    monkeypatch.setenv("TASKPLATFORM_EXECUTOR_MODULES", '["tests.support.executables"]')
    s = PlatformSettings()
    assert s.prefetch == 7 and s.log_level == "DEBUG"
    assert s.executor_modules == ["tests.support.executables"]
    assert s.store_url == DEFAULT_STORE_URL


def test_bad_settings_name_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_AMQP_URL", "http://nope")
    with pytest.raises(ValidationError, match="amqp_url must start with amqp://"):
        PlatformSettings()
    monkeypatch.delenv("TASKPLATFORM_AMQP_URL")
    monkeypatch.setenv("TASKPLATFORM_PREFETCH", "0")
    with pytest.raises(ValidationError, match="prefetch"):
        PlatformSettings()


def test_store_url_chooses_the_backend() -> None:
    assert type(create_store("sqlite+aiosqlite:///x.db")).__name__ == "SqlTaskStore"
    assert type(create_store("postgresql+asyncpg://u@h/db")).__name__ == "SqlTaskStore"
    assert type(create_store("mongodb://h/db")).__name__ == "MongoTaskStore"
    with pytest.raises(ConfigError, match="unsupported store URL scheme 'redis'"):
        create_store("redis://h")


def test_entry_points_register_the_reference_executables() -> None:
    registry = ExecutableRegistry.discover()
    assert {"generate_summary", "generate_scene"} <= set(registry.task_types())


def test_module_discovery_and_unknown_type_message() -> None:
    registry = ExecutableRegistry.discover(["tests.support.executables"], entry_point_group=None)
    assert registry.task_types() == [
        "test_boom",
        "test_chatty",
        "test_cooperative",
        "test_fails_thrice",
        "test_fanout",
        "test_flaky",
        "test_noop",
        "test_paced",
        "test_paced_slowly",
        "test_paced_user",
        "test_picky",
        "test_side_effect",
        "test_slow",
        "test_stubborn",
        "test_unstorable",
    ]
    with pytest.raises(
        UnknownTaskTypeError,
        match="unknown task type 'x'; registered: test_boom, test_chatty, test_cooperative, "
        "test_fails_thrice, test_fanout, test_flaky, test_noop, test_paced, test_paced_slowly, "
        "test_paced_user, test_picky, "
        "test_side_effect, test_slow, test_stubborn, test_unstorable",
    ):
        registry.get("x")
    with pytest.raises(ConfigError, match="cannot import executor module 'no.such.module'"):
        registry.load_module("no.such.module")


class _P(BaseModel):
    pass


class _A(BackgroundTaskExecutable[_P, _P]):
    task_type = "dup"
    Params = _P
    Result = _P
    calls: ClassVar[int] = 0

    async def execute(self, ctx: TaskContext[_P]) -> _P:
        return _P()


class _B(_A):
    pass


class _BadName(_A):
    task_type = "Bad Name"


def test_registry_refuses_duplicates_and_bad_definitions() -> None:
    registry = ExecutableRegistry([_A])
    registry.register(_A)  # same class again is fine
    with pytest.raises(ConfigError) as caught:
        registry.register(_B)
    assert str(caught.value) == f"task type 'dup' registered twice: {__name__}._A and {__name__}._B"
    with pytest.raises(ConfigError, match="task_type must match"):
        registry.register(_BadName)
    with pytest.raises(ConfigError, match="not a BackgroundTaskExecutable"):
        registry.register(int)  # type: ignore[type-var]


# ---------------------------------------------------------------- no password in errors
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amqp_url", "http://user:s3cretpw@h/"),
        ("amqp_url", "user:s3cretpw@rabbit:5672/"),
        ("store_url", "user:s3cretpw@db/tasks"),
    ],
)
def test_a_refused_url_is_named_without_its_password(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PlatformSettings(**{field: value})
    assert "s3cretpw" not in str(caught.value) and "s3cretpw" not in repr(
        caught.value.errors(include_input=False)
    )
    assert "user:***@" in str(caught.value) and field in str(caught.value)


def test_the_cli_names_a_refused_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskplatform.cli import commands as cli

    monkeypatch.setenv("TASKPLATFORM_AMQP_URL", "http://user:s3cretpw@h/")
    assert cli.main(["worker"]) == 2
    captured = capsys.readouterr()
    assert "TASKPLATFORM_AMQP_URL" in captured.err and "user:***@h/" in captured.err
    assert "s3cretpw" not in captured.err + captured.out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqp://u:p@ss@h/", "amqp://u:***@h/"),
        ("amqp://u@h/", "amqp://u@h/"),
        ("amqp://h/vhost", "amqp://h/vhost"),
        ("u:pw@h", "u:***@h"),
        ("postgresql+asyncpg://u@h/db?password=pw&ssl=1", "postgresql+asyncpg://u@h/db?password=***&ssl=1"),
    ],
)
def test_redact_url_masks_passwords(url: str, shown: str) -> None:
    from taskplatform.settings import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("mypkg.tasks", ["mypkg.tasks"]),
        (" a.tasks, b.tasks ,", ["a.tasks", "b.tasks"]),
        ('["a.tasks", "b.tasks"]', ["a.tasks", "b.tasks"]),
        ("", []),
    ],
)
def test_executor_modules_read_from_a_comma_list_or_a_json_list(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("TASKPLATFORM_EXECUTOR_MODULES", value)
    assert PlatformSettings().executor_modules == expected


def test_executor_modules_in_broken_json_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_EXECUTOR_MODULES", '["a.tasks",')
    with pytest.raises(ValidationError, match="not a JSON list of module names"):
        PlatformSettings()


@pytest.mark.parametrize(
    ("raw", "caps"),
    [
        ("run_command=2, resize=4", {"run_command": 2, "resize": 4}),
        ('{"run_command": 3}', {"run_command": 3}),
        ("", {}),
    ],
)
def test_per_type_caps_read_as_pairs_or_json(
    raw: str, caps: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_WORKER_TYPE_CONCURRENCY", raw)
    assert PlatformSettings().worker_type_concurrency == caps


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("run_command", "write task_type=N"),
        ("run_command=0", "at least 1"),
        ("run_command=x", "write task_type=N"),
        ('{"run_command": true}', "at least 1"),
        ('{"run_command": 2', "not a JSON object"),
    ],
)
def test_a_bad_per_type_cap_is_refused_naming_it(raw: str, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPLATFORM_WORKER_TYPE_CONCURRENCY", raw)
    with pytest.raises(ValidationError, match=why):
        PlatformSettings()
