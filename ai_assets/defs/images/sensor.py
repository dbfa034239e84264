"""s3_image_sensor: keep the inventory current and request one run per batch.

With an SQS queue (AI_ASSETS_SQS_QUEUE_URL), each tick first drains the bucket's S3 event
notifications, commits them to the inventory and only then deletes the messages; the listing
runs as reconciliation: a new complete pass at most every AI_ASSETS_RECONCILE_MINUTES, and on
every tick while the queue does not answer. Without a queue the listing runs continuously.

A listing tick lists the next bounded slice of the prefix (after the cursor's key), diffs it
against the inventory and results rows of the same key range and upserts the inventory in one
transaction. Either way, a run is requested per new batch of at most
AI_ASSETS_MAX_OBJECTS_PER_RUN objects of one day. The daemon then reports the tick's events,
launches its runs and saves its cursor; a crash in between replays the tick from the old
cursor. So every step is replay-safe:

* batches are committed with the inventory (``image_batches``) and stay there until a tick
  sees their run, so the next tick requests a batch whose run never started again, under the
  same run key (the daemon never launches it twice), even when its S3 events are gone;
* a re-delivered event, or a later listing pass, does the same for an object not yet current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Collection, Iterable, Sequence

import dagster as dg
from sqlalchemy.engine import Engine

from ai_assets.common import chunked
from ai_assets.db import inventory, status
from ai_assets.defs.images.assets import day_metadata, image_classifications, s3_images
from ai_assets.defs.images.jobs import BATCH_TAG, SENSOR_NAME, classify_images_job
from ai_assets.resources import ImageBucketResource, ResultsDatabaseResource
from ai_assets.s3.sqs import Drained
from ai_assets.settings import (
    list_seconds_per_tick,
    max_objects_per_run,
    reconcile_minutes,
    sensor_interval_seconds,
    start_date,
)

#: Objects listed per tick at most: a bucket of up to this many is one tick's listing.
MAX_OBJECTS_PER_TICK = 100_000
#: The first tick's guess of the µs per object spent diffing and committing after the listing
#: or the drain (about this on 2 cores with a local PostgreSQL); later ticks measure it.
DEFAULT_COST_US = 250
#: The fewest objects whose cost is worth measuring; smaller ticks keep the last figure.
MIN_OBJECTS_MEASURED = 1_000
#: Never keep back more than this per object, however slow one tick was (10 ms: 1,000 objects
#: a 10 s tick).
MAX_COST_US = 10_000
#: Keys per ListObjectsV2 page (S3's maximum).
PAGE_SIZE = 1_000
#: SQS messages received per tick at most (S3 sends one event per message): with the commit
#: and the deletes after the drain, a tick of 55,000 took 12–20 s here (bench/sqs_drain.py).
MAX_MESSAGES_PER_TICK = 50_000
#: Parallel long polls on the queue (bench/sqs_drain.py measures the drain rate).
SQS_RECEIVERS = 8
#: Days without objects recorded as complete per tick at most, two events each (about 17 ms
#: an event on SQLite, a few on PostgreSQL): a start date years back is caught up in a few ticks.
MAX_EMPTY_DAYS_PER_TICK = 200
_MAX_LOGGED = 5
_RUN_LOOKUP_CHUNK = 500
#: Non-image keys this process has reported, each once rather than on every pass (bounded).
_REPORTED: dict[str, None] = {}
_MAX_REPORTED = 100_000


def not_yet_reported(keys: Iterable[str]) -> list[str]:
    """The keys not reported before; remembers them (forgetting the oldest beyond the bound)."""
    new = [key for key in keys if key not in _REPORTED]
    _REPORTED.update(dict.fromkeys(new))
    while len(_REPORTED) > _MAX_REPORTED:
        del _REPORTED[next(iter(_REPORTED))]
    return new


@dataclasses.dataclass(frozen=True)
class Cursor:
    """Where the listing stands: the prefix, a key, counters and the measured cost per object."""

    prefix: str = ""
    after: str = ""  # the last key of the previous slice; "" = a new pass starts
    passes: int = 0  # complete listing passes so far
    listed: int = 0  # objects listed in the pass under way
    started: int = 0  # Unix time the pass under way (or the last one) started
    cost_us: int = DEFAULT_COST_US  # measured µs per object to diff and commit (the reserve)
    empty_from: str = ""  # the start date the days without objects were recorded from
    empty_through: str = ""  # every such day up to this one is recorded as complete

    @classmethod
    def parse(cls, raw: str | None, prefix: str) -> Cursor:
        """The saved cursor, or a fresh one (first tick, v1's cursor, or another prefix)."""
        try:
            fields = json.loads(raw or "")
            cursor = cls(**fields) if isinstance(fields, dict) else cls(prefix)
        except (ValueError, TypeError):
            cursor = cls(prefix)
        return cursor if cursor.prefix == prefix else cls(prefix)

    def pass_due(self, now: float, every_seconds: float) -> bool:
        """Whether to list now: mid-pass always; a new pass ``every_seconds`` after the last."""
        return bool(self.after) or now - self.started >= every_seconds

    def advance(self, listing_last: str | None, listed: int, now: float) -> Cursor:
        started = self.started if self.after else int(now)  # "" = this slice began a pass
        if listing_last is None:
            return dataclasses.replace(
                self, after="", passes=self.passes + 1, listed=0, started=started
            )
        return dataclasses.replace(
            self, after=listing_last, listed=self.listed + listed, started=started
        )

    @property
    def reserve(self) -> float:
        """Seconds per object to keep back from the tick's budget for diffing and committing."""
        return self.cost_us / 1e6

    def learn(self, seconds: float, objects: int) -> Cursor:
        """The cost per object measured on this tick's work, when there was enough to measure."""
        if objects < MIN_OBJECTS_MEASURED:
            return self
        cost = round(seconds / objects * 1e6)
        return dataclasses.replace(self, cost_us=min(max(cost, 1), MAX_COST_US))

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, separators=(",", ":"))


