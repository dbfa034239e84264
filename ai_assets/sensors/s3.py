"""s3_image_sensor: keep the inventory current slice by slice and request one run per batch.

Each tick lists the next bounded slice of the prefix (after the cursor's key), diffs it against
the inventory and results rows of the same key range, upserts the inventory in one
transaction, and requests a run per new batch of at most AI_ASSETS_MAX_OBJECTS_PER_RUN objects
of one day. The daemon then reports the tick's events, launches its runs and saves its cursor;
a crash in between replays the tick from the old cursor. So every step is replay-safe:

* batches are committed with the inventory, so a replay finds the same objects already
  batched and asks Dagster whether each batch's run exists; a batch whose run never started
  is requested again, under the same run key, so the daemon never launches it twice;
* a later listing pass does the same for any object that is still not current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Iterable

import dagster as dg

from ai_assets import inventory
from ai_assets.assets import BATCH_TAG, classify_images_job, s3_images
from ai_assets.resources import ImageBucket, ResultsDatabase
from ai_assets.settings import list_seconds_per_tick, max_objects_per_run, start_date

#: Objects listed per tick at most: a bucket of up to this many is one tick's listing.
MAX_OBJECTS_PER_TICK = 100_000
#: Keys per ListObjectsV2 page (S3's maximum).
PAGE_SIZE = 1_000
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
    """Where the listing stands: the prefix, a key and two counters (S3 keys are ≤ 1 KiB)."""

    prefix: str = ""
    after: str = ""  # the last key of the previous slice; "" = a new pass starts
    passes: int = 0  # complete listing passes so far
    listed: int = 0  # objects listed in the pass under way

    @classmethod
    def parse(cls, raw: str | None, prefix: str) -> Cursor:
        """The saved cursor, or a fresh one (first tick, v1's cursor, or another prefix)."""
        try:
            fields = json.loads(raw or "")
            cursor = cls(**fields) if isinstance(fields, dict) else cls(prefix)
        except (ValueError, TypeError):
            cursor = cls(prefix)
        return cursor if cursor.prefix == prefix else cls(prefix)

    def advance(self, listing_last: str | None, listed: int) -> Cursor:
        if listing_last is None:
            return Cursor(self.prefix, "", self.passes + 1, 0)
        return Cursor(self.prefix, listing_last, self.passes, self.listed + listed)

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, separators=(",", ":"))


def launched(instance: dg.DagsterInstance, batches: Collection[str]) -> set[str]:
    """The batches among ``batches`` that have a run (queued, running or finished)."""
    found: set[str] = set()
    ids = sorted(batches)
    for i in range(0, len(ids), _RUN_LOOKUP_CHUNK):
        runs = instance.get_runs(dg.RunsFilter(tags={BATCH_TAG: ids[i : i + _RUN_LOOKUP_CHUNK]}))
        found.update(run.tags[BATCH_TAG] for run in runs)
    return found


def run_request(batch: str, day: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=batch, partition_key=day, tags={BATCH_TAG: batch})


def day_events(
    days: dict[str, inventory.DayCounts], bucket: ImageBucket
) -> Iterable[dg.AssetMaterialization]:
    """One s3_images materialization per day the tick found changes in, never one per object."""
    for day in sorted(days):
        counts = days[day]
        yield dg.AssetMaterialization(
            asset_key=s3_images.key,
            partition=day,
            metadata={
                "new": dg.MetadataValue.int(counts.new),
                "changed": dg.MetadataValue.int(counts.changed),
                "deleted": dg.MetadataValue.int(counts.deleted),
                "bytes": dg.MetadataValue.int(counts.bytes),
                "prefix": dg.MetadataValue.path(bucket.s3_uri(bucket.prefix)),
            },
        )


@dg.sensor(
    job=classify_images_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Lists the S3 prefix in bounded slices, keeps the image_objects inventory current and "
        "requests one classification run per batch of new, changed or deleted images."
    ),
)
def s3_image_sensor(
    context: dg.SensorEvaluationContext, s3: ImageBucket, results_db: ResultsDatabase
) -> dg.SensorResult:
    cursor = Cursor.parse(context.cursor, s3.prefix)
    engine = results_db.get_engine()
    listing = s3.list_slice(
        cursor.after,
        max_objects=MAX_OBJECTS_PER_TICK,
        seconds=list_seconds_per_tick(),
        page_size=PAGE_SIZE,
    )
    known = inventory.read_known(engine, listing, s3.prefix)
    plan = inventory.plan_slice(
        listing,
        known,
        start=start_date(),
        now=dt.datetime.now(dt.UTC),
        max_per_batch=max_objects_per_run(),
    )
    inventory.write_rows(engine, plan.rows)  # committed before any run is requested
    have_runs = launched(context.instance, plan.pending) if plan.pending else set()
    lost = {batch: day for batch, day in plan.pending.items() if batch not in have_runs}
    requests = [run_request(b.batch_id, b.day) for b in plan.batches]
    requests += [run_request(batch, day) for batch, day in sorted(lost.items())]

    if skipped := not_yet_reported(plan.skipped):
        context.log.info(f"ignoring {len(skipped)} non-image keys, e.g. {skipped[:3]!r}")
    if lost:
        context.log.warning(f"re-requesting {len(lost)} batches whose runs never started")
    counts = plan.days.values()
    context.log.info(
        f"listed {plan.listed:,} objects after {cursor.after!r} in {listing.pages} pages"
        f"{' (end of pass)' if listing.complete else ''}: "
        f"{sum(c.new for c in counts):,} new, {sum(c.changed for c in counts):,} changed, "
        f"{sum(c.deleted for c in counts):,} deleted; {len(plan.batches)} new batches"
    )
    return dg.SensorResult(
        run_requests=requests,
        asset_events=list(day_events(plan.days, s3)),
        cursor=cursor.advance(listing.last, plan.listed).dumps(),
    )
