"""The inventory (``image_objects``): diff a listing slice against it, batch what is not current.

Pure planning (:func:`plan_slice`) plus the SQLAlchemy Core queries around it; nothing here
knows about Dagster. An object is *current* when its results row has the inventory's ETag
(``ok`` or ``error``), or, for a deleted key, when its row says ``deleted`` or it has none.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ai_assets.common import Counters, as_utc, chunked
from ai_assets.db.results import (
    image_batches,
    image_classifications,
    image_objects,
    insert,
    upsert,
)
from ai_assets.s3.events import ObjectEvent, is_later
from ai_assets.s3.keys import is_image_key, prefix_end
from ai_assets.s3.objects import Slice

#: Rows per statement: below SQLite's 32,766 bound parameters at 8 columns a row.
WRITE_CHUNK = 2_000
#: Rows a run reads from the inventory at a time (keyset pagination: bounded memory).
READ_PAGE = 1_000


def _partition(day: dt.date, start: dt.date, today: dt.date) -> str:
    """A date clamped into the partitions [start, today], as a partition key."""
    return min(max(day, start), max(start, today)).isoformat()


def day_of(moment: dt.datetime, start: dt.date, today: dt.date) -> str:
    """The daily partition of an object version: its UTC date, clamped into [start, today]."""
    return _partition(as_utc(moment).date(), start, today)


def clamp_day(day: str, start: dt.date, today: dt.date) -> str:
    try:
        parsed = dt.date.fromisoformat(day)
    except ValueError:  # not a day (e.g. a v1 key): the first partition
        parsed = start
    return _partition(parsed, start, today)


@dataclasses.dataclass(frozen=True)
class Known:
    """What the two tables hold about one key: its inventory row (if any) and its result."""

    s3_key: str
    inventoried: bool
    partition_key: str
    etag: str
    size_bytes: int | None = None
    last_modified: dt.datetime | None = None
    first_seen: dt.datetime | None = None
    deleted_at: dt.datetime | None = None
    batch_id: str | None = None
    sequencer: str | None = None
    result_etag: str | None = None
    result_status: str | None = None


def is_current(
    etag: str, deleted: bool, result_etag: str | None, result_status: str | None
) -> bool:
    if deleted:
        return result_status in (None, "deleted")
    return result_status in ("ok", "error") and result_etag == etag


@dataclasses.dataclass
class DayCounts(Counters):
    """What one tick found new, changed and deleted in one daily partition."""

    new: int = 0
    changed: int = 0
    deleted: int = 0
    bytes: int = 0


@dataclasses.dataclass(frozen=True)
class Batch:
    """Objects of one day to classify in one run; ``batch_id`` is the run key."""

    batch_id: str
    day: str
    size: int


@dataclasses.dataclass
class SlicePlan:
    """What one tick writes and requests for one listing slice."""

    rows: list[dict[str, Any]]  # inventory rows to upsert (changed, or newly batched)
    batches: list[Batch]  # new batches
    pending: dict[str, str]  # earlier batch id → day, for objects still not current
    days: dict[str, DayCounts]
    skipped: list[str]  # non-image keys
    listed: int


def batch_id(day: str, versions: Iterable[tuple[str, str]]) -> str:
    """Deterministic id of a batch: a hash of its day and sorted (key, version) pairs."""
    digest = hashlib.sha256(day.encode())
    for key, version in sorted(versions):
        digest.update(f"\0{key}\0{version}".encode("utf-8", "surrogatepass"))
    return "batch-" + digest.hexdigest()[:32]


def _version(row: dict[str, Any]) -> str:
    """An object version's identity in a batch id: a re-upload or re-deletion is a new one."""
    if row["deleted_at"] is not None:
        return f"deleted@{row['deleted_at'].isoformat()}"
    stamp = row["last_modified"].isoformat() if row["last_modified"] else ""
    return f"{row['etag']}@{stamp}"


