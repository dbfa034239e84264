"""What finding stranded batches adds to every sensor tick, at 1,000,000 inventory rows; and
what a run's day totals cost when one day holds them all.

Each tick reads ``image_batches`` (batches committed but not yet seen as runs, oldest first,
each with an indexed EXISTS on the inventory), asks Dagster which of them have runs and forgets
those. This fills PostgreSQL with N inventory rows (default 1,000,000, spread over batches of
2,000) and times that step, as the sensor runs it, with the table holding one tick's new
batches (the usual case) and with it full (1,000 batches, the bound), Dagster's storage on the
same server. Then, with a results row for every object (every tenth an error), the query each
run makes for its day's totals (status.day_totals) over that one day of N objects.
Ends with: RESULT inventory_rows=… usual_ms=… full_ms=… day_totals_ms=…
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures

BATCH = 2_000
#: The most batches a tick reads (inventory.MAX_UNCONFIRMED).
FULL = 1_000
#: One tick's new batches in the usual case: a tick of 50,000 new objects.
USUAL = 25


def fill(engine, rows: int) -> None:
    """``rows`` inventory rows in FULL batches, written by PostgreSQL itself."""
    import sqlalchemy as sa

    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO image_objects (s3_key, partition_key, etag, size_bytes, "
                "last_modified, first_seen, batch_id) SELECT 'photos/' || lpad(i::text, 8, '0') "
                "|| '.jpg', '2026-12-01', md5(i::text), 1000, now(), now(), "
                "'batch-' || (i % :batches) FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows, "batches": FULL},
        )
        connection.execute(sa.text("ANALYZE image_objects"))


def fill_results(engine) -> None:
    """A results row for every inventory row, current, every tenth an error."""
    import sqlalchemy as sa

    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO image_classifications (s3_key, partition_key, etag, status, label, "
                "score, classified_at) SELECT s3_key, partition_key, etag, CASE WHEN "
                "right(s3_key, 5) LIKE '0.jpg' THEN 'error' ELSE 'ok' END, 'tabby', 0.5, now() "
                "FROM image_objects"
            )
        )
        connection.execute(sa.text("ANALYZE"))


def day_totals_ms(engine, repeats: int) -> tuple[float, object]:
    from ai_assets.db import status

    times, totals = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        totals = status.day_totals(engine, "2026-12-01", timeout_ms=600_000)  # its full cost
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), totals


def waiting(engine, count: int) -> None:
    """``count`` batches in image_batches, as ticks that committed them left them."""
    import datetime as dt

    import sqlalchemy as sa

    from ai_assets.db.results import image_batches

    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        connection.execute(image_batches.delete())
        connection.execute(
            image_batches.insert(),
            [
                {"batch_id": f"batch-{i}", "partition_key": "2026-12-01", "objects": BATCH,
                 "requested_at": now + dt.timedelta(microseconds=i)}
                for i in range(count)
            ],
        )  # fmt: skip
        connection.execute(sa.text("ANALYZE image_batches"))


def tick_cost_ms(instance, engine, count: int, repeats: int) -> float:
    """Median ms of the sensor's stranded-batch step with ``count`` batches waiting."""
    from ai_assets.db import inventory
    from ai_assets.defs.images.sensor import lost_batches

    empty = inventory.SlicePlan(rows=[], batches=[], pending={}, days={}, skipped=[], listed=0)
    times = []
    for _ in range(repeats):
        waiting(engine, count)
        started = time.perf_counter()
        lost = lost_batches(instance, engine, empty)
        times.append((time.perf_counter() - started) * 1000)
        assert len(lost) == count, "every waiting batch has rows and no run: all are lost"
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import dagster as dg
    import sqlalchemy as sa

    from ai_assets.db import migrations
    from ai_assets_dev.localdev import dagster_storage, postgres

    with postgres() as pg:
        engine = sa.create_engine(pg.create_database("results"))
        migrations.upgrade(engine)
        started = time.perf_counter()
        fill(engine, args.rows)
        print(f"filled {args.rows:,} inventory rows in {time.perf_counter() - started:.1f} s")
        storage = dagster_storage(pg.create_database("dagster"))
        with dg.instance_for_test(overrides={"storage": storage}) as instance:
            usual = tick_cost_ms(instance, engine, USUAL, args.repeats)
            full = tick_cost_ms(instance, engine, FULL, args.repeats)
        fill_results(engine)
        day_ms, totals = day_totals_ms(engine, 5)
        print(f"day totals over {args.rows:,} objects of one day: {totals}")
        engine.dispose()
    print_figures(
        {"inventory_rows": args.rows, "usual_batches": USUAL,
         "usual_ms": usual, "full_batches": FULL, "full_ms": full, "day_totals_ms": day_ms},
        ["inventory_rows", "usual_ms", "full_ms", "day_totals_ms"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
