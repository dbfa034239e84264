"""Where the objects stand: totals by state (of one day or of the whole bucket), the oldest
object still waiting, and the results written lately. Read by runs (their day's totals), the
exporter (Prometheus) and the freshness check; nothing here knows about Dagster.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ai_assets.common import as_utc
from ai_assets.db.results import image_classifications, image_objects

#: A run's day totals give up after this long (PostgreSQL): ~1.4 s for a day of 1M objects
#: (bench/stranded_batches.py), more than a GPU run of a batch takes.
DAY_TOTALS_TIMEOUT_MS = 500

#: Error rows by kind: the start of each error message the pipeline writes (vision.decode,
#: s3.objects) → its kind; anything else is ``other``. Bounded, so it can be a metric label.
ERROR_KINDS = {
    "empty object": "empty",
    "not a recognised image format": "not_an_image",
    "cannot decode image": "undecodable",
    "image is ": "too_many_pixels",
    "object is ": "too_large",
    "the decode process died": "decoder_crashed",  # AI_ASSETS_DECODE_PROCESSES (vision.workers)
}


@dataclasses.dataclass(frozen=True)
class Totals:
    """Objects by state, of one day or of the whole bucket."""

    objects: int = 0  # live objects (not deleted from the bucket)
    current: int = 0  # live objects whose row has their etag (ok or error)
    waiting: int = 0  # live objects without a current row yet
    errors: int = 0  # current rows that are errors
    deleted: int = 0  # keys deleted from the bucket
    #: when the oldest waiting version appeared: the later of its LastModified and the
    #: sensor's first sight of its key (an old object found today waits since today)
    oldest_waiting: dt.datetime | None = None


def _counts() -> sa.Select:
    """One row of counts (objects, current, errors, deleted, oldest waiting) over the join."""
    o, c = image_objects, image_classifications
    live = o.c.deleted_at.is_(None)
    current = live & c.c.status.in_(["ok", "error"]) & (c.c.etag == o.c.etag)
    waiting = live & ~sa.func.coalesce(current, False)
    seen = sa.func.coalesce(o.c.last_modified, o.c.first_seen)
    appeared = sa.case((o.c.first_seen > seen, o.c.first_seen), else_=seen)

    def count(condition: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    return sa.select(
        count(live),
        count(current),
        count(current & (c.c.status == "error")),
        count(~live),
        sa.func.min(sa.case((waiting, appeared))),
    ).select_from(o.outerjoin(c, c.c.s3_key == o.c.s3_key))


def _totals(objects: int, done: int, errors: int, deleted: int, oldest: Any) -> Totals:
    return Totals(
        int(objects), int(done), int(objects - done), int(errors), int(deleted), _moment(oldest)
    )


def totals(engine: Engine, day: str | None = None, timeout_ms: int | None = None) -> Totals | None:
    """Totals in one statement: over the day's key range (index on partition_key, s3_key), or
    over every row; None when PostgreSQL cannot count within ``timeout_ms``."""
    query = _counts()
    if day is not None:
        query = query.where(image_objects.c.partition_key == day)
    try:
        with engine.begin() as connection:
            _time_limit(connection, timeout_ms)
            row = connection.execute(query).one()
    except OperationalError as exc:
        if "statement timeout" not in str(exc):
            raise
        return None
    return _totals(*row)


def totals_by_day(engine: Engine) -> dict[str, Totals]:
    """Every day's totals in one statement: one pass over both tables (a per-day query each
    costs ten times more in all)."""
    day = image_objects.c.partition_key
    query = _counts().add_columns(day).group_by(day)
    with engine.connect() as connection:
        return {row[-1]: _totals(*row[:-1]) for row in connection.execute(query)}


def day_totals(engine: Engine, day: str, timeout_ms: int = DAY_TOTALS_TIMEOUT_MS) -> Totals | None:
    """One day's totals, bounded: what a run reports about its partition."""
    return totals(engine, day, timeout_ms)


@dataclasses.dataclass(frozen=True)
class Recent:
    """Results rows by status and error kind (an object classified twice counts once, its last)."""

    by_status: dict[str, int]  # ok, error, deleted
    errors_by_kind: dict[str, int]  # ERROR_KINDS' values and "other"