def merge(plans: Sequence[SlicePlan]) -> SlicePlan:
    """One tick's plans (events, then a listing slice) as one: batches, pending, day counts."""
    merged = SlicePlan(rows=[], batches=[], pending={}, days={}, skipped=[], listed=0)
    for plan in plans:
        merged.rows += plan.rows
        merged.batches += plan.batches
        merged.pending |= plan.pending
        merged.skipped += plan.skipped
        merged.listed += plan.listed
        for day, counts in plan.days.items():
            merged.days[day] = merged.days.get(day, DayCounts()) + counts
    return merged


class _Planner:
    """Collects the rows to write and the objects to batch while a slice or events are diffed."""

    def __init__(self, start: dt.date, now: dt.datetime) -> None:
        self.start = start
        self.now = now
        self.today = now.astimezone(dt.UTC).date()
        self.rows: dict[str, dict[str, Any]] = {}
        self.days: dict[str, DayCounts] = collections.defaultdict(DayCounts)
        self.todo: dict[str, list[str]] = collections.defaultdict(list)
        self.pending: dict[str, str] = {}
        self.skipped: list[str] = []

    def settle(self, key: str, row: dict[str, Any], k: Known | None, changed: bool) -> None:
        """Write ``row`` if it changed; batch the object unless it is current or still pending."""
        deleted = row["deleted_at"] is not None
        result = (k.result_etag, k.result_status) if k else (None, None)
        if is_current(row["etag"], deleted, *result):
            if changed:
                self.rows[key] = row
            return
        if not changed and k is not None and k.batch_id:
            self.pending[k.batch_id] = row["partition_key"]
            return
        self.rows[key] = row
        self.todo[row["partition_key"]].append(key)

    def live(self, key: str, k: Known | None, version: dict[str, Any], day: str) -> None:
        """A version seen live: new or changed unless the inventory already has its ETag."""
        inventoried = k is not None and k.inventoried
        known_live = inventoried and k is not None and k.deleted_at is None
        if known_live and k is not None and k.etag == version["etag"]:
            self.settle(key, _row(k), k, changed=False)
            return
        counts = self.days[day]
        counts.bytes += version["size_bytes"] or 0
        if known_live:
            counts.changed += 1
        else:
            counts.new += 1
        first_seen = k.first_seen if k is not None and inventoried and k.first_seen else self.now
        row = {"s3_key": key, "partition_key": day, "first_seen": first_seen}
        self.settle(key, row | version | {"deleted_at": None, "batch_id": None}, k, changed=True)

    def gone(self, key: str, k: Known, deleted_at: dt.datetime, sequencer: str | None) -> None:
        """A key seen gone that the inventory or results know: deleted unless it already is."""
        if k.inventoried and k.deleted_at is not None:
            self.settle(key, _row(k), k, changed=False)
            return
        if not k.inventoried and k.result_status in (None, "deleted"):
            return  # a result for a key gone before the inventory existed: nothing to do
        row = _row(k) | {"deleted_at": deleted_at, "batch_id": None, "sequencer": sequencer}
        row["partition_key"] = clamp_day(row["partition_key"], self.start, self.today)
        row["first_seen"] = row["first_seen"] or self.now
        self.days[row["partition_key"]].deleted += 1
        self.settle(key, row, k, changed=True)

    def plan(self, max_per_batch: int, listed: int) -> SlicePlan:
        batches = []
        for day in sorted(self.todo):
            keys = sorted(self.todo[day])
            for chunk in chunked(keys, max_per_batch):
                batch = batch_id(day, ((key, _version(self.rows[key])) for key in chunk))
                for key in chunk:
                    self.rows[key]["batch_id"] = batch
                batches.append(Batch(batch, day, len(chunk)))
        return SlicePlan(
            rows=[self.rows[key] for key in sorted(self.rows)],
            batches=batches,
            pending=self.pending,
            days=dict(self.days),
            skipped=self.skipped,
            listed=listed,
        )


