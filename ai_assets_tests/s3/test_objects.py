"""S3 access on a real S3 server (SeaweedFS): bounded slices, fetches, fast timestamps."""

import dataclasses
import datetime as dt
import itertools

import pytest

from ai_assets.s3.objects import (
    FetchError,
    fetch_object,
    list_slice,
    obstore_can_fetch,
    parse_timestamp,
)


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
    piece = list_slice(s3_client, bucket, "p/", "", max_objects=10_000, seconds=60)
    listed = piece.objects
    assert piece.complete and piece.pages == 2
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
    [listed] = resource.list_slice("", max_objects=10, seconds=10, page_size=1000).objects
    fetched = fetch_object(resource.get_client(), bucket, "t/a.jpg", 10)
    assert listed.last_modified.tzinfo is not None
    assert abs(listed.last_modified - fetched.last_modified) < dt.timedelta(seconds=1)


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        ("a/b.jpg", True),
        ("keys/🐱 cat.jpg", True),
        ("keys/100%25 real.jpg", True),
        ("a/.hidden.jpg", True),
        ("keys/....jpg", True),
        ("/leading.jpg", False),
        ("trailing.jpg/", False),
        ("a//b.jpg", False),
        ("a/./b.jpg", False),
        ("a/../b.jpg", False),
        ("new\nline.jpg", False),
        ("c1\x85control.jpg", False),
    ],
)
def test_keys_object_store_would_rewrite_are_recognised(key: str, kept: bool) -> None:
    assert obstore_can_fetch(key) is kept


def test_every_control_character_and_only_those_is_refused() -> None:
    """Unicode's category Cc, all of it in the first 256 code points, and nothing else."""
    import unicodedata

    for code in range(0x3000):
        control = unicodedata.category(chr(code)) == "Cc"
        assert obstore_can_fetch(f"a{chr(code)}b.jpg") is not control, hex(code)


def test_the_fetcher_reads_through_obstore_exactly_as_boto3_does(s3_client, bucket: str) -> None:
    from ai_assets.resources import ImageBucketResource

    keys = ["f/a.jpg", "f/кошка 🐱.jpg", "f/100%25.jpg", "f/tab\there.jpg", "f/big.jpg"]
    for key in keys:
        body = key.encode() * (300 if "big" in key else 1)
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    resource = ImageBucketResource(bucket=bucket, endpoint_url=s3_client.meta.endpoint_url)
    fetcher = resource.get_fetcher(max_bytes=1000)
    assert fetcher.store is not None  # SeaweedFS over http with the environment's keys
    for key in [*keys, "f/missing.jpg"]:
        fast, slow = fetcher(key), fetch_object(s3_client, bucket, key, max_bytes=1000)
        assert dataclasses.replace(fast, last_modified=None) == dataclasses.replace(
            slow, last_modified=None
        )
        if not fast.deleted:
            assert fast.last_modified == slow.last_modified
    assert fetcher("f/a.jpg").data == b"f/a.jpg"
    assert "above the limit of 1,000" in (fetcher("f/big.jpg").error or "")


def test_a_failed_get_names_the_object_and_the_retries_it_had(bucket: str) -> None:
    from ai_assets.resources import ImageBucketResource

    resource = ImageBucketResource(bucket=bucket, endpoint_url="http://127.0.0.1:9", max_attempts=3)
    with pytest.raises(FetchError, match=rf"GET s3://{bucket}/x.jpg failed: .*after 2 retries"):
        resource.get_fetcher(max_bytes=1000)("x.jpg")


def test_obstore_gets_use_boto3s_credential_chain(
    s3_env, s3_client, bucket: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A profile in a shared credentials file: boto3's chain reads it, as it reads web identity."""
    from ai_assets.resources import ImageBucketResource

    keys = s3_env["AWS_ACCESS_KEY_ID"], s3_env["AWS_SECRET_ACCESS_KEY"]

    s3_client.put_object(Bucket=bucket, Key="p/a.jpg", Body=b"by profile")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[reader]\naws_access_key_id = {}\naws_secret_access_key = {}\n".format(*keys)
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    resource = ImageBucketResource(
        bucket=bucket, endpoint_url=s3_client.meta.endpoint_url, profile_name="reader"
    )
    fetcher = resource.get_fetcher(max_bytes=1000)
    assert fetcher.store is not None
    assert fetcher("p/a.jpg").data == b"by profile"


def test_a_missing_bucket_is_an_error_not_a_deleted_object(s3_client, bucket: str) -> None:
    from botocore.exceptions import ClientError

    from ai_assets.resources import ImageBucketResource

    resource = ImageBucketResource(
        bucket="no-such-bucket", endpoint_url=s3_client.meta.endpoint_url
    )
    fetcher = resource.get_fetcher(max_bytes=1000)
    assert fetcher.store is not None
    with pytest.raises(ClientError, match="NoSuchBucket"):
        fetcher("a.jpg")
    assert (
        ImageBucketResource(bucket=bucket, endpoint_url=s3_client.meta.endpoint_url)
        .get_fetcher(max_bytes=1000)("missing.jpg")
        .deleted
    )
