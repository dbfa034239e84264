"""s3_image_sensor against a real S3 server (SeaweedFS), a real database and Dagster instance."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import dagster as dg
import pytest

from ai_assets.db import results
from ai_assets.defs.images.sensor import BATCH_TAG, DEFAULT_COST_US, MAX_COST_US, Cursor
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.support.util import configure, database, rows_by_key
from ai_assets_tests.support.util import inventory_rows as inventory


def today() -> str:
    """Today's UTC day, read when asserted: a module constant goes stale across midnight."""
    return dt.datetime.now(dt.UTC).date().isoformat()


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'results.sqlite'}"


@pytest.fixture
def daemon(
    instance: dg.DagsterInstance,
    bucket: str,
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: str,
) -> InProcessDaemon:
    configure(monkeypatch, bucket, db, tiny_model_dir, prefix="in/")
    return InProcessDaemon(instance)


def put(s3_client: Any, bucket: str, key: str, body: bytes = b"img") -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def batches(result: dg.SensorResult) -> list[tuple[str | None, str | None]]:
    return [(r.partition_key, r.tags.get(BATCH_TAG)) for r in result.run_requests or []]


def test_new_objects_become_inventory_rows_one_event_per_day_and_one_batch(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, db: str
) -> None:
    for name in ("b.jpg", "a.jpg", "c d/é.png", "x...y.jpg", "new\nline.jpg"):
        put(s3_client, bucket, f"in/{name}")
    put(s3_client, bucket, "in/readme.txt")
    put(s3_client, bucket, "outside/z.jpg")

    result = daemon.evaluate()
    rows = inventory(db)
    assert sorted(rows) == sorted(
        f"in/{n}" for n in ("a.jpg", "b.jpg", "c d/é.png", "x...y.jpg", "new\nline.jpg")
    )
    [request] = result.run_requests or []
    assert request.partition_key == today()
    assert request.run_key == request.tags[BATCH_TAG]
    assert {row["batch_id"] for row in rows.values()} == {request.run_key}
    assert {row["partition_key"] for row in rows.values()} == {today()}
    [event] = result.asset_events or []
    assert event.partition == today()
    assert event.metadata["new"].value == 5
    assert event.metadata["changed"].value == event.metadata["deleted"].value == 0
    assert event.metadata["bytes"].value == 15
    assert not result.dynamic_partitions_requests


def test_nothing_is_requested_twice_and_the_cursor_stays_small(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, db: str
) -> None:
    put(s3_client, bucket, "in/a.jpg")
    first, [run] = daemon.tick()
    assert run.success
    assert len(first.run_requests or []) == 1
    second, _ = daemon.tick()
    assert not second.run_requests
    assert not second.asset_events
    assert len((daemon.cursor or "").encode()) < 200  # a key, counters and two dates
    assert rows_by_key(db)["in/a.jpg"]["status"] == "error"  # b"img" is no image: one row


