"""S3 event notifications: the sensor's drain rate, and discovery delay with a queue vs listing.

Everything runs through the real sensor ticks (evaluate, report events, create runs, keep the
cursor), with the project's database and Dagster's storage on PostgreSQL. Measured in one run:

* drain: N S3 events, one per message as S3 sends them (10 % delivered twice), against an
  inventory already holding --inventory rows (1,000,000 by default; 10 % of the events
  overwrite those keys). Events recorded per second = distinct events / seconds of the ticks
  that received, decoded, diffed, committed and deleted them. The SQS server (the project's
  test server, in its own process) adds 0 ms and then --latency-ms per call, a round trip to
  SQS; each is measured with 1 receiver and with the sensor's SQS_RECEIVERS.
* queue delay: an upload is recorded by the first tick after its event: worst = the sensor's
  15 s interval + one tick that drains a few events (measured against the same inventory).
* listing delay, SIMULATED from the listing rate measured here on a real SeaweedFS bucket of
  --list-objects objects: without a queue a new key is found when the listing next passes it,
  so the worst case is one whole pass over the bucket, ticks of at most
  AI_ASSETS_LIST_SECONDS_PER_TICK starting at least 15 s apart (1M and 10M objects).

Ends with one line: RESULT drain_events_per_s=… queue_worst_s=… listing_worst_s_1m=… …
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_s3 import local_s3
from report import print_figures
from sensor_scale import Driver, upload

from ai_assets_dev.localdev import dagster_storage

ROOT = Path(__file__).resolve().parents[1]

SENSOR_INTERVAL_S = 15  # s3_image_sensor's minimum_interval_seconds


def sqs_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "ai_assets_tests.fakes.sqs_server", "--latency-ms", str(latency_ms)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def event_body(key: str, etag: str, sequencer: str, bucket: str) -> str:
    import json
    import urllib.parse

    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {
                            "key": urllib.parse.quote_plus(key),
                            "size": 1024,
                            "eTag": etag,
                            "sequencer": sequencer,
                        },
                    },
                }
            ]
        }
    )


def send_all(sqs, queue_url: str, bodies: list[str]) -> None:
    batches = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]

    def send(batch: list[str]) -> None:
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(batch)]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(send, batches))


def seed_inventory(url: str, rows: int) -> None:
    """``rows`` inventory rows written by SQL, as a long-running deployment would have them."""
    import sqlalchemy as sa

    from ai_assets.db import migrations

    engine = sa.create_engine(url)
    migrations.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO image_objects (s3_key, partition_key, etag, size_bytes, "
                "last_modified, first_seen) SELECT 'photos/' || lpad(i::text, 8, '0') || '.jpg', "
                "'2026-01-01', 'seed', 1024, now() - interval '1 day', now() "
                "FROM generate_series(1, :n) AS i"
            ),
            {"n": rows},
        )
    engine.dispose()


def fresh_cursor(prefix: str) -> str:
    """A cursor whose listing pass has just ended: the next one is a reconcile interval away."""
    from ai_assets.defs.images.sensor import Cursor

    return Cursor(prefix, "", passes=1, started=int(time.time())).dumps()


def drain_rate(
    pg, sqs_url: str, label: str, events: int, inventory: int, receivers: int
) -> dict[str, float]:
    import boto3
    import dagster as dg

    from ai_assets.defs.images import sensor as sensor_module

    sqs = boto3.client("sqs", endpoint_url=sqs_url, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"events-{label}")["QueueUrl"]
    db = pg.create_database(f"drain_{label}")
    seed_inventory(db, inventory)
    os.environ.update({"AI_ASSETS_DATABASE_URL": db, "AI_ASSETS_SQS_QUEUE_URL": queue_url})
    new = [f"photos/new/{label}/{i:08d} é+.jpg" for i in range(events - events // 10)]
    overwritten = [f"photos/{i:08d}.jpg" for i in range(1, events // 10 + 1)]
    bodies = [
        event_body(key, f"v{i}", f"{i:016X}", os.environ["AI_ASSETS_S3_BUCKET"])
        for i, key in enumerate(new + overwritten)
    ]
    bodies += bodies[: len(bodies) // 10]  # at-least-once: some delivered twice
    sent = time.perf_counter()
    send_all(sqs, queue_url, bodies)
    print(f"  sent {len(bodies):,} messages in {time.perf_counter() - sent:.1f} s", flush=True)
    sensor_module.SQS_RECEIVERS = receivers
    storage = dagster_storage(pg.create_database(f"dagster_{label}"))
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        driver = Driver(instance)
        driver.daemon.cursor = fresh_cursor("")
        ticks = []
        while True:
            tick = driver.tick()
            if not tick["new"] and not tick["runs"] and ticks:
                break  # only the final empty long poll
            ticks.append(tick)
        recorded = sum(t["new"] for t in ticks)
        quiet = [driver.tick()["tick_s"]]
        send_all(
            sqs,
            queue_url,
            [
                event_body(
                    f"photos/late/{label}/{i}.jpg", "x", "01", os.environ["AI_ASSETS_S3_BUCKET"]
                )
                for i in range(10)
            ],
        )
        few = driver.tick()
    assert recorded == len(new), f"recorded {recorded:,} new objects of {len(new):,}"
    seconds = sum(t["total_s"] for t in ticks)
    return {
        "events_per_s": events / seconds,
        "ticks": len(ticks),
        "max_tick_s": max(t["tick_s"] for t in ticks),
        "few_events_tick_s": few["total_s"],
        "empty_tick_s": quiet[0],
    }


def listing_rate(pg, endpoint: str, objects: int, processes: int) -> dict[str, float]:
    import boto3
    import dagster as dg

    os.environ.pop("AI_ASSETS_SQS_QUEUE_URL", None)
    os.environ.update(
        {"AI_ASSETS_S3_BUCKET": "listing", "AI_ASSETS_DATABASE_URL": pg.create_database("listing")}
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="listing"
    )
    import sensor_scale

    sensor_scale.BUCKET = "listing"
    upload(endpoint, [f"photos/{i % 997:03}/{i:08}.jpg" for i in range(objects)], processes)
    storage = dagster_storage(pg.create_database("dagster_listing"))
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        driver = Driver(instance)
        driver.one_pass()
        idle = driver.one_pass()
    seconds = sum(t["total_s"] for t in idle)
    return {"idle_objects_per_s": objects / seconds}


def listing_worst_s(objects: int, rate: float) -> float:
    """One whole pass: ticks of ≤ 100,000 objects or the listing budget, ≥ 15 s apart."""
    from ai_assets.defs.images.sensor import MAX_OBJECTS_PER_TICK
    from ai_assets.settings import list_seconds_per_tick

    per_tick = min(MAX_OBJECTS_PER_TICK, rate * list_seconds_per_tick())
    ticks = math.ceil(objects / per_tick)
    return ticks * max(SENSOR_INTERVAL_S, per_tick / rate)


def drain_rates(pg: Any, args: argparse.Namespace, receivers_max: int) -> dict[str, float]:
    """The sensor's drain rate without and with ``--latency-ms`` per SQS call, with one
    receiver and with the sensor's own count."""
    figures: dict[str, float] = {}
    for latency in (0.0, args.latency_ms):
        server, url = sqs_server(latency)
        os.environ["AWS_ENDPOINT_URL_SQS"] = url
        try:
            for receivers in sorted({1, receivers_max}):
                label = f"{int(latency)}ms_{receivers}r"
                print(f"drain: {args.events:,} events, {latency:g} ms/call, {receivers} receivers")
                rates = drain_rate(pg, url, label, args.events, args.inventory, receivers)
                figures |= {f"{name}_{label}": value for name, value in rates.items()}
        finally:
            server.communicate(input="", timeout=10)
    del os.environ["AWS_ENDPOINT_URL_SQS"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--inventory", type=int, default=1_000_000)
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--list-objects", type=int, default=20_000)
    parser.add_argument("--upload-processes", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="10,000 events, 100,000 rows")
    args = parser.parse_args()
    if args.quick:
        args.events, args.inventory, args.list_objects = 10_000, 100_000, 5_000

    from ai_assets.defs.images.sensor import SQS_RECEIVERS
    from ai_assets_dev.localdev import postgres

    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-sqs-bench-") as tmp,
        local_s3(Path(tmp) / "s3", "events") as endpoint,
        postgres() as pg,
    ):
        figures = drain_rates(pg, args, SQS_RECEIVERS)
        print(f"listing rate on {args.list_objects:,} real objects:")
        listing = listing_rate(pg, endpoint, args.list_objects, args.upload_processes)
        rate = listing["idle_objects_per_s"]

    best = f"{int(args.latency_ms)}ms_{SQS_RECEIVERS}r"
    few_tick = statistics.median(
        value for name, value in figures.items() if name.startswith("few_events_tick_s")
    )
    queue_worst = SENSOR_INTERVAL_S + few_tick
    figures |= {
        "drain_events_per_s": figures[f"events_per_s_{best}"],
        "queue_worst_s": queue_worst,
        "listing_objects_per_s": rate,
        "listing_worst_s_1m": listing_worst_s(1_000_000, rate),
        "listing_worst_s_10m": listing_worst_s(10_000_000, rate),
        "events": args.events,
        "inventory_rows": args.inventory,
        "latency_ms": args.latency_ms,
        "receivers": SQS_RECEIVERS,
    }
    figures["speedup_1m"] = figures["listing_worst_s_1m"] / queue_worst
    figures["speedup_10m"] = figures["listing_worst_s_10m"] / queue_worst
    print_figures(
        figures,
        ["drain_events_per_s", "queue_worst_s", "listing_worst_s_1m", "listing_worst_s_10m",
         "speedup_1m", "speedup_10m", "listing_objects_per_s", "events", "inventory_rows",
         "latency_ms", "receivers"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