def launched(instance: dg.DagsterInstance, batches: Collection[str]) -> set[str]:
    """The batches among ``batches`` that have a run (queued, running or finished)."""
    found: set[str] = set()
    ids = sorted(batches)
    for chunk in chunked(ids, _RUN_LOOKUP_CHUNK):
        runs = instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: list(chunk)}))
        found.update(run.tags[BATCH_TAG] for run in runs)
    return found


def lost_batches(
    instance: dg.DagsterInstance, engine: Engine, plan: inventory.SlicePlan
) -> dict[str, str]:
    """Earlier batches with objects still to classify and no run: id → day, to request again.

    Two sources: batches committed by earlier ticks and not yet seen as runs (a crash between
    the commit and the launch, whatever the path: found on the next tick), and batches of
    objects this tick found still not current. Batches whose run exists leave the first list.
    """
    new = {b.batch_id for b in plan.batches}
    waiting = {b: day for b, day in inventory.unconfirmed_batches(engine).items() if b not in new}
    candidates = plan.pending | {b: day for b, day in waiting.items() if day is not None}
    have_runs = launched(instance, candidates) if candidates else set()
    inventory.forget_batches(
        engine, {b for b, day in waiting.items() if day is None or b in have_runs}
    )
    return {batch: day for batch, day in candidates.items() if batch not in have_runs}


def run_request(batch: str, day: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=batch, partition_key=day, tags={BATCH_TAG: batch})


def day_events(
    days: dict[str, inventory.DayCounts],
    bucket: ImageBucketResource,
    description: str | None = None,
) -> Iterable[dg.AssetMaterialization]:
    """One s3_images materialization per day the tick found changes in, never one per object."""
    for day in sorted(days):
        counts = days[day]
        yield dg.AssetMaterialization(
            asset_key=s3_images.key,
            partition=day,
            description=description,
            metadata={
                "new": dg.MetadataValue.int(counts.new),
                "changed": dg.MetadataValue.int(counts.changed),
                "deleted": dg.MetadataValue.int(counts.deleted),
                "bytes": dg.MetadataValue.int(counts.bytes),
                "prefix": dg.MetadataValue.path(bucket.s3_uri(bucket.prefix)),
            },
        )