def recent(engine: Engine, since: dt.datetime, until: dt.datetime | None = None) -> Recent:
    """Rows classified in [since, until): one range scan of the classified_at index."""
    c = image_classifications
    kind = sa.case(
        *((c.c.error.startswith(start), name) for start, name in ERROR_KINDS.items()),
        else_="other",
    )
    kind = sa.case((c.c.status == "error", kind), else_="")
    window = c.c.classified_at >= since
    if until is not None:
        window &= c.c.classified_at < until
    query = sa.select(c.c.status, kind, sa.func.count()).where(window).group_by(c.c.status, kind)
    by_status = dict.fromkeys(["ok", "error", "deleted"], 0)
    errors_by_kind = dict.fromkeys([*ERROR_KINDS.values(), "other"], 0)
    with engine.connect() as connection:
        for row_status, error_kind, rows in connection.execute(query):
            by_status[row_status] = by_status.get(row_status, 0) + rows
            if error_kind:
                errors_by_kind[error_kind] += rows
    return Recent(by_status, errors_by_kind)


def changed_days(engine: Engine, since: dt.datetime) -> set[str]:
    """Days with an inventory or results row written since ``since`` (two index range scans)."""
    o, c = image_objects, image_classifications
    query = sa.union(
        sa.select(o.c.partition_key).where(o.c.updated_at >= since),
        sa.select(c.c.partition_key).where(c.c.classified_at >= since),
    )
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def every_day(start: dt.date, today: dt.date) -> list[str]:
    """The daily partitions' keys, oldest first."""
    return [(start + dt.timedelta(days=n)).isoformat() for n in range((today - start).days + 1)]


class BucketStatus:
    """The whole bucket's totals and the results written, kept current at a bounded cost.

    Counting every object costs about a second per million (a join of both tables), so totals
    are kept per day: the first refresh counts every day in one pass; each later one recounts
    the days whose rows changed since (plus ``lag``, for rows committed late), then, for at
    most ``budget_s``, days last counted over ``cycle`` ago, oldest first: a day an overwritten
    object left is recounted within about a cycle too. Classifications are counted as they
    appear, as counters.
    """

    def __init__(
        self,
        engine: Engine,
        start: dt.date,
        budget_s: float = 1.0,
        lag: dt.timedelta = dt.timedelta(minutes=2),
        cycle: dt.timedelta = dt.timedelta(minutes=15),
    ) -> None:
        self.engine, self.start, self.budget_s, self.lag = engine, start, budget_s, lag
        self.cycle = cycle
        self.days: dict[str, Totals] = {}
        self.counted_at: dict[str, float] = {}
        self.checked: dt.datetime | None = None  # changes before this are counted
        self.classified: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.counted_until = dt.datetime.now(dt.UTC) - lag  # classifications before: not ours

    def refresh(self, now: dt.datetime) -> None:
        """Recount what changed, then the stalest days within the budget; count new results."""
        started = time.monotonic()
        days = every_day(self.start, max(self.start, now.astimezone(dt.UTC).date()))
        if self.checked is None:  # the first pass counts every day at once
            counted = totals_by_day(self.engine)
            self.days = {day: counted.get(day, Totals()) for day in days}
            self.counted_at = dict.fromkeys(days, started)
            todo, stale = [], []
        else:
            todo = sorted(changed_days(self.engine, self.checked - self.lag) & set(days))
            due = started - self.cycle.total_seconds()
            stale = sorted((d for d in days if self.counted_at.get(d, 0.0) <= due), key=self._age)
        for day in todo:
            self._count(day)
        for day in stale:
            if time.monotonic() - started >= self.budget_s:
                break
            self._count(day)
        self.checked = now
        until = now - self.lag
        if until > self.counted_until:
            new = recent(self.engine, self.counted_until, until)
            self.classified.update(new.by_status)
            self.errors.update(new.errors_by_kind)
            self.counted_until = until

    def totals(self) -> Totals:
        """The bucket's totals: the sum of the days' as last counted."""
        waiting = [t.oldest_waiting for t in self.days.values() if t.oldest_waiting]
        sums = [sum(getattr(t, f) for t in self.days.values()) for f in _COUNTED]
        return Totals(*sums, oldest_waiting=min(waiting, default=None))

    def _age(self, day: str) -> float:
        return self.counted_at.get(day, 0.0)

    def _count(self, day: str) -> None:
        counted = totals(self.engine, day)
        assert counted is not None  # no time limit
        self.days[day] = counted
        self.counted_at[day] = time.monotonic()


_COUNTED = ("objects", "current", "waiting", "errors", "deleted")


def error_kind(message: str) -> str:
    """The kind ``recent`` files an error message under (the same table, in Python)."""
    return next((kind for start, kind in ERROR_KINDS.items() if message.startswith(start)), "other")


def _time_limit(connection: sa.Connection, timeout_ms: int | None) -> None:
    if timeout_ms is not None and connection.dialect.name == "postgresql":
        connection.execute(sa.text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))


def _moment(value: Any) -> dt.datetime | None:
    """A timestamp from either backend (SQLite computes CASE results as ISO text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return as_utc(value)
