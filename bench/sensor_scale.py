"""s3_image_sensor on a large bucket: tick time with nothing new, and with 1,000 new objects.

Fills a local SeaweedFS bucket with N objects (default 100,000), records all but the newest
1,000 as known (the state after earlier ticks), then times two evaluations of the real sensor:
one where nothing changed and one where 1,000 objects are new. Ends with one line:
RESULT objects=… idle_tick_s=… busy_tick_s=… runs=… cursor_bytes=… new=… record_events_s=…
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACCESS, SECRET = "bench", "bench-secret"


def record_in_batches(instance, events, size: int = 1000) -> None:
    """Seed the event log fast: what instance.report_runless_asset_event stores, in batches.

    Bench set-up only (Dagster internals): one event at a time takes minutes for 100k objects.
    """
    from dagster._core.events import (
        DagsterEvent,
        DagsterEventBatchMetadata,
        DagsterEventType,
        StepMaterializationData,
        generate_event_batch_id,
    )
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    for start in range(0, len(events), size):
        chunk, batch_id = events[start : start + size], generate_event_batch_id()
        for i, event in enumerate(chunk):
            instance.report_dagster_event(
                DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                    event_specific_data=StepMaterializationData(event),
                    job_name=RUNLESS_JOB_NAME,
                ),
                run_id=RUNLESS_RUN_ID,
                batch_metadata=DagsterEventBatchMetadata(batch_id, i == len(chunk) - 1),
            )


def main() -> None:
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")  # lets record_in_batches batch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 objects")
    parser.add_argument("--objects", type=int, help="bucket size (default 100,000)")
    parser.add_argument("--new", type=int, default=1000, help="new objects in the busy tick")
    args = parser.parse_args()
    total = args.objects or (10_000 if args.quick else 100_000)

    import boto3
    import dagster as dg

    from ai_assets.inprocess import InProcessDaemon
    from ai_assets.localdev import postgres, seaweedfs
    from ai_assets.sensors import s3
    from ai_assets.store import batch_key, plan_changes

    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-sensor-bench-") as tmp,
        seaweedfs(Path(tmp) / "s3", ACCESS, SECRET) as endpoint,
        postgres() as pg,
    ):
        os.environ.update(
            {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS,
             "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
             "AI_ASSETS_S3_BUCKET": "scale", "AI_ASSETS_S3_PREFIX": ""}
        )  # fmt: skip
        client = boto3.client("s3")
        client.create_bucket(Bucket="scale")
        keys = [f"photos/{i // 1000:03}/{i:07}.jpg" for i in range(total)]
        known, new = keys[: total - args.new], keys[total - args.new :]

        def upload(batch: list[str]) -> None:
            started = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda k: client.put_object(Bucket="scale", Key=k, Body=b"x"), batch))
            print(f"uploaded {len(batch):,} objects in {time.perf_counter() - started:.0f} s")

        upload(known)

        # Dagster's own storage on PostgreSQL, as in production (dagster-postgres)
        storage = {"postgres": {"postgres_url": pg.url.replace("+psycopg2", "")}}
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            daemon = InProcessDaemon(instance)
            started = time.perf_counter()
            # the state after earlier ticks: partitions and recorded versions for the known keys
            bucket = daemon.defs.resources["s3"].process_config_and_initialize()  # type: ignore[attr-defined]
            listing = list(bucket.list_objects())  # type: ignore[attr-defined]
            plan = plan_changes(listing, "", {}, [], max_changes=total)
            instance.add_dynamic_partitions("images", plan.partitions_to_add)
            events = [
                s3.materialization(change, batch_key([(change.partition_key, change.etag)]), bucket)
                for change in plan.changes
            ]
            record_in_batches(instance, events)
            print(f"recorded {len(known):,} known objects in {time.perf_counter() - started:.0f} s")
            # the cursor those earlier ticks left: their runs were launched
            latest = instance.fetch_materializations(s3.s3_images.key, limit=1).records[0]
            daemon.cursor = str(latest.storage_id)

            started = time.perf_counter()
            idle = daemon.evaluate()
            idle_s = time.perf_counter() - started
            assert not idle.run_requests, "an idle tick requested runs"

            upload(new)
            started = time.perf_counter()
            busy = daemon.evaluate()
            busy_s = time.perf_counter() - started
            runs = len(busy.run_requests or [])
            cursor_bytes = len((busy.cursor or "").encode())
            # what the daemon does next, in Dagster's code: one event write per new version
            started = time.perf_counter()
            daemon.apply_events_and_partitions(busy)
            apply_s = time.perf_counter() - started

    print(f"bucket: {total:,} objects; new in the busy tick: {args.new:,}")
    print(f"idle tick: {idle_s:.2f} s   busy tick: {busy_s:.2f} s   runs requested: {runs}")
    print(f"cursor: {cursor_bytes} bytes")
    print(f"then Dagster records the {args.new:,} versions and partitions: {apply_s:.2f} s")
    print(
        f"RESULT objects={total} idle_tick_s={idle_s:.2f} busy_tick_s={busy_s:.2f} runs={runs} "
        f"cursor_bytes={cursor_bytes} new={args.new} record_events_s={apply_s:.2f}"
    )


if __name__ == "__main__":
    main()
