"""S3 access on a real S3 server (SeaweedFS): bounded slices, fetches, fast timestamps."""

import datetime as dt
import itertools

import pytest

from ai_assets.store import fetch_object, list_objects, list_slice, parse_timestamp


def test_slices_resume_after_the_last_key_and_end_with_the_listing(s3_client, bucket: str) -> None:
    keys = [*sorted(f"p/{i:02}.jpg" for i in range(9)), "p/z\nnewline.jpg"]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="q/outside.jpg", Body=b"x")
    slices, after = [], ""
    while True:
        piece = list_slice(s3_client, bucket, "p/", after, max_objects=4, seconds=60, page_size=3)
        slices.append(piece)
        if piece.complete:
            break
        after = piece.last or ""
    assert [len(piece.objects) for piece in slices] == [6, 4]  # whole pages: 3 + 3, then the rest
    assert [o.key for piece in slices for o in piece.objects] == keys
    assert slices[0].last == keys[5] and slices[1].after == keys[5]
    assert [piece.pages for piece in slices] == [2, 2]


def test_a_slice_lists_at_least_one_page_whatever_its_time_budget(s3_client, bucket: str) -> None:
    for i in range(5):
        s3_client.put_object(Bucket=bucket, Key=f"k{i}.jpg", Body=b"x")
    ticks = itertools.count(0, 100)  # every clock read is 100 s later
    piece = list_slice(
        s3_client,
        bucket,
        "",
        "",
        max_objects=100,
        seconds=1,
        page_size=2,
        clock=lambda: next(ticks),
    )
    assert [o.key for o in piece.objects] == ["k0.jpg", "k1.jpg"]
    assert piece.last == "k1.jpg" and not piece.complete


def test_a_slice_keeps_back_time_for_committing_what_it_listed(s3_client, bucket: str) -> None:
    """The clock stands still: only the reserve for the objects listed ends the slice."""
    for i in range(9):
        s3_client.put_object(Bucket=bucket, Key=f"k{i}.jpg", Body=b"x")

    def listed(reserve: float) -> int:
        piece = list_slice(
            s3_client, bucket, "", "", max_objects=100, seconds=10, page_size=2,
            reserve=reserve, clock=lambda: 0.0,
        )  # fmt: skip
        return len(piece.objects)

    assert listed(0.0) == 9  # no reserve: the whole listing
    assert listed(2.0) == 6  # 6 objects × 2 s reach the 10 s budget: the page that crossed it
    assert listed(100.0) == 2  # at least one page


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
    from ai_assets.resources import ImageBucketResource

    def dateutil_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("botocore's dateutil parser was used")

    s3_client.put_object(Bucket=bucket, Key="t/a.jpg", Body=b"x")
    monkeypatch.setattr("dateutil.parser.parse", dateutil_parse)
    resource = ImageBucketResource(
        bucket=bucket,
        prefix="t/",
        endpoint_url=s3_client.meta.endpoint_url,
        region_name="us-east-1",
    )
    [listed] = resource.list_objects()
    fetched = fetch_object(resource.get_client(), bucket, "t/a.jpg", 10)
    assert listed.last_modified.tzinfo is not None
    assert abs(listed.last_modified - fetched.last_modified) < dt.timedelta(seconds=1)
