"""s3_image_sensor: turn new, changed and deleted S3 objects into partitions and batched runs.

Each tick diffs a full listing against the version recorded for every partition (the
``dagster/data_version`` tag of the latest ``s3_images`` materialization, one indexed query).
The daemon reports a tick's asset events, then adds its partitions, launches its runs and
saves its cursor; a crash in between replays the tick. So every step is replay-safe:

* a recorded version is never diffed again, so it is never requested twice;
* each recorded version carries its batch's run key; a later tick re-requests a batch whose
  events were recorded but whose run never started (the cursor is only the storage id up to
  which that was checked, so it stays a few bytes however large the bucket);
* run keys are deterministic, so the daemon's run-key check drops any duplicate.
"""

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from ai_assets.assets import classify_images_job, s3_images
from ai_assets.partitions import images_partitions
from ai_assets.resources import ImageBucket
from ai_assets.store import Change, Plan, batch_key, contiguous_batches, plan_changes

DATA_VERSION_TAG = "dagster/data_version"  # Dagster indexes this tag per partition
BATCH_TAG = "ai_assets/batch"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
#: Partitions per run: bounds a run's duration and memory.
MAX_BATCH_SIZE = 500
#: Changes recorded per tick: bounds the daemon's work after the tick; the rest waits a tick.
MAX_CHANGES_PER_TICK = 10_000
_RECOVERY_PAGE = 1_000


def known_versions(instance: dg.DagsterInstance) -> dict[str, str]:
    """Partition key → the object version (ETag or ``deleted``) recorded last."""
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        s3_images.key, dg.DagsterEventType.ASSET_MATERIALIZATION, [DATA_VERSION_TAG]
    )
    return {partition: t[DATA_VERSION_TAG] for partition, t in tags.items()}


def run_request(batch: Sequence[str], run_key: str) -> dg.RunRequest:
    """One run for a contiguous batch of partitions (range tags when it has several)."""
    tags = {BATCH_TAG: run_key}
    if len(batch) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=batch[0], tags=tags)
    tags |= {RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1]}
    return dg.RunRequest(run_key=run_key, tags=tags)


def materialization(change: Change, run_key: str, bucket: ImageBucket) -> dg.AssetMaterialization:
    metadata: dict[str, Any] = {
        "s3_uri": dg.MetadataValue.path(bucket.s3_uri(change.object_key)),
        "etag": change.etag,
    }
    if change.size is not None:
        metadata["size"] = dg.MetadataValue.int(change.size)
    if change.last_modified is not None:
        metadata["last_modified"] = dg.MetadataValue.timestamp(change.last_modified)
    return dg.AssetMaterialization(
        asset_key=s3_images.key,
        partition=change.partition_key,
        metadata=metadata,
        tags={DATA_VERSION_TAG: change.etag, BATCH_TAG: run_key},
    )


def unlaunched_batches(
    instance: dg.DagsterInstance, after_storage_id: int
) -> tuple[dict[str, list[str]], int]:
    """Batches recorded after the cursor whose run never started, and the new cursor.

    Reads the s3_images history after the cursor in pages, with one run query per page.
    """
    orphans: dict[str, list[str]] = {}
    cursor, last = None, after_storage_id
    while True:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=s3_images.key, after_storage_id=after_storage_id),
            limit=_RECOVERY_PAGE,
            cursor=cursor,
            ascending=True,
        )
        batches: dict[str, list[str]] = collections.defaultdict(list)
        for record in result.records:
            event = record.asset_materialization
            run_key = (event.tags or {}).get(BATCH_TAG) if event else None
            if event and run_key and event.partition:
                batches[run_key].append(event.partition)
            last = max(last, record.storage_id)
        if batches:
            launched = {
                run.dagster_run.tags.get(BATCH_TAG)
                for run in instance.get_run_records(dg.RunsFilter(tags={BATCH_TAG: list(batches)}))
            }
            for run_key, partitions in batches.items():
                if run_key not in launched:
                    orphans.setdefault(run_key, []).extend(partitions)
        if not result.has_more:
            return orphans, last
        cursor = result.cursor


def evaluate(
    plan: Plan,
    existing_partitions: Sequence[str],
    orphans: Mapping[str, Sequence[str]],
    bucket: ImageBucket,
) -> tuple[list[dg.RunRequest], list[dg.AssetMaterialization]]:
    """Run requests and asset events for a tick's plan, plus recovered batches."""
    order = [*existing_partitions, *plan.partitions_to_add]
    by_partition = {change.partition_key: change for change in plan.changes}
    requests, events = [], []
    for batch in contiguous_batches(order, by_partition, MAX_BATCH_SIZE):
        run_key = batch_key((p, by_partition[p].etag) for p in batch)
        requests.append(run_request(batch, run_key))
        events.extend(materialization(by_partition[p], run_key, bucket) for p in batch)
    position = {partition: i for i, partition in enumerate(order)}
    for run_key, partitions in orphans.items():
        ordered = sorted(set(partitions) & position.keys(), key=position.__getitem__)
        if ordered:
            requests.append(
                run_request(order[position[ordered[0]] : position[ordered[-1]] + 1], run_key)
            )
    return requests, events


@dg.sensor(
    job=classify_images_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Finds new, changed and deleted images under the S3 prefix and classifies them.",
)
def s3_image_sensor(context: dg.SensorEvaluationContext, s3: ImageBucket) -> dg.SensorResult:
    instance = context.instance
    existing = instance.get_dynamic_partitions(images_partitions.name)
    plan = plan_changes(
        s3.list_objects(), s3.prefix, known_versions(instance), existing, MAX_CHANGES_PER_TICK
    )
    orphans, cursor = unlaunched_batches(instance, int(context.cursor or 0))
    requests, events = evaluate(plan, existing, orphans, s3)

    if plan.skipped_keys:
        context.log.info(
            f"ignoring {len(plan.skipped_keys)} non-image keys, e.g. {plan.skipped_keys[:3]!r}"
        )
    if orphans:
        context.log.warning(f"re-requesting {len(orphans)} batches whose runs never started")
    if plan.deferred:
        context.log.info(f"{plan.deferred} more changes left for the next tick")
    if requests:
        context.log.info(
            f"{len(plan.changes)} new/changed/deleted objects, "
            f"{len(plan.partitions_to_add)} new partitions, {len(requests)} runs"
        )
    return dg.SensorResult(
        run_requests=requests,
        asset_events=events,
        dynamic_partitions_requests=(
            [images_partitions.build_add_request(plan.partitions_to_add)]
            if plan.partitions_to_add
            else []
        ),
        cursor=str(cursor),
    )
