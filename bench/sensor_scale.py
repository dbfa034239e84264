"""s3_image_sensor on a large bucket: the first listing pass, an idle pass, and late arrivals.

Fills a local SeaweedFS bucket with N tiny objects (default 100,000; ``--full`` 1,000,000),
uploaded by several processes at once, then drives the real sensor tick after tick the way the
daemon does: evaluate, report its asset events, create its runs (queued, not executed), save the
cursor. Dagster's storage and the project's database are both on PostgreSQL. Measured:

* first pass: objects recorded per second, tick + bookkeeping (the sensor's own time plus the
  daemon's event and run writes), seconds per tick, ticks for the pass, runs requested;
* idle pass: a full reconciliation with nothing new (objects listed and diffed per second);
* late arrivals: 1,000 objects spread over the key space, found by the next pass;
* asset events per tick (= days touched), cursor bytes, peak RSS of this (the sensor's) process,
  and the inventory's size in PostgreSQL per object (table, indexes and TOAST);
* the longest tick against the tick budget (AI_ASSETS_LIST_SECONDS_PER_TICK). With
  ``--db-latency-ms N`` both databases sit behind a proxy that adds N ms per round trip, as a
  remote PostgreSQL would.

Ends with one line: RESULT objects=… objects_per_s=… max_tick_s=… ticks_per_pass=… …
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_s3 import ACCESS, SECRET, local_s3
from report import print_figures

from ai_assets_dev.localdev import dagster_storage

BUCKET = "scale"


def put_many(endpoint: str, keys: list[str]) -> int:
    """Upload tiny objects from one process with 32 threads (SeaweedFS takes ~430/s so)."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b"x"), keys))
    return len(keys)


def upload(endpoint: str, keys: list[str], processes: int) -> float:
    started = time.perf_counter()
    chunks = [keys[i : i + 5_000] for i in range(0, len(keys), 5_000)]
    with ProcessPoolExecutor(processes) as pool:
        done = 0
        for n in pool.map(put_many, [endpoint] * len(chunks), chunks):
            done += n
            if done % 100_000 < 5_000:
                print(f"  uploaded {done:,} / {len(keys):,}", flush=True)
    rate = len(keys) / (time.perf_counter() - started)
    print(f"uploaded {len(keys):,} objects at {rate:,.0f}/s with {processes} processes")
    return rate


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Driver:
    """The daemon's side of a tick: evaluate, report events, create the runs, keep the cursor."""

    def __init__(self, instance) -> None:
        from ai_assets_dev.inprocess import InProcessDaemon

        self.daemon = InProcessDaemon(instance, log_level="WARNING")
        self.job = self.daemon.defs.resolve_job_def("classify_images_job")
        self.ticks: list[dict] = []

    def tick(self) -> dict:
        started = time.perf_counter()
        result = self.daemon.evaluate()
        evaluated = time.perf_counter()
        self.daemon.report_events(result)
        for request in result.run_requests or []:
            if not self.daemon.has_run(request.run_key or ""):
                self.daemon.instance.create_run_for_job(
                    self.job,
                    tags={**request.tags, "dagster/run_key": request.run_key or "",
                          "dagster/partition": request.partition_key or ""},
                )  # fmt: skip
        self.daemon.cursor = result.cursor
        cursor = json.loads(result.cursor or "{}")
        tick = {
            "tick_s": evaluated - started,
            "total_s": time.perf_counter() - started,
            "events": len(result.asset_events or []),
            "runs": len(result.run_requests or []),
            "new": sum(  # s3_images' counts; image_classifications' empty days have none
                e.metadata["new"].value  # type: ignore[misc]
                for e in result.asset_events or []
                if "new" in e.metadata
            ),
            "cursor_bytes": len((result.cursor or "").encode()),
            "pass_done": cursor.get("after") == "",
        }
        self.ticks.append(tick)
        print(
            f"  tick {len(self.ticks):>3}: {tick['tick_s']:6.2f} s sensor + "
            f"{tick['total_s'] - tick['tick_s']:5.2f} s daemon; {tick['new']:>7,} new, "
            f"{tick['runs']:>4} runs, {tick['events']} events",
            flush=True,
        )
        return tick

    def one_pass(self) -> list[dict]:
        ticks = []
        while True:
            ticks.append(self.tick())
            if ticks[-1]["pass_done"]:
                return ticks


