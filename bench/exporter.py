"""What ai-assets-exporter costs the databases it reads, at 1,000,000 inventory rows.

Fills PostgreSQL with N objects (default 1,000,000) over D days (default 365) as the sensor and
runs leave them: a results row for every object but 1 % (waiting), 1 % of them errors.
Then times, side by side on the same server:
- one statement that counts the whole bucket (status.totals with no day): what a naive
  exporter would run on every scrape;
- the exporter's first pass (every day counted once, BucketStatus's first refresh);
- a steady refresh after one sensor tick and one run (2,000 new objects today, a batch of
  2,000 classified): the changed days recounted, the results counted, no stale day due;
- the same refresh with a 1 s budget of stale-day recounting spent;
- the Dagster reads (sensor state and ticks, run counts) with R runs in Dagster's storage on
  the same server.
Ends with: RESULT objects=… naive_ms=… first_pass_ms=… steady_ms=… budgeted_ms=… dagster_ms=…
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures

TICK = 2_000


def fill(engine, objects: int, days: int, today: dt.date) -> None:
    """``objects`` inventory rows spread over the ``days`` before today, and their results."""
    import sqlalchemy as sa

    first = today - dt.timedelta(days=days - 1)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO image_objects (s3_key, partition_key, etag, size_bytes, last_modified,"
                " first_seen, batch_id, updated_at) SELECT 'photos/' || lpad(i::text, 9, '0') || "
                "'.jpg', to_char(:first + (i % :days), 'YYYY-MM-DD'), md5(i::text), 50000, "
                ":first + (i % :days), :first + (i % :days), 'batch-' || (i / 2000), "
                ":first + (i % :days) FROM generate_series(1, :objects) AS i"
            ),
            {"objects": objects, "days": days, "first": first},
        )
        connection.execute(
            sa.text(
                "INSERT INTO image_classifications (s3_key, partition_key, etag, status, label, "
                "score, error, classified_at) SELECT s3_key, partition_key, etag, CASE WHEN "
                "right(s3_key, 6) LIKE '%5.jpg' AND right(s3_key, 6) LIKE '%0_.jpg' THEN "
                "'error' ELSE 'ok' END, 'tabby', 0.5, NULL, last_modified FROM image_objects "
                "WHERE right(s3_key, 6) NOT LIKE '%00.jpg'"
            )
        )
        connection.execute(sa.text("ANALYZE"))


def tick_and_run(engine, today: dt.date, round_: int) -> None:
    """What one sensor tick and one run write: TICK new objects today, a batch classified."""
    from ai_assets.db import inventory, results

    now = dt.datetime.now(dt.UTC)
    day = today.isoformat()
    rows = [
        {"s3_key": f"new/{round_:03}/{i:06}.jpg", "partition_key": day, "etag": f"e{i}",
         "size_bytes": 50_000, "last_modified": now, "first_seen": now, "deleted_at": None,
         "batch_id": f"tick-{round_}"}
        for i in range(TICK)
    ]  # fmt: skip
    inventory.write_rows(engine, rows)
    results.upsert_rows(
        engine,
        [
            results.ClassificationRow(row["s3_key"], day, "ok", etag=row["etag"], score=0.5)
            for row in rows
        ],
    )


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import dagster as dg
    import sqlalchemy as sa

    from ai_assets.db import migrations, status
    from ai_assets.ops.exporter import read_dagster
    from ai_assets_dev.localdev import dagster_storage, postgres

    today = dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=args.days - 1)
    with postgres() as pg:
        engine = sa.create_engine(pg.create_database("results"))
        migrations.upgrade(engine)
        filled = timed(lambda: fill(engine, args.objects, args.days, today))
        print(f"filled {args.objects:,} objects over {args.days} days in {filled / 1000:.1f} s")
        naive = statistics.median(timed(lambda: status.totals(engine)) for _ in range(args.repeats))
        tracker = status.BucketStatus(engine, start, budget_s=0.0, lag=dt.timedelta(seconds=5))
        first_pass = timed(lambda: tracker.refresh(dt.datetime.now(dt.UTC)))
        totals = tracker.totals()
        print(f"first pass: {totals}")
        assert totals == status.totals(engine), "the per-day sum is the whole-bucket count"
        steady, budgeted = [], []
        for round_ in range(args.repeats):
            tick_and_run(engine, today, round_)
            steady.append(timed(lambda: tracker.refresh(dt.datetime.now(dt.UTC))))
        tracker.budget_s, tracker.cycle = 1.0, dt.timedelta(0)  # every day due: the budget bounds
        for _ in range(args.repeats):
            budgeted.append(timed(lambda: tracker.refresh(dt.datetime.now(dt.UTC))))
        storage = dagster_storage(pg.create_database("dagster"))
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            for i in range(args.runs):
                final = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)[i % 50 == 0]
                instance.add_run(dg.DagsterRun(job_name="classify_images_job", status=final))
            now = dt.datetime.now(dt.UTC)
            dagster = statistics.median(
                timed(lambda: read_dagster(instance, now)) for _ in range(args.repeats)
            )
        engine.dispose()
    print_figures(
        {"objects": args.objects, "days": args.days, "naive_ms": naive,
         "first_pass_ms": first_pass, "steady_ms": statistics.median(steady),
         "budgeted_ms": statistics.median(budgeted), "dagster_runs": args.runs,
         "dagster_ms": dagster},
        ["objects", "naive_ms", "first_pass_ms", "steady_ms", "budgeted_ms", "dagster_ms"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
