"""S3 event notifications as S3 writes them, for the tests that feed a queue."""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from typing import Any

from ai_assets_tests.fakes.sqs_server import FakeSqs

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def s3_event(
    key: str,
    name: str = "ObjectCreated:Put",
    *,
    etag: str = "e1",
    at: dt.datetime = NOW,
    sequencer: str = "",
    bucket: str = "images",
    size: int = 3,
    version: str | None = None,
) -> dict[str, Any]:
    """One record as S3 writes it: the key URL-encoded with ``+`` for spaces."""
    obj: dict[str, Any] = {"key": urllib.parse.quote_plus(key), "sequencer": sequencer}
    if version is not None:
        obj["versionId"] = version
    if name.startswith("ObjectCreated"):
        obj |= {"size": size, "eTag": etag}
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": name,
        "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": obj},
    }


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def send(sqs: FakeSqs, bucket: str, *records: dict[str, Any]) -> None:
    """One message per record, as S3 sends them."""
    sqs.send(
        "image-events",
        [body(record | {"s3": record["s3"] | {"bucket": {"name": bucket}}}) for record in records],
    )
