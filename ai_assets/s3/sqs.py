"""S3 event notifications from an SQS queue: drain them, decode them, delete them once recorded.

Pure logic over a boto3 SQS client; nothing here knows about Dagster. S3 delivers each event at
least once, possibly late and out of order, so an event is a claim about one object version
that the inventory accepts only when it is later than what it already holds (:func:`is_later`).
Messages are deleted only after that decision is committed; a crash in between re-delivers
them, and a re-delivered event is a duplicate that changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ai_assets.common import chunked
from ai_assets.s3.events import ObjectEvent, latest
from ai_assets.s3.keys import is_image_key
from ai_assets.s3.objects import S3Object, normalize_etag, parse_timestamp

#: Messages per ReceiveMessage / DeleteMessageBatch call (SQS's maximum).
SQS_BATCH = 10
#: Long-poll wait of each receive: an empty queue costs a tick this much, a busy one nothing.
WAIT_SECONDS = 1
#: Seconds a received message stays hidden; a tick that crashes sees it again after this.
VISIBILITY_SECONDS = 120
_CREATED = ("ObjectCreated:",)
_REMOVED = ("ObjectRemoved:", "LifecycleExpiration:")
_EXCERPT = 120


@dataclasses.dataclass
class Drained:
    """What one drain received: the latest event per key and what to delete once recorded."""

    events: dict[str, ObjectEvent] = dataclasses.field(default_factory=dict)
    handles: list[str] = dataclasses.field(default_factory=list)
    messages: int = 0
    records: int = 0
    test_events: int = 0
    other_events: int = 0  # tagging, ACLs, restores, other buckets or prefixes: nothing to do
    skipped: list[str] = dataclasses.field(default_factory=list)  # non-image keys
    malformed: list[str] = dataclasses.field(default_factory=list)  # why, per message
    error: str | None = None  # the SQS error that ended the drain early

    def add(self, event: ObjectEvent) -> None:
        earlier = self.events.get(event.key)
        self.events[event.key] = event if earlier is None else latest(earlier, event)


def _records(body: str) -> list[dict[str, Any]] | None:
    """The S3 records of a message body (also through SNS); None for S3's test event."""
    message = json.loads(body)
    if isinstance(message, dict) and message.get("Type") == "Notification":
        message = json.loads(message["Message"])  # S3 → SNS → SQS fan-out
    if not isinstance(message, dict):
        raise ValueError("the body is not a JSON object")
    if message.get("Event") == "s3:TestEvent":
        return None
    records = message["Records"]
    if not isinstance(records, list):
        raise ValueError("Records is not a list")
    return records


def decode_key(raw: str) -> str:
    """An event's object key as S3 stores it: events URL-encode keys, with ``+`` for spaces."""
    return urllib.parse.unquote_plus(raw, errors="strict")


def parse_record(record: dict[str, Any]) -> tuple[str, ObjectEvent | None]:
    """The bucket and event of one record; no event for types that change no object."""
    name = record["eventName"]
    s3 = record["s3"]
    bucket = s3["bucket"]["name"]
    removed = name.startswith(_REMOVED)
    if not removed and not name.startswith(_CREATED):
        return bucket, None
    obj = s3["object"]
    size = obj.get("size")
    version = obj.get("versionId") or "null"  # "null": an unversioned (or suspended) bucket's
    return bucket, ObjectEvent(
        key=decode_key(obj["key"]),
        removed=removed,
        time=parse_timestamp(record["eventTime"]),
        etag=normalize_etag(obj.get("eTag") or ""),
        size=None if removed or size is None else int(size),
        sequencer=obj.get("sequencer") or "",
        one_version=removed and name.endswith(":Delete") and version != "null",
    )


