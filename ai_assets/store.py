"""S3 access and the sensor's planning logic: list, fetch, diff a listing against what is known.

Pure logic over a boto3 S3 client; nothing here knows about Dagster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.utils
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from ai_assets.keys import is_image_key, object_key_for, partition_key_for

#: Data version recorded for an object that disappeared from the bucket.
DELETED = "deleted"
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


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[S3Object]:
    """Every object under ``prefix``, in key order (paginated ListObjectsV2)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            yield S3Object(
                key=item["Key"],
                etag=normalize_etag(item["ETag"]),
                size=int(item["Size"]),
                last_modified=item["LastModified"],
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
        return Fetched(
            key=key,
            error=f"object is {version['size']:,} bytes, above the limit of {max_bytes:,} "
            "(AI_ASSETS_MAX_IMAGE_BYTES)",
            **version,
        )
    with body:
        return Fetched(key=key, data=body.read(), **version)


@dataclasses.dataclass(frozen=True)
class Change:
    """An object version the sensor has not recorded yet (``etag == DELETED`` for deletions)."""

    partition_key: str
    object_key: str
    etag: str
    size: int | None = None
    last_modified: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one sensor tick does: record changes, add partitions, request runs."""

    changes: list[Change]
    partitions_to_add: list[str]
    skipped_keys: list[str]
    deferred: int  # changes left for the next tick because of the per-tick cap


def plan_changes(
    listing: Iterable[S3Object],
    prefix: str,
    known_versions: Mapping[str, str],
    existing_partitions: Iterable[str],
    max_changes: int,
) -> Plan:
    """Diff a full listing against the recorded version of every partition.

    ``known_versions`` maps partition key → last recorded ETag (or ``DELETED``). New and
    changed objects come first in key order, deletions after; at most ``max_changes``.
    """
    existing = set(existing_partitions)
    changes: list[Change] = []
    to_add: list[str] = []
    skipped: list[str] = []
    seen: set[str] = set()
    deferred = 0
    for obj in listing:
        if not is_image_key(obj.key):
            skipped.append(obj.key)
            continue
        partition = partition_key_for(obj.key, prefix)
        seen.add(partition)
        if known_versions.get(partition) == obj.etag:
            continue
        if len(changes) >= max_changes:
            deferred += 1
            continue
        changes.append(Change(partition, obj.key, obj.etag, obj.size, obj.last_modified))
        if partition not in existing:
            to_add.append(partition)
    for partition in sorted(set(known_versions) - seen):
        if known_versions[partition] == DELETED:
            continue
        if len(changes) >= max_changes:
            deferred += 1
            continue
        changes.append(Change(partition, object_key_for(partition, prefix), DELETED))
    return Plan(changes, to_add, skipped, deferred)


def contiguous_batches(
    partition_order: Sequence[str], selected: Iterable[str], max_size: int
) -> list[list[str]]:
    """Split ``selected`` into runs of neighbours in ``partition_order``, each ≤ ``max_size``.

    A Dagster partition range is contiguous in the dynamic partitions' order, so each batch
    can become one run with range tags.
    """
    wanted = set(selected)
    batches: list[list[str]] = []
    current: list[str] = []
    for partition in partition_order:
        if partition in wanted and len(current) < max_size:
            current.append(partition)
            continue
        if current:
            batches.append(current)
        current = [partition] if partition in wanted else []
    if current:
        batches.append(current)
    return batches


def batch_key(versions: Iterable[tuple[str, str]]) -> str:
    """A deterministic id for a batch of object versions (the run key; replay-safe)."""
    digest = hashlib.sha256()
    for partition, etag in sorted(versions):
        digest.update(f"{partition}\0{etag}\n".encode("utf-8", "surrogatepass"))
    return "batch-" + digest.hexdigest()[:24]
