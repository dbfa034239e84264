"""S3 event notifications through SQS: decoding, ordering, the sensor's drain and its failures.

moto's server is the real S3 → SQS peer (its S3 sends bucket notifications to its own SQS);
bursts, crashes and SQS errors use the faster SQS server of ``sqs_server``, with events shaped
as S3 sends them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from ai_assets.defs.images.sensor import BATCH_TAG, Cursor
from ai_assets.resources import ImageBucketResource
from ai_assets.s3.events import is_later
from ai_assets.s3.sqs import Drained, decode_key, read_message
from ai_assets.settings import max_objects_per_run
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.fakes.sqs_server import ACCESS_DENIED, THROTTLED, FakeSqs
from ai_assets_tests.support.s3_events import NOW, body, s3_event, send
from ai_assets_tests.support.util import configure, rows_by_key
from ai_assets_tests.support.util import inventory_rows as inventory

ODD_KEYS = ["in/a b.jpg", "in/a+b.jpg", "in/100%.jpg", "in/é/漢 字.png", "in/x%2By.jpg"]


# --- pure: ordering, keys, message bodies -------------------------------------------------


def test_sequencers_compare_right_padded_and_a_listing_state_compares_by_time() -> None:
    t = NOW
    assert is_later("0055AED6DCD90281E6", t, "0055AED6DCD90281E5", t)
    assert is_later("0055AED6DCD90282", t, "0055AED6DCD902810000", t)  # padded: ...82 > ...81
    assert not is_later("0055AED6DCD9028100", t, "0055AED6DCD90281", t)  # equal once padded
    assert not is_later("0a", t + dt.timedelta(hours=1), "0B", t)  # the sequencer decides
    assert is_later("0A", t, None, t - dt.timedelta(seconds=1))  # no sequencer: time decides
    assert not is_later("0A", t, None, t + dt.timedelta(milliseconds=1))
    assert is_later("", t, "", t)  # a tie counts as later; the next pass corrects it
    assert is_later("", t, None, None)


@pytest.mark.parametrize("key", [*ODD_KEYS, "in/sp  ace .jpg", "in/%%.jpg", "in/a&b=c?.jpg"])
def test_event_keys_decode_to_the_key_s3_stores(key: str) -> None:
    assert decode_key(urllib.parse.quote_plus(key)) == key
    assert decode_key(urllib.parse.quote(key, safe="/")) == key  # '/' left as is


def read(*bodies: str, prefix: str = "in/") -> Drained:
    drained = Drained()
    for i, text in enumerate(bodies):
        message = {"MessageId": f"m{i}", "ReceiptHandle": f"h{i}", "Body": text}
        read_message(drained, message, "images", prefix)
    return drained


def test_messages_of_every_kind_are_read_and_all_of_them_deleted() -> None:
    sns = json.dumps({"Type": "Notification", "Message": body(s3_event("in/sns.jpg"))})
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "images"})
    drained = read(
        body(s3_event("in/a.jpg"), s3_event("in/b.jpg", "ObjectRemoved:Delete")),
        sns,
        test_event,
        "not json",
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
        json.dumps(["a list"]),
        body(s3_event("in/other.jpg", bucket="another-bucket")),
        body(s3_event("out/a.jpg")),
        body(s3_event("in/readme.txt")),
        body(s3_event("in/a.jpg", "ObjectTagging:Put")),
        body(s3_event("in/gone.jpg", "LifecycleExpiration:Delete")),
    )
    assert drained.handles == [f"h{i}" for i in range(11)]
    assert sorted(drained.events) == ["in/a.jpg", "in/b.jpg", "in/gone.jpg", "in/sns.jpg"]
    assert drained.events["in/b.jpg"].removed and drained.events["in/gone.jpg"].removed
    assert drained.test_events == 1
    assert len(drained.malformed) == 3
    assert all(problem.startswith("message m") for problem in drained.malformed)
    assert drained.other_events == 3
    assert drained.skipped == ["in/readme.txt"]


def test_the_latest_event_of_a_key_wins_within_one_drain() -> None:
    events = [
        s3_event("in/k.jpg", etag="v2", sequencer="02"),
        s3_event("in/k.jpg", "ObjectRemoved:Delete", sequencer="03"),
        s3_event("in/k.jpg", etag="v1", sequencer="01"),
        s3_event("in/k.jpg", etag="v2", sequencer="02"),
    ]
    drained = read(*(body(event) for event in events))
    assert drained.events["in/k.jpg"].removed


# --- the sensor with a queue --------------------------------------------------------------


def queue_depth(client: Any, url: str) -> int:
    attributes = client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def passes(daemon: InProcessDaemon) -> int:
    return json.loads(daemon.cursor or "{}").get("passes", 0)


@pytest.fixture
def moto_bucket(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path, tiny_model_dir: str
) -> tuple[Any, Any, str]:
    """A moto bucket whose ObjectCreated/ObjectRemoved notifications go to a moto queue."""
    session = boto3.session.Session(region_name="us-east-1")  # not boto3's default: it caches keys
    s3, sqs = session.client("s3"), session.client("sqs")
    s3.create_bucket(Bucket="images")
    queue_url = sqs.create_queue(QueueName="image-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    s3.put_bucket_notification_configuration(
        Bucket="images",
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn["Attributes"]["QueueArn"],
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                }
            ]
        },
    )
    configure(
        monkeypatch,
        "images",
        f"sqlite:///{tmp_path / 'results.sqlite'}",
        tiny_model_dir,
        prefix="in/",
        AI_ASSETS_SQS_QUEUE_URL=queue_url,
    )
    return s3, sqs, queue_url


def test_uploads_overwrites_and_deletes_arrive_through_the_queue_in_one_tick(
    make_daemon: Callable[[], InProcessDaemon],
    moto_bucket: tuple[Any, Any, str],
    jpegs: dict[str, bytes],
    tmp_path,
) -> None:
    s3, sqs, queue_url = moto_bucket
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    daemon = make_daemon()
    first, _ = daemon.tick()  # the first pass lists the (empty) prefix; removes TestEvent
    assert not first.run_requests and passes(daemon) == 1
    for key in [*ODD_KEYS, "in/readme.txt", "out/z.jpg"]:
        s3.put_object(Bucket="images", Key=key, Body=jpegs["coffee"])

    result, runs = daemon.tick()
    assert passes(daemon) == 1  # no listing: the queue brought everything
    assert [run.success for run in runs] == [True]
    assert sorted(inventory(db)) == sorted(ODD_KEYS)
    rows = rows_by_key(db)
    assert sorted(rows) == sorted(ODD_KEYS)
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert queue_depth(sqs, queue_url) == 0

    s3.put_object(Bucket="images", Key="in/a b.jpg", Body=jpegs["chelsea"])
    s3.delete_object(Bucket="images", Key="in/a+b.jpg")
    result, runs = daemon.tick()
    assert passes(daemon) == 1 and [run.success for run in runs] == [True]
    [event] = result.asset_events or []
    assert (event.metadata["changed"].value, event.metadata["deleted"].value) == (1, 1)
    rows = rows_by_key(db)
    head = s3.head_object(Bucket="images", Key="in/a b.jpg")
    assert rows["in/a b.jpg"]["etag"] == head["ETag"].strip('"')
    assert rows["in/a+b.jpg"]["status"] == "deleted"
    assert inventory(db)["in/a+b.jpg"]["deleted_at"] is not None
    assert len(rows) == len(ODD_KEYS)

    again, runs = daemon.tick()  # nothing new: nothing requested, nothing left queued
    assert not again.run_requests and not runs and not again.asset_events
    assert queue_depth(sqs, queue_url) == 0


@pytest.mark.reliability
def test_a_versioned_buckets_removal_of_one_version_changes_only_what_s3_holds(
    make_daemon: Callable[[], InProcessDaemon],
    moto_bucket: tuple[Any, Any, str],
    jpegs: dict[str, bytes],
    tmp_path,
    reliability_report,
) -> None:
    """moto's versioned bucket holds the versions; the removal events are written as S3 sends
    them (moto sends none for a version deleted while others remain, nor for delete markers)."""
    s3, sqs, queue_url = moto_bucket
    s3.put_bucket_versioning(Bucket="images", VersioningConfiguration={"Status": "Enabled"})
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    daemon = make_daemon()
    daemon.tick()
    key = "in/photo.jpg"
    bodies = (jpegs["coffee"], jpegs["chelsea"], jpegs["coffee"] + b"\0")  # three ETags
    versions = [s3.put_object(Bucket="images", Key=key, Body=data) for data in bodies]
    daemon.tick()
    etag = [v["ETag"].strip('"') for v in versions]
    assert rows_by_key(db)[key]["etag"] == etag[2]

    def removed(version: dict[str, Any], name: str = "ObjectRemoved:Delete") -> None:
        event = s3_event(key, name, at=dt.datetime.now(dt.UTC), version=version["VersionId"])
        sqs.send_message(QueueUrl=queue_url, MessageBody=body(event))

    s3.delete_object(Bucket="images", Key=key, VersionId=versions[0]["VersionId"])
    removed(versions[0])  # a version that was not the current one: nothing changes
    result, runs = daemon.tick()
    assert not result.run_requests and not runs and not result.asset_events
    assert inventory(db)[key]["deleted_at"] is None
    assert rows_by_key(db)[key]["etag"] == etag[2]

    s3.delete_object(Bucket="images", Key=key, VersionId=versions[2]["VersionId"])
    removed(versions[2])  # the current version: the previous one is current again
    result, runs = daemon.tick()
    assert [run.success for run in runs] == [True]
    assert inventory(db)[key]["deleted_at"] is None
    assert rows_by_key(db)[key]["etag"] == etag[1]

    marker = s3.delete_object(Bucket="images", Key=key)  # a delete marker: the key is gone
    removed(marker, "ObjectRemoved:DeleteMarkerCreated")
    result, runs = daemon.tick()
    assert [run.success for run in runs] == [True]
    rows = rows_by_key(db)
    reliability_report("versioned bucket: one version removed, then the current one", "ok", 1, 1)
    assert rows[key]["status"] == "deleted"


@pytest.mark.reliability
def test_duplicated_reordered_and_late_events_change_nothing(
    make_daemon: Callable[[], InProcessDaemon],
    fake_queue: tuple[FakeSqs, str],
    bucket: str,
    s3_client: Any,
    tmp_path,
    reliability_report,
) -> None:
    sqs, _ = fake_queue
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    s3_client.put_object(Bucket=bucket, Key="in/listed.jpg", Body=b"v9")
    listed_etag = s3_client.head_object(Bucket=bucket, Key="in/listed.jpg")["ETag"].strip('"')
    t = NOW - dt.timedelta(minutes=5)
    daemon = make_daemon()
    daemon.cursor = daemon.evaluate().cursor  # the first pass inventories in/listed.jpg
    send(
        sqs,
        bucket,
        # with sequencers: put v2, delete, put v1 (stale), put v2 again (duplicate)
        s3_event("in/k.jpg", etag="v2", sequencer="0A02", at=t),
        s3_event("in/k.jpg", "ObjectRemoved:Delete", sequencer="0A03", at=t),
        s3_event("in/k.jpg", etag="v1", sequencer="0A01", at=t),
        # without sequencers (as moto sends them): the event time decides
        s3_event("in/t.jpg", etag="t2", at=t + dt.timedelta(seconds=2)),
        s3_event("in/t.jpg", etag="t1", at=t + dt.timedelta(seconds=1)),
        # an event older than what the listing recorded
        s3_event("in/listed.jpg", etag="old", at=t - dt.timedelta(days=1)),
        # a removal of a key never seen, then its late creation
        s3_event("in/never.jpg", "ObjectRemoved:Delete", sequencer="0B02", at=t),
    )
    first = daemon.evaluate()
    daemon.cursor = first.cursor
    rows = inventory(db)
    assert rows["in/k.jpg"]["deleted_at"] is not None
    assert rows["in/k.jpg"]["sequencer"] == "0A03"
    assert rows["in/t.jpg"]["etag"] == "t2"
    assert rows["in/listed.jpg"]["etag"] == listed_etag
    assert rows["in/never.jpg"]["deleted_at"] is not None

    send(
        sqs,
        bucket,
        s3_event("in/k.jpg", etag="v2", sequencer="0A02", at=t),  # late duplicate
        s3_event("in/k.jpg", "ObjectRemoved:Delete", sequencer="0A03", at=t),
        s3_event("in/t.jpg", etag="t1", at=t + dt.timedelta(seconds=1)),
        s3_event("in/never.jpg", etag="n1", sequencer="0B01", at=t),
        s3_event("in/listed.jpg", etag=listed_etag, at=t),
    )
    second = daemon.evaluate()
    assert inventory(db) == rows
    assert not second.asset_events
    new_batches = {r.tags[BATCH_TAG] for r in second.run_requests or []}
    assert new_batches <= {r.tags[BATCH_TAG] for r in first.run_requests or []}
    reliability_report("duplicated, reordered and late S3 events", "no change", 0, 0)


@pytest.mark.reliability
def test_a_crash_between_commit_and_delete_redelivers_harmlessly(
    make_daemon: Callable[[], InProcessDaemon],
    fake_queue: tuple[FakeSqs, str],
    bucket: str,
    s3_client: Any,
    jpegs: dict[str, bytes],
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    reliability_report,
) -> None:
    sqs, _ = fake_queue
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    monkeypatch.setattr("ai_assets.s3.sqs.VISIBILITY_SECONDS", 1)
    daemon = make_daemon()
    daemon.tick()
    keys = [f"in/{i}.jpg" for i in range(3)]
    records = []
    for key in keys:
        etag = s3_client.put_object(Bucket=bucket, Key=key, Body=jpegs["coffee"])["ETag"]
        records.append(s3_event(key, etag=etag.strip('"'), sequencer=f"0{key[3]}"))
    send(sqs, bucket, *records)

    def crash(self: ImageBucketResource, drained: Drained, workers: int) -> list[str]:
        raise KeyboardInterrupt("the daemon dies after the commit, before the delete")

    with monkeypatch.context() as patch:
        patch.setattr(ImageBucketResource, "delete_events", crash)
        with pytest.raises(KeyboardInterrupt):
            daemon.evaluate()
    assert sorted(inventory(db)) == keys  # committed, but no run and no delete yet
    time.sleep(1.5)  # the messages become visible again

    result, runs = daemon.tick()
    assert len(result.run_requests or []) == 1  # the committed batch, requested again
    assert [run.success for run in runs] == [True]
    again, runs = daemon.tick()
    assert not again.run_requests and not runs
    assert sqs.depth("image-events") == 0
    rows = rows_by_key(db)
    reliability_report("crash between inventory commit and SQS delete", "ok", 3, len(rows))
    assert sorted(rows) == keys and {r["status"] for r in rows.values()} == {"ok"}


def test_a_burst_of_10000_events_is_inventoried_exactly_once(
    make_daemon: Callable[[], InProcessDaemon],
    fake_queue: tuple[FakeSqs, str],
    bucket: str,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqs, _ = fake_queue
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", pg_url)
    keys = [f"in/burst/{i:05d} é+.jpg" for i in range(10_000)]
    events = [s3_event(key, etag=f"e{i}", sequencer=f"{i:08X}") for i, key in enumerate(keys)]
    requested: dict[str, int] = {}
    daemon = make_daemon()
    daemon.cursor = daemon.evaluate().cursor  # the first pass; the next is an hour away
    send(sqs, bucket, *events, *events[:500])  # 500 delivered twice
    for _ in range(5):
        result = daemon.evaluate()
        daemon.cursor = result.cursor
        for event in result.asset_events or []:
            requested[event.partition or ""] = (
                requested.get(event.partition or "", 0) + event.metadata["new"].value
            )
        if not sqs.depth("image-events"):
            break
    rows = inventory(pg_url)
    assert sorted(rows) == keys
    assert sum(requested.values()) == 10_000
    batches: dict[str, int] = {}
    for row in rows.values():
        batches[row["batch_id"]] = batches.get(row["batch_id"], 0) + 1
    assert sum(batches.values()) == 10_000 and max(batches.values()) <= max_objects_per_run()
    assert sqs.depth("image-events") == 0


@pytest.mark.reliability
@pytest.mark.parametrize(
    "fault",
    ["throttled", "access denied", "no such queue", "connection refused"],
)
def test_sqs_failures_warn_and_the_listing_carries_on(
    make_daemon: Callable[[], InProcessDaemon],
    fault: str,
    fake_queue: tuple[FakeSqs, str],
    bucket: str,
    s3_client: Any,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    reliability_report,
) -> None:
    sqs, _ = fake_queue
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    if fault == "connection refused":
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:9")
    elif fault == "no such queue":
        monkeypatch.setenv("AI_ASSETS_SQS_QUEUE_URL", f"{sqs.url}/123456789012/missing")
    else:
        error = THROTTLED if fault == "throttled" else ACCESS_DENIED
        sqs.faults["ReceiveMessage"].extend([error] * 100)
    daemon = make_daemon()
    for i in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"in/{i}.jpg", Body=b"x")
        result = daemon.evaluate()
        daemon.cursor = result.cursor
        assert f"in/{i}.jpg" in inventory(db)  # the listing ran: every tick while failing
        log = capfd.readouterr().err
        assert "WARNING - SQS queue" in log and "listing carries on" in log
    assert passes(daemon) == 3
    reliability_report(f"SQS {fault}", "listing carries on", 3, len(inventory(db)))


def test_the_listing_reconciles_what_no_notification_announced(
    make_daemon: Callable[[], InProcessDaemon],
    fake_queue: tuple[FakeSqs, str],
    bucket: str,
    s3_client: Any,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    daemon = make_daemon()
    daemon.cursor = daemon.evaluate().cursor  # first pass
    s3_client.put_object(Bucket=bucket, Key="in/unannounced.jpg", Body=b"x")
    daemon.cursor = daemon.evaluate().cursor
    assert "in/unannounced.jpg" not in inventory(db)  # no event, no pass due yet
    cursor = Cursor.parse(daemon.cursor, "in/")
    assert cursor.started and cursor.passes == 1
    monkeypatch.setenv("AI_ASSETS_RECONCILE_MINUTES", "0")  # the interval has passed
    daemon.cursor = daemon.evaluate().cursor
    assert "in/unannounced.jpg" in inventory(db)
    assert passes(daemon) == 2
