"""Rates as people write them: ``"10/s"``, ``"600/m"``, ``"5000/h"``, ``"2.5/s"``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_RATE = re.compile(r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """``count`` events per ``period`` seconds."""

    count: float
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"<count>/<unit>"`` with unit s, m or h (also sec, min, hour, second, minute);
        ValueError saying what is wrong otherwise."""
        match = _RATE.match(text.lower())
        unit = match.group("unit") if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"rate {text!r} is not '<count>/<unit>' with unit s, m or h (e.g. '10/s', '600/m')"
            )
        count = float(match.group("count"))
        if count <= 0:
            raise ValueError(f"rate {text!r} must allow at least some events (count > 0)")
        return cls(count=count, period=_UNITS[unit])

    @property
    def per_second(self) -> float:
        return self.count / self.period

    @property
    def interval(self) -> float:
        """Seconds between two events at this rate."""
        return self.period / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.period, f"{self.period:g}s")
        return f"{self.count:g}/{unit}"
