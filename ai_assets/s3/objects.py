"""S3 access: list a prefix in bounded, resumable slices; fetch one object.

Pure logic over a boto3 S3 client (and obstore's for GETs); nothing here knows about Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import re
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp as botocore_parse_timestamp

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


@dataclasses.dataclass(frozen=True)
class S3Object:
    """One object version as a listing reports it."""

    key: str
    etag: str
    size: int
    last_modified: dt.datetime


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The outcome of reading one object: bytes, or why there are none."""

    key: str
    etag: str | None = None
    size: int | None = None
    last_modified: dt.datetime | None = None
    data: bytes | None = None
    error: str | None = None
    deleted: bool = False


def parse_timestamp(value: str) -> dt.datetime:
    """botocore's timestamp parser without dateutil: ~50× faster, same aware datetimes.

    S3 sends ISO 8601 in listings and RFC 1123 in headers; dateutil's generic parser made
    up over half the CPU of listing a bucket. Anything unusual goes to botocore's parser.
    """
    parsed: dt.datetime | None = None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        with contextlib.suppress(TypeError, ValueError, IndexError):
            parsed = email.utils.parsedate_to_datetime(value)
    if parsed is None or parsed.tzinfo is None:
        return botocore_parse_timestamp(value)
    return parsed


def normalize_etag(etag: str) -> str:
    return etag.strip('"')


def _objects(page: dict[str, Any]) -> list[S3Object]:
    return [
        S3Object(
            key=item["Key"],
            etag=normalize_etag(item["ETag"]),
            size=int(item["Size"]),
            last_modified=item["LastModified"],
        )
        for item in page.get("Contents", ())
    ]


@dataclasses.dataclass(frozen=True)
class Slice:
    """One bounded stretch of a listing: every key in ``(after, last]`` under the prefix.

    ``last`` is None when the listing reached the end of the prefix (``complete``).
    """

    objects: list[S3Object]
    after: str
    last: str | None
    pages: int

    @property
    def complete(self) -> bool:
        return self.last is None


def list_slice(
    client: Any,
    bucket: str,
    prefix: str,
    after: str,
    *,
    max_objects: int,
    seconds: float,
    page_size: int = 1000,
    reserve: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> Slice:
    """List keys after ``after`` until the listing ends, ``max_objects`` or ``seconds`` pass.

    ``reserve`` seconds per listed object are kept back from ``seconds`` for what the caller
    does with them afterwards (diff and upsert), so the whole tick fits its budget. At least
    one page is listed, so every call makes progress. The next slice starts after this one's
    ``last`` key; a complete slice means the next one starts a new pass.
    """
    deadline = clock() + seconds
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if after:
        request["StartAfter"] = after
    objects: list[S3Object] = []
    pages = 0
    while True:
        page = client.list_objects_v2(**request)
        pages += 1
        objects.extend(_objects(page))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return Slice(objects, after, None, pages)
        if len(objects) >= max_objects or clock() + reserve * len(objects) >= deadline:
            return Slice(objects, after, objects[-1].key if objects else after, pages)
        request["ContinuationToken"] = token


def head_object(client: Any, bucket: str, key: str) -> S3Object | None:
    """The key's current version (HEAD), or None when it has none (gone, or a delete marker)."""
    try:
        response = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
            return None
        raise
    return S3Object(
        key=key,
        etag=normalize_etag(response.get("ETag", "")),
        size=int(response.get("ContentLength", 0)),
        last_modified=response["LastModified"],
    )


def fetch_object(client: Any, bucket: str, key: str, max_bytes: int) -> Fetched:
    """GET one object; a missing object is ``deleted``, an oversize one is refused unread.

    Other S3 errors propagate (after botocore's own retries) so the run fails clearly.
    """
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
            return Fetched(key=key, deleted=True, last_modified=dt.datetime.now(dt.UTC))
        raise
    body = response["Body"]
    version = {
        "etag": normalize_etag(response.get("ETag", "")),
        "size": int(response.get("ContentLength", 0)),
        "last_modified": response.get("LastModified"),
    }
    if version["size"] > max_bytes:
        body.close()
        return Fetched(key=key, error=_too_large(version["size"], max_bytes), **version)
    with body:
        return Fetched(key=key, data=body.read(), **version)


class FetchError(RuntimeError):
    """An S3 GET that failed after its retries (the cause has obstore's full report)."""


#: Unicode's control characters (category Cc), which object_store refuses in a path.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def obstore_can_fetch(key: str) -> bool:
    """Whether object_store keeps ``key`` as it is: it refuses control characters, empty, ``.``
    and ``..`` segments, and drops a leading or trailing ``/``, which S3 keeps."""
    if key.startswith("/") or key.endswith("/"):
        return False
    if _CONTROL.search(key):
        return False
    return all(segment not in ("", ".", "..") for segment in key.split("/"))


class ObjectFetcher:
    """GETs one object at a time, through obstore (Rust, off the GIL) when given its store.

    With boto3's GETs a run spent 3.35 ms of CPU per image on two cores, with obstore's 1.89
    (bench/feed.py, side by side, model excluded); the boto3 client stays for the keys
    object_store would rewrite. Both honour the same settings:
    the store is built from the boto3 client's endpoint, region, credentials and retries.
    """

    def __init__(self, client: Any, bucket: str, max_bytes: int, store: Any = None) -> None:
        self.client = client
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.store = store

    def __call__(self, key: str) -> Fetched:
        if self.store is None or not obstore_can_fetch(key):
            return fetch_object(self.client, self.bucket, key, self.max_bytes)
        import obstore

        try:
            result = obstore.get(self.store, key)
        except FileNotFoundError as exc:
            if "<Code>NoSuchKey</Code>" in str(exc):
                return Fetched(key=key, deleted=True, last_modified=dt.datetime.now(dt.UTC))
            # a 404 that is not about the key (NoSuchBucket, a proxy's own page): boto3 tells
            return fetch_object(self.client, self.bucket, key, self.max_bytes)
        except obstore.exceptions.BaseError as exc:  # after obstore's retries: fail the run
            summary = str(exc).split("\n\nDebug source:")[0].strip()
            raise FetchError(f"GET s3://{self.bucket}/{key} failed: {summary}") from exc
        meta = result.meta
        if meta["path"] != key:  # a rewrite obstore_can_fetch did not foresee: never misread
            return fetch_object(self.client, self.bucket, key, self.max_bytes)
        version = {
            "etag": normalize_etag(meta.get("e_tag") or ""),
            "size": int(meta["size"]),
            "last_modified": meta["last_modified"],
        }
        if version["size"] > self.max_bytes:
            return Fetched(key=key, error=_too_large(version["size"], self.max_bytes), **version)
        return Fetched(key=key, data=bytes(result.bytes()), **version)


def _too_large(size: int, max_bytes: int) -> str:
    return f"object is {size:,} bytes, above the limit of {max_bytes:,} (AI_ASSETS_MAX_IMAGE_BYTES)"