def test_batches_hold_at_most_max_objects_per_run(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI_ASSETS_MAX_OBJECTS_PER_RUN", "3")
    for i in range(7):
        put(s3_client, bucket, f"in/{i}.jpg")
    result = daemon.evaluate()
    requests = result.run_requests or []
    assert [r.partition_key for r in requests] == [today()] * 3
    assert len({r.run_key for r in requests}) == 3
    assert len(result.asset_events or []) == 1  # one day, however many batches


def test_changed_deleted_and_new_objects_are_classified_and_marked(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, db: str, jpegs: dict[str, bytes]
) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        put(s3_client, bucket, f"in/{name}", jpegs["coffee"])
    _, runs = daemon.tick()
    assert [run.success for run in runs] == [True]
    before = rows_by_key(db)

    put(s3_client, bucket, "in/b.jpg", jpegs["chelsea"])
    s3_client.delete_object(Bucket=bucket, Key="in/c.jpg")
    put(s3_client, bucket, "in/e.jpg", jpegs["chelsea"])
    result, runs = daemon.tick()
    assert [run.success for run in runs] == [True]
    [event] = result.asset_events or []
    counts = {k: event.metadata[k].value for k in ("new", "changed", "deleted")}
    assert counts == {"new": 1, "changed": 1, "deleted": 1}
    after = rows_by_key(db)
    assert after["in/b.jpg"]["etag"] != before["in/b.jpg"]["etag"]
    assert after["in/c.jpg"]["status"] == "deleted"
    assert after["in/e.jpg"]["status"] == "ok"
    assert after["in/a.jpg"]["run_id"] == before["in/a.jpg"]["run_id"]  # untouched
    assert inventory(db)["in/c.jpg"]["deleted_at"] is not None
    # the run's own counts, then where the whole day stands after it
    [run] = runs
    metadata = run.asset_materializations_for_node("image_classifications")[0].metadata
    assert {k: metadata[k].value for k in ("images", "classified", "deleted")} == {
        "images": 3, "classified": 2, "deleted": 1,
    }  # fmt: skip
    day = {k: metadata[f"day_{k}"].value for k in ("objects", "current", "waiting", "deleted")}
    assert day == {"objects": 4, "current": 4, "waiting": 0, "deleted": 1}

    again, _ = daemon.tick()
    assert not again.run_requests and not again.asset_events


def test_a_large_prefix_is_listed_in_slices_and_a_pass_catches_everything(
    daemon: InProcessDaemon,
    s3_client: Any,
    bucket: str,
    db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ai_assets.defs.images.sensor.PAGE_SIZE", 2)
    monkeypatch.setattr("ai_assets.defs.images.sensor.MAX_OBJECTS_PER_TICK", 4)
    for i in range(10):
        put(s3_client, bucket, f"in/{i:02}.jpg")

    def one_tick() -> tuple[dg.SensorResult, dict[str, Any]]:
        result, runs = daemon.tick()
        assert all(run.success for run in runs)
        return result, json.loads(daemon.cursor or "{}")

    seen = []
    for _ in range(3):
        result, cursor = one_tick()
        seen.append(sum(e.metadata["new"].value for e in result.asset_events or []))
    assert seen == [4, 4, 2]
    assert cursor["after"] == "" and cursor["passes"] == 1

    # during the next pass: a late key sorting before the cursor, a deletion in a later slice
    put(s3_client, bucket, "in/00a.jpg")
    result, cursor = one_tick()  # 00, 00a, 01, 02
    assert cursor["after"] == "in/02.jpg"
    s3_client.delete_object(Bucket=bucket, Key="in/07.jpg")
    put(s3_client, bucket, "in/000.jpg")  # before the cursor: found by the next pass
    one_tick()  # 03..06
    result, cursor = one_tick()  # 08, 09 and the deletion of 07 between them
    assert [e.metadata["deleted"].value for e in result.asset_events or []] == [1]
    assert cursor["passes"] == 2
    result, _ = one_tick()
    assert [e.metadata["new"].value for e in result.asset_events or []] == [1]
    rows = rows_by_key(db)
    assert len(rows) == 12
    assert rows["in/07.jpg"]["status"] == "deleted"
    assert sum(row["status"] != "deleted" for row in rows.values()) == 11


def test_objects_already_current_are_inventoried_not_reclassified(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, db: str, jpegs: dict[str, bytes]
) -> None:
    """Rows written by v1 (or another deployment) with the listed ETag stay as they are."""
    put(s3_client, bucket, "in/old.jpg", jpegs["coffee"])
    put(s3_client, bucket, "in/other.jpg", jpegs["coffee"])
    head = s3_client.head_object(Bucket=bucket, Key="in/old.jpg")
    with database(db) as engine:
        results.upsert_rows(
            engine,
            [
                results.ClassificationRow(
                    s3_key="in/old.jpg",
                    partition_key="old.jpg",
                    status="ok",
                    etag=head["ETag"].strip('"'),
                    label="espresso",
                    score=0.9,
                    run_id="v1-run",
                )
            ],
        )
    _, runs = daemon.tick()
    assert inventory(db).keys() == {"in/old.jpg", "in/other.jpg"}
    assert inventory(db)["in/old.jpg"]["batch_id"] is None
    [run] = runs
    assert (
        run.asset_materializations_for_node("image_classifications")[0].metadata["images"].value
        == 1
    )
    assert rows_by_key(db)["in/old.jpg"]["run_id"] == "v1-run"


@pytest.mark.reliability
def test_a_tick_interrupted_before_its_runs_is_recovered_exactly_once(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, db: str, reliability_report
) -> None:
    for name in ("a.jpg", "b.jpg"):
        put(s3_client, bucket, f"in/{name}")
    crashed = daemon.evaluate()  # inventory committed; the daemon dies before its runs
    daemon.report_events(crashed)
    [lost] = crashed.run_requests or []

    put(s3_client, bucket, "in/c.jpg")
    replay, runs = daemon.tick()  # a fresh daemon replays the tick with the old cursor
    assert [e.metadata["new"].value for e in replay.asset_events or []] == [1]
    keys = [r.run_key for r in replay.run_requests or []]
    assert lost.run_key in keys and len(keys) == 2
    assert all(run.success for run in runs) and len(runs) == 2

    after, _ = daemon.tick()
    assert not after.run_requests
    rows = rows_by_key(db)
    reliability_report("sensor crash after inventory commit, before runs", "ok", 3, len(rows))
    assert sorted(rows) == ["in/a.jpg", "in/b.jpg", "in/c.jpg"]
    runs_per_batch = [
        len(daemon.instance.get_run_ids(dg.RunsFilter(tags={BATCH_TAG: key}))) for key in keys
    ]
    assert runs_per_batch == [1, 1]


@pytest.mark.reliability
def test_a_queued_batch_is_not_requested_again_by_a_later_pass(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, reliability_report
) -> None:
    put(s3_client, bucket, "in/a.jpg")
    first = daemon.evaluate()
    [request] = first.run_requests or []
    daemon.instance.create_run_for_job(  # the daemon queued it; it has not run yet
        daemon.defs.resolve_job_def("classify_images_job"),
        tags={**request.tags, "dagster/partition": request.partition_key or ""},
    )
    daemon.cursor = first.cursor
    second = daemon.evaluate()
    assert not second.run_requests
    reliability_report("batch queued, next pass", "ok", 0, len(second.run_requests or []))


def test_label_summary_refreshes_once_after_many_batches_then_waits_for_new_results(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI_ASSETS_MAX_OBJECTS_PER_RUN", "1")
    now = dt.datetime.now(dt.UTC)  # just after the next five-minute cron tick
    start = now.replace(second=10, microsecond=0) + dt.timedelta(minutes=5 - now.minute % 5)
    summary = dg.AssetSelection.assets("label_summary")

    def requested(minutes: int, cursor: Any) -> tuple[int, Any]:
        result = dg.evaluate_automation_conditions(
            defs=daemon.defs,
            instance=daemon.instance,
            asset_selection=summary,
            evaluation_time=start + dt.timedelta(minutes=minutes),
            cursor=cursor,
        )
        return result.total_requested, result.cursor

    n, cursor = requested(0, None)
    assert n == 0
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        put(s3_client, bucket, f"in/{name}")
    _, runs = daemon.tick()
    assert len(runs) == 3
    n, cursor = requested(1, cursor)
    assert n == 0  # results changed, but the five-minute tick has not passed
    n, cursor = requested(6, cursor)
    assert n == 1  # one refresh for three batches
    n, cursor = requested(12, cursor)
    assert n == 0  # nothing new since


def test_non_image_keys_are_reported_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from ai_assets.defs.images import sensor as s3

    monkeypatch.setattr(s3, "_REPORTED", {})
    monkeypatch.setattr(s3, "_MAX_REPORTED", 3)
    assert s3.not_yet_reported(["a.txt", "b.txt"]) == ["a.txt", "b.txt"]
    assert s3.not_yet_reported(["a.txt", "b.txt", "c.txt"]) == ["c.txt"]
    assert s3.not_yet_reported(["d.txt"]) == ["d.txt"]  # the bound forgets a.txt
    assert s3.not_yet_reported(["a.txt", "d.txt"]) == ["a.txt"]


@pytest.mark.reliability
def test_hostile_keys_as_slice_boundaries_resume_exactly(
    daemon: InProcessDaemon,
    s3_client: Any,
    bucket: str,
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    reliability_report,
) -> None:
    """Every key ends a slice, so each becomes the cursor and the next StartAfter."""
    from ai_assets_tests.support.hostile import hostile_keys

    monkeypatch.setattr("ai_assets.defs.images.sensor.PAGE_SIZE", 1)
    monkeypatch.setattr("ai_assets.defs.images.sensor.MAX_OBJECTS_PER_TICK", 1)
    keys = [f"in/{key}" for key in hostile_keys()]
    for key in keys:
        put(s3_client, bucket, key)
    cursors = []
    for _ in range(len(keys) + 1):
        _, runs = daemon.tick()
        assert all(run.success for run in runs)
        cursors.append(json.loads(daemon.cursor or "{}"))
        if cursors[-1]["after"] == "":
            break
    assert [c["after"] for c in cursors[:-1]] == sorted(keys)[: len(cursors) - 1]
    assert cursors[-1]["passes"] == 1
    rows = rows_by_key(db)
    reliability_report("hostile keys as slice boundaries", "ok", len(keys), len(rows))
    assert sorted(rows) == sorted(keys)
    again, _ = daemon.tick()  # a second pass: nothing new, nothing deleted
    assert not again.asset_events


def test_a_run_logs_a_bounded_number_of_error_lines(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each log line is a Dagster event: a batch of broken files must not write one per file."""
    import logging

    monkeypatch.setattr("ai_assets.defs.images.assets.MAX_ERROR_LOGS", 2)
    for i in range(5):
        put(s3_client, bucket, f"in/broken-{i}.jpg")  # b"img": not an image
    _, [run] = daemon.tick()
    records = daemon.instance.get_records_for_run(run.run_id, limit=1000).records
    warnings = [
        r.event_log_entry.user_message
        for r in records
        if r.event_log_entry.dagster_event is None and r.event_log_entry.level == logging.WARNING
    ]
    assert len(warnings) == 3
    assert "3 more objects failed to classify" in warnings[-1]
    assert (
        run.asset_materializations_for_node("image_classifications")[0].metadata["errors"].value
        == 5
    )


def test_the_cursor_learns_the_cost_per_object_from_ticks_large_enough() -> None:
    cursor = Cursor("p/")
    assert cursor.reserve == DEFAULT_COST_US / 1e6
    assert cursor.learn(5.0, 10) == cursor  # too few objects to measure
    learned = cursor.learn(2.0, 10_000)
    assert learned.cost_us == 200 and learned.reserve == pytest.approx(0.0002)
    assert cursor.learn(3_600.0, 10_000).cost_us == MAX_COST_US  # one stall cannot stop listing
    assert Cursor.parse(learned.dumps(), "p/") == learned
    old = '{"prefix": "p/", "after": "k", "passes": 1, "listed": 5, "started": 7}'
    assert Cursor.parse(old, "p/").cost_us == DEFAULT_COST_US  # a cursor from before the cost


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (  # a local S3 server and a bucket, but no keys anywhere
            {"AI_ASSETS_S3_BUCKET": "photos", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
            "no S3 credentials found",
        ),
        (  # keys but no bucket, on AWS itself: the default name would be someone else's bucket
            {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret"},
            "AI_ASSETS_S3_BUCKET is not set, and the default 'images' would be looked up on AWS",
        ),
    ],
)
def test_without_credentials_or_a_bucket_the_sensor_skips_and_names_the_fix(
    instance: dg.DagsterInstance,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: str,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AI_ASSETS_S3_BUCKET", "AI_ASSETS_SQS_QUEUE_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to find here
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", f"sqlite:///{tmp_path / 'results.sqlite'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    daemon = InProcessDaemon(instance)
    for _ in range(2):  # every tick skips the same way; none fails
        result = daemon.evaluate()
        assert not result.run_requests and not result.asset_events
        message = result.skip_reason.skip_message if result.skip_reason else ""
        assert message.startswith(expected)
        for fix in ("AI_ASSETS_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", ".demo/env.sh"):
            assert fix in message


def _days_ago(days: int) -> str:
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)).isoformat()


def materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return instance.get_materialized_partitions(dg.AssetKey(asset))


def test_days_without_objects_are_recorded_complete_once_a_pass_is_complete(
    daemon: InProcessDaemon,
    s3_client: Any,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AI_ASSETS_START_DATE", _days_ago(6))
    monkeypatch.setattr("ai_assets.defs.images.sensor.PAGE_SIZE", 1)
    monkeypatch.setattr("ai_assets.defs.images.sensor.MAX_OBJECTS_PER_TICK", 1)
    monkeypatch.setattr("ai_assets.defs.images.sensor.MAX_EMPTY_DAYS_PER_TICK", 4)
    put(s3_client, bucket, "in/a.jpg")
    put(s3_client, bucket, "in/b.jpg")
    first, _ = daemon.tick()  # half the listing: which days are empty is not known yet
    assert [e.partition for e in first.asset_events or []] == [today()]
    # the pass ends: the next four days (at most a tick's worth) are recorded, both assets
    second, runs = daemon.tick()
    assert all(run.success for run in runs)
    empty = [_days_ago(n) for n in (6, 5, 4, 3)]
    assert [(e.asset_key.path[-1], e.partition) for e in second.asset_events or []] == [
        ("s3_images", today()), *(("s3_images", d) for d in empty),
        *(("image_classifications", d) for d in empty),
    ]  # fmt: skip
    s3, classified = (second.asset_events or [])[1:5], (second.asset_events or [])[5:]
    assert {e.metadata["new"].value + e.metadata["bytes"].value for e in s3} == {0}
    assert {e.metadata["day_objects"].value for e in classified} == {0}
    third, _ = daemon.tick()  # the rest; today holds objects: its runs materialize it
    assert [e.partition for e in third.asset_events or []] == [_days_ago(2), _days_ago(1)] * 2
    every = {_days_ago(n) for n in range(7)}
    assert materialized(daemon.instance, "image_classifications") == every
    assert materialized(daemon.instance, "s3_images") == every
    assert not daemon.tick()[0].asset_events  # caught up: nothing more, every tick
    # a new sensor (a fresh cursor) does not record them again; an earlier start adds its days
    fresh = InProcessDaemon(daemon.instance)
    assert not fresh.tick()[0].asset_events
    monkeypatch.setenv("AI_ASSETS_START_DATE", _days_ago(8))
    earlier = fresh.tick()[0]
    assert {e.partition for e in earlier.asset_events or []} == {_days_ago(8), _days_ago(7)}


def test_an_empty_today_recorded_complete_is_materialized_again_by_its_first_run(
    daemon: InProcessDaemon, s3_client: Any, bucket: str
) -> None:
    result, _ = daemon.tick()  # an empty bucket: today holds nothing yet
    assert {e.partition for e in result.asset_events or []} == {today()}
    put(s3_client, bucket, "in/a.jpg")
    result, [run] = daemon.tick()
    assert run.success
    [event] = result.asset_events or []
    assert event.metadata["new"].value == 1
    [record] = daemon.instance.fetch_materializations(
        dg.AssetKey("image_classifications"), limit=1
    ).records
    assert record.run_id == run.run_id
    assert record.asset_materialization.metadata["day_objects"].value == 1  # type: ignore[union-attr]
