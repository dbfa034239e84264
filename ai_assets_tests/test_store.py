import datetime as dt

import pytest

from ai_assets.store import (
    DELETED,
    S3Object,
    batch_key,
    contiguous_batches,
    fetch_object,
    list_objects,
    parse_timestamp,
    plan_changes,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def obj(key: str, etag: str = "e1") -> S3Object:
    return S3Object(key=key, etag=etag, size=1, last_modified=NOW)


def test_plan_finds_new_changed_and_deleted_objects() -> None:
    listing = [obj("p/a.jpg"), obj("p/b.jpg", "e2"), obj("p/c.jpg"), obj("p/notes.txt")]
    known = {"a.jpg": "e1", "b.jpg": "e1", "gone.jpg": "e1", "old.jpg": DELETED}
    plan = plan_changes(listing, "p/", known, ["a.jpg", "b.jpg", "gone.jpg", "old.jpg"], 100)
    assert [(c.partition_key, c.etag) for c in plan.changes] == [
        ("b.jpg", "e2"),
        ("c.jpg", "e1"),
        ("gone.jpg", DELETED),
    ]
    assert plan.changes[2].object_key == "p/gone.jpg"
    assert plan.partitions_to_add == ["c.jpg"]
    assert plan.skipped_keys == ["p/notes.txt"]
    assert plan.deferred == 0


def test_plan_caps_changes_per_tick() -> None:
    listing = [obj(f"{i:03}.jpg") for i in range(10)]
    plan = plan_changes(listing, "", {}, [], max_changes=4)
    assert [c.partition_key for c in plan.changes] == ["000.jpg", "001.jpg", "002.jpg", "003.jpg"]
    assert plan.partitions_to_add == [c.partition_key for c in plan.changes]
    assert plan.deferred == 6


def test_plan_adds_partitions_only_once_and_escapes_keys() -> None:
    plan = plan_changes([obj("x...y.jpg"), obj("a.jpg")], "", {}, ["a.jpg"], 10)
    assert plan.partitions_to_add == ["x..%2Ey.jpg"]
    assert {c.partition_key for c in plan.changes} == {"a.jpg", "x..%2Ey.jpg"}


@pytest.mark.parametrize(
    ("selected", "max_size", "expected"),
    [
        ({"b", "c", "d"}, 10, [["b", "c", "d"]]),
        ({"a", "c", "d", "f"}, 10, [["a"], ["c", "d"], ["f"]]),
        ({"a", "b", "c", "d", "e"}, 2, [["a", "b"], ["c", "d"], ["e"]]),
        (set(), 2, []),
    ],
)
def test_contiguous_batches(selected: set[str], max_size: int, expected: list[list[str]]) -> None:
    assert contiguous_batches(list("abcdef"), selected, max_size) == expected


def test_batch_key_is_deterministic_and_version_sensitive() -> None:
    assert batch_key([("a", "1"), ("b", "2")]) == batch_key([("b", "2"), ("a", "1")])
    assert batch_key([("a", "1")]) != batch_key([("a", "2")])


def test_listing_is_paginated_and_keeps_odd_keys(s3_client, bucket: str) -> None:
    keys = [f"p/{i:04}.jpg" for i in range(1005)] + ["p/tab\there.jpg", "p/new\nline.jpg"]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="elsewhere.jpg", Body=b"x")
    listed = list(list_objects(s3_client, bucket, "p/"))
    assert sorted(o.key for o in listed) == sorted(keys)
    assert all(o.etag and '"' not in o.etag and o.size == 1 for o in listed)


def test_fetch_reports_missing_and_oversize_objects(s3_client, bucket: str) -> None:
    s3_client.put_object(Bucket=bucket, Key="big.jpg", Body=b"x" * 2000)
    s3_client.put_object(Bucket=bucket, Key="small.jpg", Body=b"abc")
    small = fetch_object(s3_client, bucket, "small.jpg", max_bytes=1000)
    assert (small.data, small.size, small.error) == (b"abc", 3, None)
    big = fetch_object(s3_client, bucket, "big.jpg", max_bytes=1000)
    assert big.data is None and big.size == 2000
    assert "2,000 bytes, above the limit of 1,000" in (big.error or "")
    assert fetch_object(s3_client, bucket, "missing.jpg", max_bytes=1000).deleted


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-27T15:30:11.000Z",  # ListObjectsV2
        "2026-11-27T15:30:11Z",
        "2026-11-27T15:30:11.123456+02:00",
        "Fri, 27 Nov 2026 15:09:44 GMT",  # Last-Modified header
        "Fri, 27 Nov 2026 15:09:44 -0000",
        "1700000000",
    ],
)
def test_fast_timestamps_equal_botocores(value: str) -> None:
    from botocore.utils import parse_timestamp as botocore_parse_timestamp

    parsed = parse_timestamp(value)
    assert parsed == botocore_parse_timestamp(value)
    assert parsed.tzinfo is not None


def test_the_bucket_client_parses_timestamps_without_dateutil(
    s3_client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_assets.resources import ImageBucket

    def dateutil_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("botocore's dateutil parser was used")

    s3_client.put_object(Bucket=bucket, Key="t/a.jpg", Body=b"x")
    monkeypatch.setattr("dateutil.parser.parse", dateutil_parse)
    resource = ImageBucket(
        bucket=bucket,
        prefix="t/",
        endpoint_url=s3_client.meta.endpoint_url,
        region_name="us-east-1",
    )
    [listed] = resource.list_objects()
    fetched = fetch_object(resource.get_client(), bucket, "t/a.jpg", 10)
    assert listed.last_modified.tzinfo is not None
    assert abs(listed.last_modified - fetched.last_modified) < dt.timedelta(seconds=1)
