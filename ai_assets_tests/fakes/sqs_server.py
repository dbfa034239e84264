"""A small SQS server on 127.0.0.1 speaking the JSON wire protocol boto3 uses, with faults.

moto's server is the real peer for S3 → SQS notifications, but its queue scans every message
on each call (~24 messages/s at 2,000 queued here), too slow for bursts of 10,000 events or
a drain benchmark. This one keeps standard-queue semantics that matter to a consumer: at-least-
once delivery, visibility timeouts and re-delivery, long polling, batch calls, receipt handles
that change on each receive, and scripted errors (throttling, 5xx, missing queue, no access).

Run it in its own process for benchmarks: ``python -m ai_assets_tests.fakes.sqs_server
[--latency-ms N]`` prints its URL and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from ai_assets_tests.support.util import send_json, serve

ACCOUNT = "123456789012"
THROTTLED = (400, "RequestThrottled", "Rate exceeded")
UNAVAILABLE = (503, "ServiceUnavailable", "Service is unavailable")
NO_QUEUE = (400, "QueueDoesNotExist", "The specified queue does not exist.")
ACCESS_DENIED = (403, "AccessDeniedException", "not authorized to perform: sqs:ReceiveMessage")


@dataclasses.dataclass
class _Message:
    id: str
    body: str
    receives: int = 0
    handle: str = ""


class _Queue:
    def __init__(self) -> None:
        self.visible: collections.deque[_Message] = collections.deque()
        self.hidden: list[tuple[float, int, _Message]] = []  # (visible again at, seq, message)
        self.by_handle: dict[str, _Message] = {}
        self.deleted: set[str] = set()
        self.seq = itertools.count()

    def restore(self, now: float) -> None:
        while self.hidden and self.hidden[0][0] <= now:
            _, _, message = heapq.heappop(self.hidden)
            if message.id not in self.deleted:
                self.by_handle.pop(message.handle, None)
                self.visible.append(message)


class FakeSqs:
    """Standard queues by name; ``faults`` answers the next calls of an action with errors."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.faults: dict[str, collections.deque[tuple[int, str, str]]] = collections.defaultdict(
            collections.deque
        )
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Condition()
        self.url = ""
        self.latency = 0.0  # seconds added to every call, as a network round trip to SQS would

    def queue_url(self, name: str) -> str:
        return f"{self.url}/{ACCOUNT}/{name}"

    def create_queue(self, name: str) -> str:
        with self.lock:
            self.queues.setdefault(name, _Queue())
        return self.queue_url(name)

    def depth(self, name: str) -> int:
        """Messages not yet deleted, visible or in flight."""
        with self.lock:
            queue = self.queues[name]
            return len(queue.visible) + len(queue.by_handle)

    def send(self, name: str, bodies: list[str]) -> None:
        with self.lock:
            queue = self.queues[name]
            queue.visible.extend(_Message(str(uuid.uuid4()), body) for body in bodies)
            self.lock.notify_all()

    # the actions, each taking the request body and returning the response body
    def _queue(self, request: dict[str, Any]) -> _Queue:
        name = str(request.get("QueueUrl", request.get("QueueName", ""))).rsplit("/", 1)[-1]
        if name not in self.queues:
            raise _Error(*NO_QUEUE)
        return self.queues[name]

    def CreateQueue(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"QueueUrl": self.create_queue(request["QueueName"])}

    def GetQueueUrl(self, request: dict[str, Any]) -> dict[str, Any]:
        self._queue(request)
        return {"QueueUrl": self.queue_url(request["QueueName"])}

    def GetQueueAttributes(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(request)
        queue.restore(time.monotonic())
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(len(queue.visible)),
                "ApproximateNumberOfMessagesNotVisible": str(len(queue.by_handle)),
            }
        }

    def SendMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        self._queue(request)
        self.send(request["QueueUrl"].rsplit("/", 1)[-1], [request["MessageBody"]])
        return {"MessageId": str(uuid.uuid4()), "MD5OfMessageBody": _md5(request["MessageBody"])}

    def SendMessageBatch(self, request: dict[str, Any]) -> dict[str, Any]:
        self._queue(request)
        entries = request["Entries"]
        self.send(request["QueueUrl"].rsplit("/", 1)[-1], [e["MessageBody"] for e in entries])
        return {
            "Successful": [
                {
                    "Id": e["Id"],
                    "MessageId": str(uuid.uuid4()),
                    "MD5OfMessageBody": _md5(e["MessageBody"]),
                }
                for e in entries
            ],
            "Failed": [],
        }

    def ReceiveMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(request)
        count = int(request.get("MaxNumberOfMessages", 1))
        visibility = float(request.get("VisibilityTimeout", 30))
        deadline = time.monotonic() + float(request.get("WaitTimeSeconds", 0))
        while True:
            now = time.monotonic()
            queue.restore(now)
            if queue.visible or now >= deadline:
                break
            self.lock.wait(min(0.05, deadline - now))
        messages = []
        while queue.visible and len(messages) < count:
            message = queue.visible.popleft()
            message.receives += 1
            message.handle = f"{message.id}#{message.receives}#{uuid.uuid4().hex}"
            queue.by_handle[message.handle] = message
            heapq.heappush(queue.hidden, (now + visibility, next(queue.seq), message))
            messages.append(
                {
                    "MessageId": message.id,
                    "ReceiptHandle": message.handle,
                    "MD5OfBody": _md5(message.body),
                    "Body": message.body,
                }
            )
        return {"Messages": messages} if messages else {}

    def _delete(self, queue: _Queue, handle: str) -> bool:
        message = queue.by_handle.pop(handle, None)
        if message is None:
            return False  # an old handle: SQS may not delete the message then
        queue.deleted.add(message.id)
        return True

    def DeleteMessage(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self._delete(self._queue(request), request["ReceiptHandle"]):
            raise _Error(400, "ReceiptHandleIsInvalid", "The receipt handle has expired.")
        return {}

    def DeleteMessageBatch(self, request: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(request)
        done, failed = [], []
        for entry in request["Entries"]:
            if self._delete(queue, entry["ReceiptHandle"]):
                done.append({"Id": entry["Id"]})
            else:
                failed.append(
                    {
                        "Id": entry["Id"],
                        "SenderFault": True,
                        "Code": "ReceiptHandleIsInvalid",
                        "Message": "The receipt handle has expired.",
                    }
                )
        return {"Successful": done, "Failed": failed}

    def handle(self, action: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.calls[action] += 1
            if self.faults[action]:
                status, code, message = self.faults[action].popleft()
                return status, _error_body(code, message)
            method = getattr(self, action, None)
            if method is None:
                return 400, _error_body("InvalidAction", f"{action} is not supported here")
            try:
                return 200, method(request)
            except _Error as exc:
                return exc.status, _error_body(exc.code, exc.message)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        sqs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                action = (self.headers.get("X-Amz-Target") or "").removeprefix("AmazonSQS.")
                if sqs.latency:
                    time.sleep(sqs.latency)
                status, body = sqs.handle(action, request)
                send_json(self, status, body, {"x-amzn-RequestId": str(uuid.uuid4())},
                          content_type="application/x-amz-json-1.0")  # fmt: skip

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"__type": f"com.amazonaws.sqs#{code}", "message": message}


def _md5(body: str) -> str:
    return hashlib.md5(body.encode()).hexdigest()


@contextlib.contextmanager
def fake_sqs() -> Iterator[FakeSqs]:
    sqs = FakeSqs()
    with serve(sqs.handler()) as url:
        sqs.url = url
        yield sqs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A local SQS server for benchmarks.")
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every call")
    with fake_sqs() as server:
        server.latency = parser.parse_args().latency_ms / 1000
        print(server.url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin
