"""Wall-clock stamps as the registry records them (ISO 8601 UTC) and how old they are, for people."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_age", "utc_now_iso"]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def format_age(created_at: str | None, now: datetime | None = None) -> str:
    """`3.5h`, `2.0d`, `40s`: how long ago an ISO 8601 stamp was (`?` when missing or unreadable)."""
    if not created_at:
        return "?"
    try:
        then = datetime.fromisoformat(created_at)
    except ValueError:
        return "?"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
