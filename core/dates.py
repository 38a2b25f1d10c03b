"""The one way hazardlens reads and writes points in time: aware UTC, ISO 8601 on the wire.

The catalogue stores naive UTC on SQLite and aware values on PostgreSQL; callers get aware UTC
either way, and text from users (API, CLI) is parsed in one place so every filter agrees on what
``2024-05-01`` means as a start and as an end bound.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hazardlens.errors import Invalid


def utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None, *, timespec: str = "auto") -> str | None:
    """ISO 8601 text of ``value`` in UTC (``None`` stays ``None``); naive values are UTC (SQLite
    hands them back naive)."""
    aware = utc(value)
    return aware.isoformat(timespec=timespec) if aware is not None else None


def now_iso(*, timespec: str = "seconds") -> str:
    """The current time as ISO 8601 UTC text, to the second by default (run records, reports)."""
    return datetime.now(UTC).isoformat(timespec=timespec)


def parse_when(text: str | date | None, *, end: bool = False, name: str = "date") -> datetime | None:
    """An ISO date or date-time as an aware UTC bound. A bare date as an end bound means the end of
    that day, so ``captured_to=2024-05-01`` includes photos taken on May 1st. Naive values are UTC."""
    if text is None:
        return None
    if isinstance(text, datetime):
        return utc(text)
    if isinstance(text, date):
        start = datetime(text.year, text.month, text.day, tzinfo=UTC)
        return start + timedelta(days=1) - timedelta(microseconds=1) if end else start
    raw = str(text).strip()
    if not raw:
        return None
    if len(raw) > 40:
        raise Invalid(f"{name} is not a date: too long", code="invalid_date")
    try:
        if len(raw) == 10:
            return parse_when(date.fromisoformat(raw), end=end, name=name)
        return utc(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise Invalid(
            f"{name} must be an ISO date (2024-05-01) or date-time (2024-05-01T08:30:00+08:00), not {raw!r}",
            code="invalid_date",
        ) from None


__all__ = ["iso", "now_iso", "parse_when", "utc"]