def plan_slice(
    listing: Slice,
    known: dict[str, Known],
    *,
    start: dt.date,
    now: dt.datetime,
    max_per_batch: int,
) -> SlicePlan:
    """Diff a slice against the inventory and results of its key range; batch what is stale.

    ``known`` holds every inventory and results row in the slice's key range. Objects that are
    listed, or gone, and not current join a new batch unless an earlier batch still covers them
    (``pending``: its run may be queued, running, or lost in a daemon crash). ``now`` is when
    the listing started: it stamps deletions, so an event after the listing is later.
    """
    planner = _Planner(start, now)
    listed: set[str] = set()
    for obj in listing.objects:
        if not is_image_key(obj.key):
            planner.skipped.append(obj.key)
            continue
        listed.add(obj.key)
        version = {
            "etag": obj.etag,
            "size_bytes": obj.size,
            "last_modified": obj.last_modified,
            "sequencer": None,  # a listing knows no sequencer; events compare by time with it
        }
        planner.live(
            obj.key, known.get(obj.key), version, day_of(obj.last_modified, start, planner.today)
        )
    for key, k in known.items():
        if key not in listed and is_image_key(key):
            planner.gone(key, k, now, None)
    return planner.plan(max_per_batch, len(listing.objects))


def plan_events(
    events: Iterable[ObjectEvent],
    known: dict[str, Known],
    *,
    start: dt.date,
    now: dt.datetime,
    max_per_batch: int,
) -> SlicePlan:
    """Apply S3 events (the latest per key) to the inventory; batch what is stale.

    An event older than what the inventory holds, or the same version again, changes nothing;
    if that object is still not current, its earlier batch is ``pending`` as in a listing.
    A removal of a key nobody knew is recorded (a tombstone), so a late creation event loses.
    """
    planner = _Planner(start, now)
    events = list(events)
    for event in events:
        k = known.get(event.key)
        if k is not None and k.inventoried:
            held = k.deleted_at if k.deleted_at is not None else k.last_modified
            same = (
                (k.deleted_at is not None)
                if event.removed
                else k.deleted_at is None and k.etag == event.etag
            )
            if same or not is_later(event.sequencer, event.time, k.sequencer, held):
                planner.settle(event.key, _row(k), k, changed=False)
                continue
        if not event.removed:
            modified = event.last_modified or event.time
            version = {
                "etag": event.etag,
                "size_bytes": event.size,
                "last_modified": modified,
                "sequencer": event.sequencer or None,
            }
            planner.live(event.key, k, version, day_of(modified, start, planner.today))
        elif k is not None:
            planner.gone(event.key, k, event.time, event.sequencer or None)
        else:
            day = day_of(event.time, start, planner.today)
            tombstone = {
                "s3_key": event.key,
                "partition_key": day,
                "etag": event.etag,
                "size_bytes": None,
                "last_modified": None,
                "first_seen": now,
                "deleted_at": event.time,
                "batch_id": None,
                "sequencer": event.sequencer or None,
            }
            planner.settle(event.key, tombstone, None, changed=True)
    return planner.plan(max_per_batch, len(events))


def _row(k: Known) -> dict[str, Any]:
    return {
        "s3_key": k.s3_key,
        "partition_key": k.partition_key,
        "etag": k.etag,
        "size_bytes": k.size_bytes,
        "last_modified": k.last_modified,
        "first_seen": k.first_seen,
        "deleted_at": k.deleted_at,
        "batch_id": k.batch_id,
        "sequencer": k.sequencer,
    }


def _key_range(column: sa.ColumnElement[str], listing: Slice, prefix: str) -> sa.ColumnElement:
    """The slice's key range: ``(after, last]``, or to the prefix's end for the last slice."""
    bounds = [column >= prefix]
    if listing.after:
        bounds.append(column > listing.after)
    if listing.last is not None:
        bounds.append(column <= listing.last)
    elif (end := prefix_end(prefix)) is not None:
        bounds.append(column < end)
    return sa.and_(*bounds)


#: The inventory columns a diff reads (``updated_at`` is the exporter's, not the sensor's).
_KNOWN_COLUMNS = [column for column in image_objects.c if column.name != "updated_at"]