def empty_days(
    instance: dg.DagsterInstance, engine: Engine, cursor: Cursor, today: dt.date
) -> tuple[list[str], Cursor]:
    """The next days that hold no object and are not materialized, once a pass is complete.

    Recorded as materialized, an empty day is never shown as missing work, so backfilling the
    missing days launches runs only for days that hold objects. The watermark keeps this to
    the one new day a day once caught up; a new start date starts it over.
    """
    start = start_date()
    if not cursor.passes:  # the inventory holds the whole bucket only after a complete pass
        return [], cursor
    first = start
    if cursor.empty_from == start.isoformat() and cursor.empty_through:
        first = max(start, dt.date.fromisoformat(cursor.empty_through) + dt.timedelta(days=1))
    last = min(today, first + dt.timedelta(days=MAX_EMPTY_DAYS_PER_TICK - 1))
    if first > last:
        return [], cursor
    holding = set(inventory.days_with_objects(engine, first.isoformat(), last.isoformat()))
    empty = [day for day in status.every_day(first, last) if day not in holding]
    if empty:  # a fresh cursor must not record again what a run or a tick already did
        done = instance.get_materialized_partitions(image_classifications.key)
        empty = [day for day in empty if day not in done]
    watermark = dataclasses.replace(
        cursor, empty_from=start.isoformat(), empty_through=last.isoformat()
    )
    return empty, watermark


def empty_day_events(
    days: Sequence[str], bucket: ImageBucketResource
) -> Iterable[dg.AssetMaterialization]:
    """Both assets' materializations of days without objects: nothing there, nothing to do."""
    yield from day_events(
        dict.fromkeys(days, inventory.DayCounts()), bucket, "No object in the bucket has this day."
    )
    nothing = day_metadata(status.Totals())
    for day in days:
        yield dg.AssetMaterialization(
            asset_key=image_classifications.key,
            partition=day,
            description="Nothing to classify: no object has this day (recorded by the sensor).",
            metadata=nothing,
        )


def _log_drain(context: dg.SensorEvaluationContext, drained: Drained, queue_url: str) -> None:
    if drained.error:
        context.log.warning(
            f"SQS queue {queue_url} unavailable ({drained.error}); the listing carries on "
            "every tick until the queue answers again"
        )
    for problem in drained.malformed[:_MAX_LOGGED]:
        context.log.warning(f"removing a malformed message from the queue: {problem}")
    if len(drained.malformed) > _MAX_LOGGED:
        context.log.warning(f"... and {len(drained.malformed) - _MAX_LOGGED} more malformed")
    if drained.test_events:
        context.log.info(f"removing {drained.test_events} s3:TestEvent messages")


def record_events(
    context: dg.SensorEvaluationContext,
    s3: ImageBucketResource,
    engine: Engine,
    seconds: float,
    cursor: Cursor,
) -> tuple[inventory.SlicePlan, bool, Cursor]:
    """Drain the queue, commit its events to the inventory, then delete the messages.

    Returns the plan, whether the queue answered (when it did not, the listing runs on), and
    the cursor with the cost per message measured.
    """
    drained = s3.drain_events(
        max_messages=MAX_MESSAGES_PER_TICK,
        seconds=seconds,
        receivers=SQS_RECEIVERS,
        reserve=cursor.reserve,
    )
    received = time.monotonic()
    _log_drain(context, drained, s3.queue_url)
    known = inventory.read_known_keys(engine, drained.events)
    plan = inventory.plan_events(
        drained.events.values(),
        known,
        start=start_date(),
        now=dt.datetime.now(dt.UTC),
        max_per_batch=max_objects_per_run(),
    )
    plan.skipped.extend(drained.skipped)
    inventory.write_rows(engine, plan.rows, plan.batches)  # committed before any delete
    if failed := s3.delete_events(drained, SQS_RECEIVERS):
        context.log.warning(
            f"could not delete {len(failed)} of {drained.messages} messages ({failed[0]}); "
            "they come back after the visibility timeout and change nothing"
        )
    if drained.messages:
        context.log.info(
            f"received {drained.messages:,} messages, {drained.records:,} records: "
            f"{len(drained.events):,} object events, {plan_summary(plan)}"
        )
    cursor = cursor.learn(time.monotonic() - received, drained.messages)
    return plan, drained.error is None, cursor


