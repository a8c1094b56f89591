"""Executables' ``rate_limits``: what a declaration accepts, what the registry refuses, the keys."""

from __future__ import annotations

from typing import Any

import pytest

from taskplatform.errors import ConfigError
from taskplatform.ratelimit.declarations import RateLimit, ordered
from taskplatform.ratelimit.rates import Rate
from taskplatform.tasks.registry import ExecutableRegistry
from tests.support.executables import Noop


def limited(*limits: Any) -> type[Noop]:
    """A registrable executable declaring ``limits`` (as given, even when not a tuple)."""
    return type("Limited", (Noop,), {"task_type": "limited", "rate_limits": limits[0] if limits else ()})


def test_a_rate_is_given_as_text_or_as_a_rate() -> None:
    assert RateLimit("10/s").rate == Rate(count=10, period=1)
    assert RateLimit(Rate.parse("600/m")).rate.interval == pytest.approx(0.1)
    limit = RateLimit("5/h", burst=3, per="user")
    assert (limit.burst, limit.per, limit.rate.per_second) == (3, "user", pytest.approx(5 / 3600))
    assert repr(limit) == "RateLimit('5/h', burst=3, per='user')"


def test_valid_declarations_register() -> None:
    cls = limited((RateLimit("10/s", burst=5), RateLimit("1/s", per="user")))
    assert ExecutableRegistry([cls]).get("limited") is cls
    assert ExecutableRegistry([Noop]).get("test_noop").rate_limits == ()  # the default: unlimited


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ((RateLimit("10/x"),), r"Limited\.rate_limits\[0\] .*'10/x' is not '<count>/<unit>'"),
        ((RateLimit("0/s"),), r"rate_limits\[0\] .*count > 0"),
        (
            (RateLimit("10/s"), RateLimit("10/s", burst=0)),
            r"rate_limits\[1\] .*burst must be an integer >= 1",
        ),
        ((RateLimit("10/s", per="org"),), r"per must be one of 'task_type', 'user', got 'org'"),  # type: ignore[arg-type]
        ((RateLimit(10),), r"rate must be a Rate or text like '10/s', got 10"),  # type: ignore[arg-type]
        ([RateLimit("10/s")], r"Limited\.rate_limits must be a tuple of RateLimit"),
        (("10/s",), r"must be a tuple of RateLimit"),
        ((RateLimit("10/s"), RateLimit("100/m")), r"two limits per 'task_type'; keep one"),
    ],
)
def test_bad_declarations_are_refused_naming_the_class(limits: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExecutableRegistry([limited(limits)])


def test_keys_name_the_task_type_or_the_user_and_the_task_type() -> None:
    per_type, per_user = RateLimit("10/s"), RateLimit("10/s", per="user")
    assert per_type.key("resize", "alice") == per_type.key("resize", None) == "task_type:resize"
    assert per_user.key("resize", "alice") == "user:alice:resize"
    assert per_user.key("resize", "bob") != per_user.key("resize", "alice")
    assert per_user.key("resize", None) == "user:-:resize"  # tasks without a user share one bucket
    assert per_user.key("crop", "alice") != per_user.key("resize", "alice")


def test_per_user_limits_are_reserved_before_the_task_types() -> None:
    per_type, per_user = RateLimit("10/s"), RateLimit("1/s", per="user")
    assert ordered((per_type, per_user)) == (per_user, per_type)
    assert ordered((per_user, per_type)) == (per_user, per_type)