def settle_version_removals(
    drained: Drained, head: Callable[[str], S3Object | None], workers: int
) -> int:
    """Replace each removal of one version by what its key holds now; return how many.

    In a versioned bucket, permanently deleting a version that is not the key's current one
    changes nothing, and deleting the current one brings the previous version back: only HEAD
    knows which. The key is removed only when HEAD finds no current version.
    """
    removals = [event for event in drained.events.values() if event.one_version]
    if not removals:
        return 0
    with ThreadPoolExecutor(min(workers, len(removals))) as pool:
        found = list(pool.map(head, (event.key for event in removals)))
    for event, current in zip(removals, found, strict=True):
        settled = dataclasses.replace(event, one_version=False)
        if current is not None:
            settled = dataclasses.replace(
                settled,
                removed=False,
                etag=current.etag,
                size=current.size,
                last_modified=current.last_modified,
            )
        drained.events[event.key] = settled
    return len(removals)


def read_message(drained: Drained, message: dict[str, Any], bucket: str, prefix: str) -> None:
    """Fold one SQS message into ``drained``; a malformed one is noted, never raised."""
    drained.messages += 1
    drained.handles.append(message["ReceiptHandle"])
    body = message.get("Body", "")
    try:
        records = _records(body)
        if records is None:
            drained.test_events += 1
            return
        parsed = [parse_record(record) for record in records]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        excerpt = body[:_EXCERPT] + ("…" if len(body) > _EXCERPT else "")
        drained.malformed.append(
            f"message {message.get('MessageId', '?')}: {type(exc).__name__}: {exc} ({excerpt!r})"
        )
        return
    for event_bucket, event in parsed:
        drained.records += 1
        if event is None or event_bucket != bucket or not event.key.startswith(prefix):
            drained.other_events += 1
        elif not is_image_key(event.key):
            drained.skipped.append(event.key)
        else:
            drained.add(event)


def drain(
    client: Any,
    queue_url: str,
    *,
    bucket: str,
    prefix: str,
    max_messages: int,
    seconds: float,
    receivers: int,
    reserve: float = 0.0,
    wait_seconds: int = WAIT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Drained:
    """Receive until the queue looks empty, ``max_messages`` or ``seconds`` pass.

    ``reserve`` seconds per message received are kept back from ``seconds`` for committing
    and deleting them. ``receivers`` threads long-poll in parallel. An SQS error (after
    botocore's retries) ends the drain with ``error`` set; what was received is returned.
    """
    deadline = clock() + seconds
    drained = Drained()
    lock = threading.Lock()
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set() and clock() + reserve * drained.messages < deadline:
            try:
                response = client.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=SQS_BATCH,
                    WaitTimeSeconds=wait_seconds,
                    VisibilityTimeout=VISIBILITY_SECONDS,
                )
            except (BotoCoreError, ClientError) as exc:
                with lock:
                    drained.error = drained.error or f"{type(exc).__name__}: {exc}"
                stop.set()
                return
            messages = response.get("Messages", [])
            with lock:
                for message in messages:
                    read_message(drained, message, bucket, prefix)
                if not messages or drained.messages >= max_messages:
                    stop.set()

    with ThreadPoolExecutor(receivers, thread_name_prefix="sqs-receive") as pool:
        for future in [pool.submit(receive) for _ in range(receivers)]:
            future.result()
    return drained


def delete(client: Any, queue_url: str, handles: Sequence[str], workers: int) -> list[str]:
    """Delete received messages, ten per call; returns why any could not be deleted.

    A message left behind comes back after its visibility timeout as a duplicate: harmless.
    """
    chunks = list(chunked(handles, SQS_BATCH))

    def delete_chunk(chunk: Sequence[str]) -> list[str]:
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
        try:
            response = client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            return [f"{type(exc).__name__}: {exc}"] * len(chunk)
        return [f"{f.get('Code')}: {f.get('Message')}" for f in response.get("Failed", [])]

    if not chunks:
        return []
    with ThreadPoolExecutor(min(workers, len(chunks)), thread_name_prefix="sqs-delete") as pool:
        return [problem for problems in pool.map(delete_chunk, chunks) for problem in problems]
