"""The inventory: slice planning (pure) and its range queries on PostgreSQL and SQLite."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from ai_assets.db import inventory, results
from ai_assets.db.inventory import Known, day_of, plan_slice
from ai_assets.s3.objects import S3Object, Slice
from ai_assets_tests.support.util import database, inventory_row

START = dt.date(2024, 1, 1)
NOW = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)
MARCH_9 = dt.datetime(2026, 3, 9, 23, 59, tzinfo=dt.UTC)


def obj(key: str, etag: str = "e1", when: dt.datetime = MARCH_9, size: int = 10) -> S3Object:
    return S3Object(key=key, etag=etag, size=size, last_modified=when)


def known(key: str, etag: str = "e1", result: str | None = "e1", **changes) -> Known:
    base = Known(
        s3_key=key,
        inventoried=True,
        partition_key="2026-03-09",
        etag=etag,
        size_bytes=10,
        last_modified=MARCH_9,
        first_seen=MARCH_9,
        result_etag=result,
        result_status="ok" if result else None,
    )
    return dataclasses.replace(base, **changes)


def plan(objects: list[S3Object], rows: list[Known], max_per_batch: int = 100):
    return plan_slice(
        Slice(objects, "", None, 1),
        {k.s3_key: k for k in rows},
        start=START,
        now=NOW,
        max_per_batch=max_per_batch,
    )


@pytest.mark.parametrize(
    ("when", "day"),
    [
        (dt.datetime(2026, 3, 9, 23, 59, tzinfo=dt.UTC), "2026-03-09"),
        (dt.datetime(2026, 3, 10, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2026-03-09"),
        (dt.datetime(1999, 1, 1, tzinfo=dt.UTC), "2024-01-01"),  # before the start: first day
        (dt.datetime(2027, 1, 1, tzinfo=dt.UTC), "2026-03-10"),  # clock skew: today
    ],
)
def test_an_object_version_belongs_to_its_utc_day_clamped_into_range(
    when: dt.datetime, day: str
) -> None:
    assert day_of(when, START, NOW.date()) == day


def test_new_changed_deleted_and_unchanged_objects() -> None:
    result = plan(
        [obj("a.jpg"), obj("b.jpg", "e2", size=7), obj("c.jpg"), obj("notes.txt")],
        [known("a.jpg"), known("b.jpg"), known("gone.jpg")],
    )
    assert [row["s3_key"] for row in result.rows] == ["b.jpg", "c.jpg", "gone.jpg"]
    assert dataclasses.asdict(result.days["2026-03-09"]) == {
        "new": 1,
        "changed": 1,
        "deleted": 1,
        "bytes": 17,
    }
    rows = {row["s3_key"]: row for row in result.rows}
    assert rows["gone.jpg"]["deleted_at"] == NOW
    assert rows["c.jpg"]["first_seen"] == NOW and rows["b.jpg"]["first_seen"] == MARCH_9
    [batch] = result.batches
    assert (batch.day, batch.size) == ("2026-03-09", 3)
    assert {row["batch_id"] for row in result.rows} == {batch.batch_id}
    assert result.skipped == ["notes.txt"]


def test_batches_are_per_day_capped_and_deterministic() -> None:
    objects = [obj(f"{i}.jpg", when=MARCH_9 - dt.timedelta(days=i % 2)) for i in range(5)]
    first = plan(objects, [], max_per_batch=2)
    assert [(b.day, b.size) for b in first.batches] == [
        ("2026-03-08", 2),
        ("2026-03-09", 2),
        ("2026-03-09", 1),
    ]
    again = plan(list(reversed(objects)), [], max_per_batch=2)
    assert [b.batch_id for b in again.batches] == [b.batch_id for b in first.batches]
    reuploaded = plan([obj("0.jpg", when=MARCH_9 + dt.timedelta(seconds=1))], [], 2)
    assert reuploaded.batches[0].batch_id not in {b.batch_id for b in first.batches}


def test_objects_already_current_are_inventoried_without_a_batch() -> None:
    v1 = dataclasses.replace(known("v1.jpg"), inventoried=False, partition_key="v1.jpg")
    result = plan([obj("v1.jpg"), obj("err.jpg")], [v1, known("err.jpg", result=None)])
    rows = {row["s3_key"]: row for row in result.rows}
    assert rows["v1.jpg"]["batch_id"] is None and rows["v1.jpg"]["partition_key"] == "2026-03-09"
    [batch] = result.batches
    assert rows["err.jpg"]["batch_id"] == batch.batch_id  # inventoried, never classified


def test_objects_of_an_earlier_batch_are_pending_not_batched_again() -> None:
    waiting = known("a.jpg", result=None, batch_id="batch-x")
    gone = known("b.jpg", deleted_at=MARCH_9, batch_id="batch-y", result="e1")
    result = plan([obj("a.jpg")], [waiting, gone])
    assert result.pending == {"batch-x": "2026-03-09", "batch-y": "2026-03-09"}
    assert result.batches == [] and result.rows == [] and result.days == {}


def test_results_without_inventory_rows_that_vanished_are_marked_deleted() -> None:
    v1_gone = dataclasses.replace(known("old.jpg"), inventoried=False, partition_key="old.jpg")
    v1_done = dataclasses.replace(v1_gone, s3_key="done.jpg", result_status="deleted")
    result = plan([], [v1_gone, v1_done])
    [row] = result.rows
    assert (row["s3_key"], row["partition_key"]) == ("old.jpg", "2024-01-01")  # not a day: first
    assert row["deleted_at"] == NOW and len(result.batches) == 1


@pytest.fixture
def engine(db_url: str):
    with database(db_url) as engine:
        yield engine


def test_ranges_follow_s3_byte_order_and_stay_inside_the_prefix(engine) -> None:
    keys = ["p/B.jpg", "p/a.jpg", "p/é.jpg", "p/z.jpg", "p0.jpg", "o.jpg", "p/\U0001f431.jpg"]
    inventory.write_rows(engine, [inventory_row(key) for key in keys])
    assert sorted(keys) == [
        "o.jpg",
        "p/B.jpg",
        "p/a.jpg",
        "p/z.jpg",
        "p/é.jpg",
        "p/🐱.jpg",
        "p0.jpg",
    ]

    def keys_in(after: str, last: str | None) -> list[str]:
        return sorted(inventory.read_known(engine, Slice([], after, last, 1), "p/"))

    assert keys_in("", None) == ["p/B.jpg", "p/a.jpg", "p/z.jpg", "p/é.jpg", "p/🐱.jpg"]
    assert keys_in("p/B.jpg", "p/z.jpg") == ["p/a.jpg", "p/z.jpg"]
    assert keys_in("p/z.jpg", None) == ["p/é.jpg", "p/🐱.jpg"]


def test_write_rows_upserts_and_keeps_first_seen(engine) -> None:
    inventory.write_rows(engine, [inventory_row("a.jpg")])
    later = MARCH_9 + dt.timedelta(days=1)
    inventory.write_rows(engine, [inventory_row("a.jpg", etag="e2", first_seen=later)])
    with engine.connect() as connection:
        [row] = connection.execute(sa.select(results.image_objects)).all()
    assert (row.etag, row.first_seen.replace(tzinfo=dt.UTC)) == ("e2", MARCH_9)


def test_runs_stream_their_targets_in_pages(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "READ_PAGE", 3)
    rows = [inventory_row(f"{i:02}.jpg", batch_id="b1" if i < 7 else "b2") for i in range(10)]
    rows.append(inventory_row("gone.jpg", deleted_at=NOW))
    rows.append(inventory_row("other-day.jpg", day="2026-03-08"))
    inventory.write_rows(engine, rows)

    def result(key: str, **changes) -> results.ClassificationRow:
        base = results.ClassificationRow(
            s3_key=key, partition_key="2026-03-09", status="ok", etag="e1", score=0.5,
            model_id="m", model_revision="r1",
        )  # fmt: skip
        return dataclasses.replace(base, **changes)

    results.upsert_rows(
        engine,
        [
            result("00.jpg"),  # current
            result("01.jpg", etag="old"),  # another version
            result("02.jpg", model_revision="r0"),  # another model revision
            result("03.jpg", status="error", score=None),  # current: an error row
            result("gone.jpg"),  # deleted in S3, row still says ok
        ],
    )
    batch = [t.s3_key for t in inventory.batch_targets(engine, "b1", "m", "r1")]
    assert batch == ["01.jpg", "02.jpg", "04.jpg", "05.jpg", "06.jpg"]  # a retry goes on
    whole_batch = inventory.batch_targets(engine, "b1", "m", "r1", reclassify=True)
    assert [t.s3_key for t in whole_batch] == [f"{i:02}.jpg" for i in range(7)]
    stale = [t.s3_key for t in inventory.stale_targets(engine, "2026-03-09", "m", "r1")]
    assert stale == ["01.jpg", "02.jpg", *(f"{i:02}.jpg" for i in range(4, 10)), "gone.jpg"]
    everything = list(inventory.stale_targets(engine, "2026-03-09", "m", "r1", reclassify=True))
    assert len(everything) == 11
    assert {t.partition_key for t in everything} == {"2026-03-09"}


def test_batches_wait_with_their_rows_until_forgotten(engine) -> None:
    first = inventory.Batch("batch-1", "2026-03-09", 2)
    rows = [inventory_row(k, batch_id="batch-1") for k in ("a.jpg", "b.jpg")]
    inventory.write_rows(engine, rows, [first])
    inventory.write_rows(engine, rows, [first])  # a replayed tick: the same batch, once
    assert inventory.unconfirmed_batches(engine) == {"batch-1": "2026-03-09"}
    # both objects changed again and joined a later batch: nothing is left to run for batch-1
    later = [inventory_row(k, etag="e2", batch_id="batch-2") for k in ("a.jpg", "b.jpg")]
    inventory.write_rows(engine, later, [inventory.Batch("batch-2", "2026-03-09", 2)])
    assert inventory.unconfirmed_batches(engine) == {"batch-1": None, "batch-2": "2026-03-09"}
    assert list(inventory.unconfirmed_batches(engine, limit=1)) == ["batch-1"]  # oldest first
    inventory.forget_batches(engine, ["batch-1", "batch-2"])
    assert inventory.unconfirmed_batches(engine) == {}


def test_days_with_objects_are_found_by_index_probes_within_the_range(engine) -> None:
    days = ["2026-03-01", "2026-03-05", "2026-03-05", "2026-03-09", "2026-04-01"]
    rows = [inventory_row(f"{i}.jpg", day=day) for i, day in enumerate(days)]
    rows.append(inventory_row("gone.jpg", day="2026-03-07", deleted_at=NOW))  # a deleted key too
    inventory.write_rows(engine, rows)
    found = inventory.days_with_objects(engine, "2026-03-02", "2026-03-09")
    assert found == ["2026-03-05", "2026-03-07", "2026-03-09"]
    assert inventory.days_with_objects(engine, "2026-03-10", "2026-03-31") == []
    assert inventory.days_with_objects(engine, "2026-03-01", "2026-03-01") == ["2026-03-01"]
