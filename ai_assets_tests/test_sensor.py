"""s3_image_sensor against a real S3 server (SeaweedFS) and a real Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from ai_assets.inprocess import InProcessDaemon
from ai_assets.sensors.s3 import BATCH_TAG, RANGE_END_TAG, RANGE_START_TAG


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def daemon(
    instance: dg.DagsterInstance,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: str,
    tmp_path,
) -> InProcessDaemon:
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.setenv("AI_ASSETS_S3_PREFIX", "in/")
    monkeypatch.setenv("AI_ASSETS_MODEL", tiny_model_dir)
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", f"sqlite:///{tmp_path / 'results.sqlite'}")
    return InProcessDaemon(instance)


def put(s3_client: Any, bucket: str, key: str, body: bytes = b"img") -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def requested(result: dg.SensorResult) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (r.partition_key, r.tags.get(RANGE_START_TAG), r.tags.get(RANGE_END_TAG))
        for r in result.run_requests or []
    ]


def test_new_objects_become_partitions_events_and_one_batched_run(
    daemon: InProcessDaemon, s3_client: Any, bucket: str
) -> None:
    for name in ("b.jpg", "a.jpg", "c d/é.png", "x...y.jpg"):
        put(s3_client, bucket, f"in/{name}")
    put(s3_client, bucket, "in/readme.txt")
    put(s3_client, bucket, "outside/z.jpg")

    result = daemon.evaluate()
    [add] = result.dynamic_partitions_requests or []
    assert add.partition_keys == ["a.jpg", "b.jpg", "c d/é.png", "x..%2Ey.jpg"]
    assert requested(result) == [(None, "a.jpg", "x..%2Ey.jpg")]
    [request] = result.run_requests or []
    assert request.run_key and request.tags[BATCH_TAG] == request.run_key
    events = result.asset_events or []
    assert [e.partition for e in events] == add.partition_keys
    metadata = events[0].metadata
    assert metadata["s3_uri"].value == f"s3://{bucket}/in/a.jpg"
    assert {"etag", "size", "last_modified"} <= metadata.keys()


def test_nothing_is_requested_twice_across_ticks(
    daemon: InProcessDaemon, s3_client: Any, bucket: str
) -> None:
    put(s3_client, bucket, "in/a.jpg")
    first, _ = daemon.tick()
    assert len(first.run_requests or []) == 1
    second, _ = daemon.tick()
    assert not second.run_requests
    assert not second.asset_events
    assert len(daemon.cursor or "") < 32


def test_late_keys_sorting_first_same_second_and_multipart_are_found(
    daemon: InProcessDaemon, s3_client: Any, bucket: str
) -> None:
    put(s3_client, bucket, "in/m.jpg")
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key="in/big.jpg")
    daemon.tick()

    # same second as the first tick, sorting before the last key seen
    put(s3_client, bucket, "in/a.jpg")
    put(s3_client, bucket, "in/n.jpg")
    part = s3_client.upload_part(
        Bucket=bucket, Key="in/big.jpg", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 10
    )
    second, _ = daemon.tick()
    assert [e.partition for e in second.asset_events or []] == ["a.jpg", "n.jpg"]

    s3_client.complete_multipart_upload(
        Bucket=bucket,
        Key="in/big.jpg",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    third, _ = daemon.tick()
    assert [e.partition for e in third.asset_events or []] == ["big.jpg"]
    assert requested(third) == [("big.jpg", None, None)]


def test_changed_and_deleted_objects_are_requested_again(
    daemon: InProcessDaemon, s3_client: Any, bucket: str
) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        put(s3_client, bucket, f"in/{name}")
    daemon.tick()

    put(s3_client, bucket, "in/b.jpg", b"new content")
    s3_client.delete_object(Bucket=bucket, Key="in/c.jpg")
    put(s3_client, bucket, "in/e.jpg")
    result, _ = daemon.tick()
    tags = {e.partition: e.tags for e in result.asset_events or []}
    assert set(tags) == {"b.jpg", "c.jpg", "e.jpg"}
    assert tags["c.jpg"]["dagster/data_version"] == "deleted"
    # b and c are neighbours in partition order; e was just added at the end
    assert requested(result) == [(None, "b.jpg", "c.jpg"), ("e.jpg", None, None)]
    assert (result.dynamic_partitions_requests or [])[0].partition_keys == ["e.jpg"]

    again, _ = daemon.tick()
    assert not again.run_requests


def test_runs_are_capped_per_batch(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ai_assets.sensors.s3.MAX_BATCH_SIZE", 3)
    for i in range(7):
        put(s3_client, bucket, f"in/{i}.jpg")
    result = daemon.evaluate()
    assert requested(result) == [
        (None, "0.jpg", "2.jpg"),
        (None, "3.jpg", "5.jpg"),
        ("6.jpg", None, None),
    ]
    assert len({r.run_key for r in result.run_requests or []}) == 3


@pytest.mark.reliability
def test_a_tick_interrupted_before_its_runs_is_recovered_exactly_once(
    daemon: InProcessDaemon, s3_client: Any, bucket: str, reliability_report
) -> None:
    for name in ("a.jpg", "b.jpg"):
        put(s3_client, bucket, f"in/{name}")
    crashed = daemon.evaluate()
    daemon.apply_events_and_partitions(crashed)  # the daemon dies here: no run, no cursor

    put(s3_client, bucket, "in/c.jpg")
    replay = daemon.evaluate()  # a fresh daemon replays the tick with the old cursor
    assert [e.partition for e in replay.asset_events or []] == ["c.jpg"]
    [lost] = crashed.run_requests or []
    keys = {
        r.run_key: requested_one
        for r, requested_one in zip(replay.run_requests or [], requested(replay), strict=True)
    }
    assert keys[lost.run_key] == (None, "a.jpg", "b.jpg")
    assert len(keys) == 2

    daemon.apply_events_and_partitions(replay)
    for request in replay.run_requests or []:
        assert daemon.launch(request).success
    daemon.cursor = replay.cursor
    after, _ = daemon.tick()
    assert not after.run_requests
    requested_keys = [r.run_key for r in replay.run_requests or []] + [
        r.run_key for r in after.run_requests or []
    ]
    reliability_report("sensor crash before its runs, restart", "ok", 2, len(requested_keys))
