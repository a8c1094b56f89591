"""A worker's registry record: labels are plain and parsed strictly, presence is judged on a given
clock, load is running over concurrency; and the WORKER_LABELS setting takes both spellings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from taskplatform.models import utcnow
from taskplatform.models.worker import (
    MAX_LABELS,
    WorkerRecord,
    WorkerState,
    check_labels,
    parse_labels,
)
from taskplatform.settings import PlatformSettings
from taskplatform.store.types import InvalidCursorError
from taskplatform.store.workers import decode_worker_cursor, encode_worker_cursor


def record(**changes: object) -> WorkerRecord:
    now = utcnow()
    fields: dict[str, object] = {
        "node_id": "host-1-abc",
        "host": "host",
        "pid": 1,
        "concurrency": 4,
        "version": "1.0",
        "started_at": now,
        "heartbeat_seconds": 5.0,
        "expires_at": now + timedelta(seconds=15),
    }
    fields.update(changes)
    return WorkerRecord.model_validate(fields)


def test_labels_parse_from_text_and_blank_items_are_skipped() -> None:
    assert parse_labels("region=eu, role=db,,") == {"region": "eu", "role": "db"}
    assert parse_labels("") == {}
    assert parse_labels("zone/a=b_c.d-1") == {"zone/a": "b_c.d-1"}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("role", "has no '='"),
        ("role=db,role=web", "given twice"),
        ("=db", "label key ''"),
        ("-x=db", "label key '-x'"),
        ("role=", "label role=''"),
        ("role=d b", "label role='d b'"),
        ("role=db;rm -rf", "label role='db;rm -rf'"),
        ("role=$(id)", "label role='$(id)'"),
        ("role=a=b", "label role='a=b'"),
        ("k=" + "v" * 64, "the value is 1 to 63"),
        ("k" * 64 + "=v", "1 to 63 characters"),
    ],
)
def test_a_label_that_is_not_plain_is_refused_naming_it(text: str, fault: str) -> None:
    with pytest.raises(ValueError, match="label") as raised:
        parse_labels(text)
    assert fault in str(raised.value)


def test_too_many_labels_are_refused() -> None:
    labels = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS} labels"):
        check_labels(labels)
    assert check_labels(dict(list(labels.items())[:MAX_LABELS])) is not None


def test_a_record_refuses_labels_that_are_not_plain() -> None:
    with pytest.raises(ValidationError, match="label"):
        record(labels={"role": "db,web"})


def test_presence_is_judged_on_the_given_clock_and_state() -> None:
    worker = record()
    now = worker.expires_at - timedelta(seconds=1)
    assert worker.online_at(now)
    assert not worker.online_at(worker.expires_at)  # expired at its own instant
    assert record(state=WorkerState.STOPPING).online_at(now)
    assert not record(state=WorkerState.STOPPED).online_at(now)
    assert not record(state=WorkerState.OFFLINE).online_at(now)


def test_load_is_running_over_concurrency() -> None:
    assert record(running=3, concurrency=4).load == 0.75
    assert record(running=0, concurrency=0).load == 0.0


def test_the_worker_cursor_round_trips_and_refuses_anything_else() -> None:
    assert decode_worker_cursor(encode_worker_cursor("host.a-1-ß")) == "host.a-1-ß"
    for bad in ("", "not base64 !", encode_worker_cursor("")[:2], "dzE", "eHx5"):
        with pytest.raises(InvalidCursorError):
            decode_worker_cursor(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("region=eu,role=db", {"region": "eu", "role": "db"}),
        ('{"role": "db"}', {"role": "db"}),
        ("", {}),
    ],
)
def test_the_labels_setting_takes_a_list_or_a_json_object(
    value: str, expected: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_WORKER_LABELS", value)
    assert PlatformSettings().worker_labels == expected


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("role", "has no '='"),
        ('{"role": 1}', "label role=1"),
        ("{nope", "not a JSON object of labels"),
        ('["role=db"]', "label key '[\"role'"),
    ],
)
def test_a_bad_labels_setting_is_a_validation_error_naming_it(
    value: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKPLATFORM_WORKER_LABELS", value)
    with pytest.raises(ValidationError, match="worker_labels") as raised:
        PlatformSettings()
    assert fault in str(raised.value)


def test_the_labels_setting_given_as_a_mapping_is_checked() -> None:
    assert PlatformSettings(worker_labels={"role": "db"}).worker_labels == {"role": "db"}
    with pytest.raises(ValidationError, match="label"):
        PlatformSettings(worker_labels={"role": "a b"})


def test_a_labels_setting_that_is_neither_text_nor_a_mapping_is_refused() -> None:
    with pytest.raises(ValidationError, match="worker_labels"):
        PlatformSettings(worker_labels=["role=db"])  # type: ignore[arg-type]