def record_slice(
    context: dg.SensorEvaluationContext,
    s3: ImageBucketResource,
    engine: Engine,
    cursor: Cursor,
    seconds: float,
) -> tuple[inventory.SlicePlan, Cursor]:
    """List the next slice after the cursor and commit its diff to the inventory."""
    started = dt.datetime.now(dt.UTC)  # deletions are stamped before any page is read
    listing = s3.list_slice(
        cursor.after,
        max_objects=MAX_OBJECTS_PER_TICK,
        seconds=seconds,
        page_size=PAGE_SIZE,
        reserve=cursor.reserve,
    )
    listed = time.monotonic()
    known = inventory.read_known(engine, listing, s3.prefix)
    plan = inventory.plan_slice(
        listing, known, start=start_date(), now=started, max_per_batch=max_objects_per_run()
    )
    inventory.write_rows(engine, plan.rows, plan.batches)  # committed before any request
    context.log.info(
        f"listed {plan.listed:,} objects after {cursor.after!r} in {listing.pages} pages"
        f"{' (end of pass)' if listing.complete else ''}: {plan_summary(plan)}"
    )
    cursor = cursor.learn(time.monotonic() - listed, plan.listed)
    return plan, cursor.advance(listing.last, plan.listed, started.timestamp())


def plan_summary(plan: inventory.SlicePlan) -> str:
    counts = plan.days.values()
    return (
        f"{sum(c.new for c in counts):,} new, {sum(c.changed for c in counts):,} changed, "
        f"{sum(c.deleted for c in counts):,} deleted; {len(plan.batches)} new batches"
    )


@dg.sensor(
    name=SENSOR_NAME,
    job=classify_images_job,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Keeps the image_objects inventory current from the bucket's S3 event notifications "
        "(when AI_ASSETS_SQS_QUEUE_URL is set) and a bounded, resumable listing, and requests "
        "one classification run per batch of new, changed or deleted images."
    ),
)
def s3_image_sensor(
    context: dg.SensorEvaluationContext,
    s3: ImageBucketResource,
    results_db: ResultsDatabaseResource,
) -> dg.SensorResult:
    if problem := s3.setup_problem():  # every tick until fixed: a skip, not a failure
        return dg.SensorResult(skip_reason=problem)
    cursor = Cursor.parse(context.cursor, s3.prefix)
    engine = results_db.get_engine()
    deadline = time.monotonic() + list_seconds_per_tick()  # one budget for the whole tick
    plans: list[inventory.SlicePlan] = []
    queue_answered = False
    if s3.queue_url:  # events first: the listing after them is at least as new
        left = deadline - time.monotonic()
        plan, queue_answered, cursor = record_events(context, s3, engine, left, cursor)
        plans.append(plan)
    every = reconcile_minutes() * 60 if queue_answered else 0.0
    if cursor.pass_due(time.time(), every):  # lists at least one page, however late
        left = max(0.0, deadline - time.monotonic())
        plan, cursor = record_slice(context, s3, engine, cursor, left)
        plans.append(plan)

    plan = inventory.merge(plans)
    today = dt.datetime.now(dt.UTC).date()
    empty, cursor = empty_days(context.instance, engine, cursor, today)
    lost = lost_batches(context.instance, engine, plan)
    requests = [run_request(b.batch_id, b.day) for b in plan.batches]
    requests += [run_request(batch, day) for batch, day in sorted(lost.items())]
    if skipped := not_yet_reported(plan.skipped):
        context.log.info(f"ignoring {len(skipped)} non-image keys, e.g. {skipped[:3]!r}")
    if lost:
        context.log.warning(f"re-requesting {len(lost)} batches whose runs never started")
    if empty:
        context.log.info(f"recording {len(empty)} days without objects, {empty[0]} to {empty[-1]}")
    return dg.SensorResult(
        run_requests=requests,
        asset_events=[*day_events(plan.days, s3), *empty_day_events(empty, s3)],
        cursor=cursor.dumps(),
    )
