"""Keys, task ids, names, content types, ranges, the metadata model and the error messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from taskplatform.artifacts import (
    ArtifactError,
    ArtifactInfo,
    ArtifactNotFound,
    ArtifactTooLarge,
    InvalidArtifactField,
    InvalidArtifactKey,
    InvalidRange,
    sanitise_name,
    validate_key,
    validate_task_id,
)
from taskplatform.artifacts.validation import check_range, new_key, validate_content_type
from taskplatform.errors import TaskPlatformError
from tests.artifacts.test_contract import BAD_KEYS

KEY = "2024/05/" + "ab" * 16
SHA = "0" * 64


def info(**changes: object) -> ArtifactInfo:
    fields: dict[str, object] = {
        "key": KEY,
        "name": "a.txt",
        "size": 3,
        "sha256": SHA,
        "content_type": "text/plain",
        "owner": None,
        "created_at": datetime(2024, 5, 1, tzinfo=UTC),
    }
    return ArtifactInfo.model_validate(fields | changes)


def test_a_generated_key_is_valid_and_dated_in_its_month() -> None:
    key = new_key(datetime(2031, 2, 3, tzinfo=UTC))
    assert validate_key(key) == key
    assert key.startswith("2031/02/") and len(key) == 40
    assert new_key(datetime(2031, 2, 3, tzinfo=UTC)) != key


@pytest.mark.parametrize("key", [*BAD_KEYS, None, b"2024/05/" + b"0" * 32, 42])
def test_validate_key_refuses_anything_but_the_generated_shape(key: object) -> None:
    with pytest.raises(InvalidArtifactKey, match="expected 'yyyy/mm/<32 lowercase hex>'"):
        validate_key(key)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("report 2024.pdf", "report 2024.pdf"),
        ("../../evil", "evil"),
        ("../../ev\x00il\n", "evil"),
        ("C:\\Users\\x\\a.txt", "a.txt"),
        ("/etc/passwd", "passwd"),
        ("dir/", "unnamed"),
        ("..", "unnamed"),
        (".", "unnamed"),
        ("", "unnamed"),
        ("\x00\x1f\x7f", "unnamed"),
        ("  padded  ", "padded"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # a right-to-left override would hide .exe
        ("\ud800x", "x"),  # a lone surrogate cannot be written as UTF-8
        ("été.txt", "été.txt"),
    ],
)
def test_sanitise_name_keeps_a_safe_basename(name: str, kept: str) -> None:
    assert sanitise_name(name) == kept


def test_sanitise_name_cuts_to_255_bytes_on_a_character_boundary() -> None:
    cut = sanitise_name("é" * 300)
    assert cut == "é" * 127
    assert len(cut.encode()) == 254
    assert len(sanitise_name("x" * 300).encode()) == 255


@pytest.mark.parametrize("task_id", ["3f2c9a1e-8b7d-4c6e-9f00-1a2b3c4d5e6f", "t" * 64, "a b.c_d~", "..."])
def test_validate_task_id_accepts_printable_ascii_up_to_64(task_id: str) -> None:
    assert validate_task_id(task_id) == task_id


@pytest.mark.parametrize(
    ("task_id", "why"),
    [
        ("", "1 to 64"),
        ("t" * 65, "1 to 64"),
        ("a/b", "without '/'"),
        (".", "not '.'"),
        ("..", "not '.'"),
        ("a\x00", "printable ASCII"),
        ("a\n", "printable ASCII"),
        ("é", "printable ASCII"),
        (7, "not a string"),
    ],
)
def test_validate_task_id_refuses_the_rest(task_id: object, why: str) -> None:
    with pytest.raises(InvalidArtifactField, match=why) as caught:
        validate_task_id(task_id)
    assert caught.value.field == "task_id"


@pytest.mark.parametrize("value", ["text/plain", "text/plain; charset=utf-8", "application/vnd.a+json"])
def test_validate_content_type_accepts_media_types(value: str) -> None:
    assert validate_content_type(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "plain", "/x", "text/", "text/plain\r\nX-Evil: 1", "text/plain; a=\x00", "a/" + "b" * 254, None],
)
def test_validate_content_type_refuses_the_rest(value: object) -> None:
    with pytest.raises(InvalidArtifactField, match="content_type"):
        validate_content_type(value)


@pytest.mark.parametrize(
    ("start", "end", "size", "expected"),
    [(0, None, 10, (0, 10)), (10, None, 10, (10, 10)), (3, 7, 10, (3, 7)), (0, 0, 0, (0, 0))],
)
def test_check_range_fills_in_the_end(
    start: int, end: int | None, size: int, expected: tuple[int, int]
) -> None:
    assert check_range(KEY, start, end, size) == expected


def test_artifact_info_round_trips_through_json_and_is_frozen() -> None:
    original = info(owner="u", task_id="t")
    assert ArtifactInfo.model_validate_json(original.model_dump_json()) == original
    with pytest.raises(ValidationError):
        original.size = 4  # type: ignore[misc]


def test_artifact_info_keeps_created_at_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    assert info(created_at=datetime(2024, 5, 1, 14, tzinfo=paris)).created_at == datetime(
        2024, 5, 1, 12, tzinfo=UTC
    )
    assert info(created_at=datetime(2024, 5, 1, 14, tzinfo=paris)).created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": datetime(2024, 5, 1)},  # naive
        {"key": "../x"},
        {"sha256": "Z" * 64},
        {"size": -1},
        {"task_id": "a/b"},
        {"name": ""},
        {"surprise": 1},
    ],
)
def test_artifact_info_refuses_bad_fields(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        info(**changes)


def test_errors_are_platform_errors_with_messages_naming_the_culprit() -> None:
    errors: list[ArtifactError] = [
        ArtifactNotFound(KEY),
        ArtifactTooLarge(1024),
        InvalidArtifactKey("../x"),
        InvalidArtifactField("task_id", "a/b", "why"),
        InvalidRange(KEY, 5, 2, 10),
    ]
    assert all(isinstance(error, TaskPlatformError) for error in errors)
    assert [str(error) for error in errors] == [
        f"no artifact with key '{KEY}'",
        "artifact larger than the limit of 1024 bytes; nothing was stored",
        "invalid artifact key '../x'; expected 'yyyy/mm/<32 lowercase hex>'",
        "invalid task_id 'a/b': why",
        f"invalid range [5, 2) for artifact '{KEY}' of 10 bytes; need 0 <= start <= end <= 10",
    ]
    assert str(InvalidRange(KEY, 11, None, 10)).startswith("invalid range [11, end)")


def test_a_huge_key_is_cut_short_in_the_message() -> None:
    message = str(InvalidArtifactKey("x" * 1_000_000))
    assert len(message) < 200
    assert "(+999922 chars)" in message