def table_bytes(url: str, name: str) -> int:
    """PostgreSQL's size of a table with its indexes and TOAST."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        size = connection.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": name})
        value = int(size.scalar_one())
    engine.dispose()
    return value


def summary(name: str, ticks: list[dict], objects: int) -> dict[str, float]:
    total = sum(t["total_s"] for t in ticks)
    return {
        f"{name}_objects_per_s": objects / total,
        f"{name}_ticks": len(ticks),
        f"{name}_max_tick_s": max(t["tick_s"] for t in ticks),
        f"{name}_mean_tick_s": statistics.mean(t["tick_s"] for t in ticks),
        f"{name}_s": total,
    }


@contextlib.contextmanager
def listing_budget_only() -> Iterator[None]:
    """The sensor as it was: the budget stops the listing; the diff and upsert come on top."""
    from ai_assets.defs.images import sensor

    saved = sensor.Cursor.reserve, sensor.Cursor.learn
    sensor.Cursor.reserve = property(lambda self: 0.0)  # type: ignore[method-assign]
    sensor.Cursor.learn = lambda self, seconds, objects: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        sensor.Cursor.reserve, sensor.Cursor.learn = saved  # type: ignore[method-assign]


def compare(pg, latency_ms: float, whole_tick: bool, total: int) -> dict[str, float]:
    """A first and an idle pass on fresh databases behind ``latency_ms``: the longest tick."""
    import dagster as dg

    from ai_assets_dev.latency import latency_proxy

    name = f"{'tick' if whole_tick else 'listing'}_{latency_ms:g}ms".replace(".", "_")
    with (
        latency_proxy(pg.port, latency_ms / 1000) as proxied,
        contextlib.nullcontext() if whole_tick else listing_budget_only(),
    ):
        results = pg.create_database(f"results_{name}").replace(f":{pg.port}/", f":{proxied}/")
        os.environ["AI_ASSETS_DATABASE_URL"] = results
        dagster_url = pg.create_database(f"dagster_{name}").replace(f":{pg.port}/", f":{proxied}/")
        with dg.instance_for_test(overrides={"storage": dagster_storage(dagster_url)}) as instance:
            driver = Driver(instance)
            print(f"{name}: first pass, then an idle pass")
            ticks = driver.one_pass() + driver.one_pass()
    assert sum(t["new"] for t in ticks) == total, "the comparison's first pass missed objects"
    return {f"{name}_max_tick_s": max(t["tick_s"] for t in ticks)}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 objects")
    parser.add_argument("--full", action="store_true", help="1,000,000 objects")
    parser.add_argument("--objects", type=int, help="bucket size (default 100,000)")
    parser.add_argument("--late", type=int, default=1000, help="objects added after a pass")
    parser.add_argument("--upload-processes", type=int, default=4)
    parser.add_argument("--db-latency-ms", type=float, default=0.0, help="per round trip")
    parser.add_argument(
        "--compare-latencies",
        default="",
        help="e.g. 1,5: before the main passes, the longest tick at each added latency with the "
        "budget bounding the whole tick and, side by side, only the listing (as before)",
    )
    return parser.parse_args()


def three_passes(
    endpoint: str, dagster_url: str, total: int, late: int
) -> tuple[list[dict], list[dict], list[dict], int]:
    """The sensor's first pass over ``total`` objects, an idle pass, and a pass after ``late``
    more objects; with the runs they requested."""
    import dagster as dg

    with dg.instance_for_test(overrides={"storage": dagster_storage(dagster_url)}) as instance:
        driver = Driver(instance)
        print(f"first pass over {total:,} objects:")
        first = driver.one_pass()
        print("idle pass (nothing new):")
        idle = driver.one_pass()
        put_many(endpoint, [f"photos/{i % 997:03}/{i:08}.jpg" for i in range(total, total + late)])
        print(f"pass after {late:,} late objects:")
        found = driver.one_pass()
        runs = len(instance.get_run_ids(dg.RunsFilter(job_name="classify_images_job")))
    assert sum(t["new"] for t in first) == total, "the first pass missed objects"
    assert sum(t["new"] for t in idle) == 0, "the idle pass found changes"
    assert sum(t["new"] for t in found) == late, "the late objects were not all found"
    return first, idle, found, runs


def main() -> None:
    args = arguments()
    total = args.objects or (10_000 if args.quick else 1_000_000 if args.full else 100_000)

    from ai_assets.settings import list_seconds_per_tick, max_objects_per_run
    from ai_assets_dev.latency import latency_proxy
    from ai_assets_dev.localdev import postgres

    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-sensor-bench-") as tmp,
        local_s3(Path(tmp) / "s3", BUCKET) as endpoint,
        postgres() as pg,
        latency_proxy(pg.port, args.db_latency_ms / 1000) as proxied,
    ):

        def remote(url: str) -> str:  # the same database, through the latency proxy
            return url.replace(f":{pg.port}/", f":{proxied}/")

        os.environ["AI_ASSETS_DATABASE_URL"] = remote(pg.create_database("results"))
        # the objects' day, as uploaded now: a fresh deployment also records the days before it
        # that hold no object once (up to 200 a tick), which is not the listing measured here
        os.environ["AI_ASSETS_START_DATE"] = dt.datetime.now(dt.UTC).date().isoformat()
        keys = [f"photos/{i % 997:03}/{i:08}.jpg" for i in range(total)]
        upload_rate = upload(endpoint, keys, args.upload_processes)
        compared: dict[str, float] = {}
        main_database = os.environ["AI_ASSETS_DATABASE_URL"]
        for latency in [float(v) for v in args.compare_latencies.split(",") if v]:
            for whole_tick in (False, True):
                compared |= compare(pg, latency, whole_tick, total)
        os.environ["AI_ASSETS_DATABASE_URL"] = main_database
        dagster_url = remote(pg.create_database("dagster"))
        first, idle, found, runs = three_passes(endpoint, dagster_url, total, args.late)
        inventory_bytes = table_bytes(os.environ["AI_ASSETS_DATABASE_URL"], "image_objects")

    ticks = first + idle + found
    budget = list_seconds_per_tick()
    figures = {
        "objects": total,
        **summary("first_pass", first, total),
        **summary("idle_pass", idle, total),
        **summary("late_pass", found, total + args.late),
        "late_found": sum(t["new"] for t in found),
        "runs": runs,
        "max_events_per_tick": max(t["events"] for t in ticks),
        "max_cursor_bytes": max(t["cursor_bytes"] for t in ticks),
        "peak_rss_mb": peak_rss_mb(),
        "inventory_bytes_per_object": inventory_bytes / (total + args.late),
        "upload_per_s": upload_rate,
        "max_objects_per_run": max_objects_per_run(),
        "tick_budget_s": budget,
        "db_latency_ms": args.db_latency_ms,
        "max_tick_s": max(t["tick_s"] for t in ticks),
        "max_tick_over_budget": max(t["tick_s"] for t in ticks) / budget,
        **compared,
    }
    print_figures(figures, SUMMARY)


#: The figures the summary table shows first; RESULT has every figure.
SUMMARY = [
    "objects", "db_latency_ms", "first_pass_objects_per_s", "first_pass_max_tick_s",
    "first_pass_ticks", "idle_pass_objects_per_s", "tick_budget_s", "max_tick_s",
    "max_tick_over_budget", "runs", "max_events_per_tick", "max_cursor_bytes", "peak_rss_mb",
]  # fmt: skip


if __name__ == "__main__":
    main()