def _known(inventory: Iterable[sa.Row], results: dict[str, sa.Row]) -> dict[str, Known]:
    """Merge inventory rows with the results rows of the same keys (``results`` is consumed)."""
    known: dict[str, Known] = {}
    for row in inventory:
        result = results.pop(row.s3_key, None)
        known[row.s3_key] = Known(
            inventoried=True,
            result_etag=result.etag if result else None,
            result_status=result.status if result else None,
            **row._mapping,
        )
    for key, result in results.items():  # results without an inventory row (v1's rows)
        known[key] = Known(
            s3_key=key,
            inventoried=False,
            partition_key=result.partition_key,
            etag=result.etag or "",
            result_etag=result.etag,
            result_status=result.status,
        )
    return known


def _read(
    connection: sa.Connection, where: Callable[[sa.ColumnElement[str]], sa.ColumnElement]
) -> dict[str, Known]:
    o, c = image_objects, image_classifications
    result_columns = (c.c.s3_key, c.c.etag, c.c.status, c.c.partition_key)
    results = {
        row.s3_key: row
        for row in connection.execute(sa.select(*result_columns).where(where(c.c.s3_key)))
    }
    inventory = connection.execute(sa.select(*_KNOWN_COLUMNS).where(where(o.c.s3_key))).all()
    return _known(inventory, results)


def read_known(engine: Engine, listing: Slice, prefix: str) -> dict[str, Known]:
    """Every inventory and results row in the slice's key range: two indexed range scans."""
    with engine.connect() as connection:
        return _read(connection, lambda column: _key_range(column, listing, prefix))


def read_known_keys(engine: Engine, keys: Iterable[str]) -> dict[str, Known]:
    """The inventory and results rows of ``keys`` (primary-key lookups, a chunk at a time)."""
    ordered = sorted(keys)
    known: dict[str, Known] = {}
    with engine.connect() as connection:
        for chunk in chunked(ordered, READ_PAGE):
            known |= _read(connection, lambda column, chunk=chunk: column.in_(chunk))
    return known


def write_rows(
    engine: Engine, rows: Sequence[dict[str, Any]], batches: Sequence[Batch] = ()
) -> None:
    """Upsert inventory rows and record their new batches, in one transaction.

    ``first_seen`` of existing rows is kept. A batch stays in ``image_batches`` until a later
    tick sees its run (:func:`unconfirmed_batches`), so a crash before the launch cannot strand
    it.
    """
    if not rows:
        return
    with engine.begin() as connection:
        # stamped once connected, so the commit follows it closely: the exporter recounts days
        # changed since its last read less a lag, and a stamp older than that is missed
        now = dt.datetime.now(dt.UTC)
        rows = [row | {"updated_at": now} for row in rows]
        requested = [
            {"batch_id": b.batch_id, "partition_key": b.day, "objects": b.size, "requested_at": now}
            for b in batches
        ]
        for chunk in chunked(rows, WRITE_CHUNK):
            upsert(connection, image_objects, chunk, _keep_first_seen).close()
        if requested:  # a replayed tick commits the same batch ids again: nothing changes
            batch_insert = insert(engine, image_batches).on_conflict_do_nothing()
            connection.execute(batch_insert, requested)


def _keep_first_seen(statement: Any) -> Any:
    """Replace an inventory row by key, all but when the sensor first saw the key."""
    kept = ("s3_key", "first_seen")
    updated = {c.name: statement.excluded[c.name] for c in image_objects.c if c.name not in kept}
    return statement.on_conflict_do_update(index_elements=["s3_key"], set_=updated).returning(
        image_objects.c.s3_key
    )


#: Unconfirmed batches one tick looks at, oldest first (a normal tick finds the last tick's).
MAX_UNCONFIRMED = 1_000


def unconfirmed_batches(engine: Engine, limit: int = MAX_UNCONFIRMED) -> dict[str, str | None]:
    """Batches committed but not yet seen as runs, oldest first: id → day.

    The day is None for a batch that no inventory row belongs to any more (its objects were
    batched again since): nothing is left to run for it.
    """
    b, o = image_batches, image_objects
    live = sa.exists().where(o.c.batch_id == b.c.batch_id)  # ix_image_objects_batch_id
    query = (
        sa.select(b.c.batch_id, b.c.partition_key, live.label("live"))
        .order_by(b.c.requested_at, b.c.batch_id)
        .limit(limit)
    )
    with engine.connect() as connection:
        return {
            batch: day if has_rows else None for batch, day, has_rows in connection.execute(query)
        }


