import dataclasses

import pytest
import sqlalchemy as sa

from ai_assets.db import results
from ai_assets.db.results import ClassificationRow, Written
from ai_assets_tests.support.util import database


def ok_row(key: str, label: str = "tabby", score: float = 0.9, **changes) -> ClassificationRow:
    row = ClassificationRow(
        s3_key=key,
        partition_key=key,
        status="ok",
        etag="e1",
        size_bytes=10,
        label=label,
        score=score,
        top_k=[{"label": label, "score": score}],
        model_id="m",
        model_revision="r1",
        run_id="run-1",
    )
    return dataclasses.replace(row, **changes)


@pytest.fixture
def engine(db_url: str):
    with database(db_url) as engine:
        yield engine


def test_upsert_is_idempotent_and_replaces_rows(engine) -> None:
    rows = [ok_row("a.jpg"), ok_row("b.jpg", label="espresso")]
    assert results.upsert_rows(engine, rows) == Written(rows=2)
    assert results.upsert_rows(engine, rows) == Written(rows=2)
    results.upsert_rows(engine, [ok_row("a.jpg", label="tiger cat", etag="e2", run_id="run-2")])
    current = {row["s3_key"]: row for row in results.fetch_rows(engine)}
    assert len(current) == 2
    assert current["a.jpg"]["label"] == "tiger cat"
    assert current["a.jpg"]["etag"] == "e2"
    assert current["a.jpg"]["run_id"] == "run-2"
    assert current["a.jpg"]["top_k"] == [{"label": "tiger cat", "score": 0.9}]
    assert current["a.jpg"]["classified_at"] is not None


def test_a_failing_batch_commits_nothing_and_keeps_earlier_rows(engine) -> None:
    results.upsert_rows(engine, [ok_row("kept.jpg")])
    bad = dataclasses.replace(ok_row("bad.jpg"), status="bogus")  # violates the CHECK constraint
    with pytest.raises(sa.exc.IntegrityError):
        results.upsert_rows(engine, [ok_row("new.jpg"), bad])
    assert [row["s3_key"] for row in results.fetch_rows(engine)] == ["kept.jpg"]


def test_duplicate_keys_in_one_batch_keep_the_last(engine) -> None:
    results.upsert_rows(engine, [ok_row("a.jpg", label="x"), ok_row("a.jpg", label="y")])
    assert [row["label"] for row in results.fetch_rows(engine)] == ["y"]


def test_hostile_keys_round_trip_byte_for_byte(engine) -> None:
    keys = [
        "a'; DROP TABLE image_classifications;--.jpg",
        "кот 🐱.png",
        "tab\tnl\n.jpg",
        "x" * 1000,
    ]
    results.upsert_rows(engine, [ok_row(key) for key in keys])
    assert sorted(row["s3_key"] for row in results.fetch_rows(engine)) == sorted(keys)


def test_every_column_round_trips_whatever_a_batch_mixes(engine) -> None:
    """PostgreSQL's upsert sends a batch as one array per column: NULLs beside values, a
    column that is NULL in every row, JSON, microseconds and 64-bit sizes come back as sent."""
    import datetime as dt

    moment = dt.datetime(2026, 12, 4, 20, 1, 2, 345678, tzinfo=dt.UTC)
    labels = [{"label": 'кот 🐱 "%s"', "score": 0.5}, {"label": "x%", "score": 0.25}]
    rows = [
        ok_row("a.jpg", top_k=labels, size_bytes=5 << 40, last_modified=moment, score=0.5),
        ok_row("b.jpg", status="error", label=None, score=None, top_k=None, error="100% 'bad'"),
        ok_row("c.jpg", status="deleted", label=None, score=None, top_k=None, etag=None),
    ]
    assert results.upsert_rows(engine, rows) == Written(rows=3, errors=1)
    current = {row["s3_key"]: row for row in results.fetch_rows(engine)}
    for row in rows:
        stored = current[row.s3_key]
        assert {**stored, "classified_at": None, "last_modified": None} == {
            **dataclasses.asdict(row),
            "classified_at": None,
            "last_modified": None,
        }
        for moment_column in ("classified_at", "last_modified"):
            sent, kept = getattr(row, moment_column), stored[moment_column]
            assert kept == sent or (kept.replace(tzinfo=dt.UTC) == sent)  # SQLite: naive UTC
    deleted_only = [ok_row("c.jpg", status="deleted", label=None, score=None, top_k=None)]
    assert results.upsert_rows(engine, deleted_only) == Written(rows=1)  # all-NULL columns


