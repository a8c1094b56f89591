"""Rate limits as executables declare them: ``rate_limits = (RateLimit("10/s"),)``.

A limit meters how often attempts of a task type *start*: per task type (every user
together) or per user. Keys name the bucket a reservation is taken from:

- ``task_type:<task type>`` for ``per="task_type"``;
- ``user:<user id>:<task type>`` for ``per="user"``; tasks without a user id share
  ``user:-:<task type>`` (as does a user whose id is ``-``). A task type cannot contain
  ``:``, so a key names one user and one type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from taskplatform.ratelimit.rates import Rate

RateScope = Literal["task_type", "user"]
SCOPES: tuple[str, ...] = get_args(RateScope)

#: The user part of a per-user key for tasks without a user id.
NO_USER = "-"


@dataclass(frozen=True, init=False)
class RateLimit:
    """At most ``rate`` attempt starts, in bursts of up to ``burst``, per task type or per user.

    ``rate`` is a ``Rate`` or its text (``"10/s"``, ``"600/m"``, ``"5/h"``). Nothing is checked
    when the declaration is made: the registry checks it (``validate_definition``) and names
    the class when something is wrong.
    """

    declared: Rate | str
    burst: int
    per: str

    def __init__(self, rate: Rate | str, *, burst: int = 1, per: RateScope = "task_type") -> None:
        object.__setattr__(self, "declared", rate)
        object.__setattr__(self, "burst", burst)
        object.__setattr__(self, "per", per)

    @property
    def rate(self) -> Rate:
        """The rate; ValueError when the declared text is not one."""
        if isinstance(self.declared, Rate):
            return self.declared
        if isinstance(self.declared, str):
            return Rate.parse(self.declared)
        raise ValueError(f"rate must be a Rate or text like '10/s', got {self.declared!r}")

    def check(self) -> None:
        """ValueError saying what is wrong with this declaration."""
        self.rate  # noqa: B018  (parsing is the check)
        if not isinstance(self.burst, int) or isinstance(self.burst, bool) or self.burst < 1:
            raise ValueError(f"burst must be an integer >= 1, got {self.burst!r}")
        if self.per not in SCOPES:
            raise ValueError(f"per must be one of {', '.join(map(repr, SCOPES))}, got {self.per!r}")

    def key(self, task_type: str, user_id: str | None) -> str:
        """The bucket an attempt of ``task_type`` owned by ``user_id`` reserves from."""
        if self.per == "user":
            return f"user:{NO_USER if user_id is None else user_id}:{task_type}"
        return f"task_type:{task_type}"

    def __repr__(self) -> str:
        return f"RateLimit({str(self.declared)!r}, burst={self.burst}, per={self.per!r})"


def check_rate_limits(owner: str, limits: object) -> None:
    """TypeError naming ``owner`` (``<class>.rate_limits``) unless ``limits`` is a tuple of valid
    ``RateLimit``, at most one per scope."""
    if not isinstance(limits, tuple) or not all(isinstance(limit, RateLimit) for limit in limits):
        raise TypeError(f"{owner} must be a tuple of RateLimit, e.g. (RateLimit('10/s'),); got {limits!r}")
    seen: set[str] = set()
    for i, limit in enumerate(limits):
        try:
            limit.check()
        except ValueError as exc:
            raise TypeError(f"{owner}[{i}] ({limit!r}): {exc}") from None
        if limit.per in seen:
            # Two rates on one key would share one bucket and corrupt each other's state.
            raise TypeError(
                f"{owner} declares two limits per {limit.per!r}; keep one (its burst allows short bursts)"
            )
        seen.add(limit.per)


def ordered(limits: Iterable[RateLimit]) -> tuple[RateLimit, ...]:
    """Per-user limits first, then the task type's: a delivery reserves them in this order, each
    from where the previous left it, so the type's limit (the one shared by everybody) is
    reserved at the very time the attempt may start."""
    return tuple(sorted(limits, key=lambda limit: limit.per != "user"))