def forget_batches(engine: Engine, batches: Iterable[str]) -> None:
    """Drop batches whose run exists (or that nothing belongs to) from ``image_batches``."""
    ids = sorted(batches)
    if not ids:
        return
    column = image_batches.c.batch_id
    with engine.begin() as connection:
        for chunk in chunked(ids, READ_PAGE):
            connection.execute(image_batches.delete().where(column.in_(chunk)))


def days_with_objects(engine: Engine, first: str, last: str) -> list[str]:
    """The days in [first, last] that hold an inventory row, oldest first.

    One index probe per such day (ix_image_objects_partition_key), never a scan of their
    objects: a loose index scan, which neither PostgreSQL 15 nor SQLite does by itself.
    """
    day = image_objects.c.partition_key
    following = sa.select(sa.func.min(day)).where(day <= last)
    found: list[str] = []
    with engine.connect() as connection:
        found_day = connection.scalar(following.where(day >= first))
        while found_day is not None:
            found.append(found_day)
            found_day = connection.scalar(following.where(day > found_day))
    return found


@dataclasses.dataclass(frozen=True)
class Target:
    """An object a run is asked to classify: its key and its day."""

    s3_key: str
    partition_key: str


def _paged(engine: Engine, query: sa.Select, key: sa.ColumnElement[str]) -> Iterator[Target]:
    """Stream ``query`` in key order, one page per round trip (keyset pagination)."""
    after: str | None = None
    while True:
        page_query = query if after is None else query.where(key > after)
        with engine.connect() as connection:
            page = connection.execute(page_query.order_by(key).limit(READ_PAGE)).all()
        yield from (Target(row.s3_key, row.partition_key) for row in page)
        if len(page) < READ_PAGE:
            return
        after = page[-1].s3_key


def batch_targets(
    engine: Engine, batch: str, model_id: str, model_revision: str, reclassify: bool = False
) -> Iterator[Target]:
    """The objects of ``batch`` (unless moved to a later one) that are not current yet (all:
    reclassify): a retried or re-executed batch run goes on where the last attempt stopped."""
    return _targets(engine, image_objects.c.batch_id == batch, model_id, model_revision, reclassify)


def stale_targets(
    engine: Engine, day: str, model_id: str, model_revision: str, reclassify: bool = False
) -> Iterator[Target]:
    """The day's objects that are not current, or come from another model (all: reclassify)."""
    return _targets(
        engine, image_objects.c.partition_key == day, model_id, model_revision, reclassify
    )


def _targets(
    engine: Engine,
    selected: sa.ColumnElement[bool],
    model_id: str,
    model_revision: str,
    reclassify: bool,
) -> Iterator[Target]:
    """The ``selected`` objects whose row is missing, of another version or model, or not yet
    marked deleted; with ``reclassify``, every live one too."""
    o, c = image_objects, image_classifications
    query = (
        sa.select(o.c.s3_key, o.c.partition_key)
        .select_from(o.outerjoin(c, c.c.s3_key == o.c.s3_key))
        .where(selected)
    )
    live = o.c.deleted_at.is_(None)
    stale_deleted = c.c.s3_key.is_not(None) & (c.c.status != "deleted")
    if reclassify:
        query = query.where(sa.or_(live, stale_deleted))
    else:
        stale_live = sa.or_(
            c.c.s3_key.is_(None),
            c.c.status.not_in(["ok", "error"]),
            c.c.etag.is_distinct_from(o.c.etag),
            c.c.model_id.is_distinct_from(model_id),
            c.c.model_revision.is_distinct_from(model_revision),
        )
        query = query.where(sa.or_(live & stale_live, ~live & stale_deleted))
    return _paged(engine, query, o.c.s3_key)
