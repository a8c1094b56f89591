"""Tables the commands print: dead-letter listings, the audit log, a task's attempts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskplatform.client import AttemptListing, AuditListing, DeadLetterListing

CELL_WIDTH = 40


def _cell(value: object, width: int | None = CELL_WIDTH) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    # Reasons and error types come from dead messages: keep control characters off the terminal.
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, as wide as their widest cell; the first column is never cut."""
    cells = [list(header)] + [[_cell(row[0], None), *map(_cell, row[1:])] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _by(counts: dict[str, int]) -> str:
    return ", ".join(f"{_cell(k)}={n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def print_listing(listing: DeadLetterListing, status: str) -> None:
    header = ("ID", "TASK TYPE", "REASON", "ERROR TYPE", "STATUS", "DEATHS", "LAST SEEN")
    rows = [
        (d.id, d.task_type, d.reason, d.error_type, d.status.value, d.deaths, d.last_seen_at)
        for d in listing.items
    ]
    if rows:
        print(table(header, rows))
    counts = listing.counts
    total = counts.get("total", len(rows))
    what = "dead letters" if status == "any" else f"{status} dead letters"
    print(f"{total} {what} match" + (f" (showing {len(rows)})" if total != len(rows) else ""))
    if counts.get("by_task_type"):
        print(f"  by task type: {_by(counts['by_task_type'])}")
    if counts.get("by_reason"):
        print(f"  by reason:    {_by(counts['by_reason'])}")
    if listing.next_cursor:
        print(f"next page: --cursor {listing.next_cursor}")


def _some(ids: Sequence[str]) -> str | None:
    if not ids:
        return None
    return ", ".join(ids[:3]) + (f" +{len(ids) - 3}" if len(ids) > 3 else "")


def print_audit(listing: AuditListing) -> None:
    rows = [
        (
            e.id,
            e.at,
            e.actor,
            e.action + (" (dry run)" if e.dry_run else ""),
            e.outcome,
            _some(e.task_ids),
            _some(e.dead_letter_ids),
        )
        for e in listing.items
    ]
    if rows:
        print(table(("ID", "AT", "ACTOR", "ACTION", "OUTCOME", "TASKS", "DEAD LETTERS"), rows))
    else:
        print("no audit entries")
    if listing.next_cursor:
        print(f"next page: --cursor {listing.next_cursor}")


def print_attempts(listing: AttemptListing) -> None:
    rows = [
        (
            f"{a.generation}.{a.attempt}",
            a.outcome.value,
            a.node_id,
            a.host,
            a.started_at,
            a.ended_at,
            "-" if a.duration_seconds is None else f"{a.duration_seconds:.3f}s",
            a.error_type,
            a.error_message,
        )
        for a in listing.attempts
    ]
    if rows:
        header = ("ATTEMPT", "OUTCOME", "NODE", "HOST", "STARTED", "ENDED", "DURATION", "ERROR", "MESSAGE")
        print(table(header, rows))
    print(f"task {listing.task_id} is {listing.status.value}: {len(rows)} attempt(s) (generation.attempt)")


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