def test_summaries_and_audit(engine) -> None:
    results.upsert_rows(
        engine,
        [
            ok_row("a.jpg", label="tabby"),
            ok_row("b.jpg", label="tabby"),
            ok_row("c.jpg", label="espresso"),
            ok_row("d.jpg", status="error", label=None, score=None, top_k=None, error="bad"),
            ok_row("e.jpg", status="deleted", label=None, score=None, top_k=None),
        ],
    )
    assert results.label_counts(engine) == [("tabby", 2), ("espresso", 1)]
    assert results.status_counts(engine) == {"ok": 3, "error": 1, "deleted": 1}
    assert results.model_versions(engine) == [("m", "r1", 5)]


def test_upserts_report_what_the_table_holds_for_the_checks(engine) -> None:
    rows = [
        ok_row("a.jpg"),
        ok_row("b.jpg", score=1.5),
        ok_row("c.jpg", status="error", label=None, score=None, error="bad"),
        ok_row("d.jpg", status="deleted", label=None, score=None),
    ]
    assert results.upsert_rows(engine, rows) == Written(rows=4, stale=0, bad_scores=1, errors=1)


def test_a_row_about_an_older_object_version_never_wins(engine) -> None:
    import datetime as dt

    old, new = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    results.upsert_rows(engine, [ok_row("a.jpg", label="new", etag="e2", last_modified=new)])
    stale = ok_row("a.jpg", label="stale", etag="e1", last_modified=old)
    kept = results.upsert_rows(engine, [stale])
    assert kept == Written(rows=0, stale=1)
    [row] = results.fetch_rows(engine)
    assert (row["label"], row["etag"]) == ("new", "e2")
    results.upsert_rows(engine, [ok_row("a.jpg", label="newer", etag="e3", last_modified=new)])
    assert results.fetch_rows(engine)[0]["label"] == "newer"  # same version re-run: replaced


def test_upserts_behind_the_next_batch_write_every_batch_in_order(engine) -> None:
    computed: list[int] = []

    def batches():
        for i, label in enumerate(["first", "second", "third"]):
            computed.append(i)
            yield [ok_row("same.jpg", label=label), ok_row(f"{i}.jpg")]

    seen = []
    for rows, written in results.upsert_behind(engine, batches()):
        seen.append((rows[0].label, written))
        if len(seen) == 1:  # batch 1 was computed while batch 0 was being written
            assert computed == [0, 1]
    assert seen == [(label, Written(rows=2)) for label in ("first", "second", "third")]
    current = {row["s3_key"]: row["label"] for row in results.fetch_rows(engine)}
    assert current == {"same.jpg": "third", "0.jpg": "tabby", "1.jpg": "tabby", "2.jpg": "tabby"}


def test_a_failing_upsert_behind_stops_the_run_at_the_next_batch(engine) -> None:
    bad = dataclasses.replace(ok_row("bad.jpg"), status="bogus")  # violates the CHECK constraint
    computed: list[int] = []

    def batches():
        for i, rows in enumerate([[ok_row("a.jpg")], [bad], [ok_row("b.jpg")], [ok_row("c.jpg")]]):
            computed.append(i)
            yield rows

    with pytest.raises(sa.exc.IntegrityError):
        for _ in results.upsert_behind(engine, batches()):
            pass
    assert computed == [0, 1, 2]  # the batch after the failing one was computed, no further
    assert {row["s3_key"] for row in results.fetch_rows(engine)} <= {"a.jpg", "b.jpg"}
