"""Small helpers the tests share: the tables, the code location's environment, an HTTP fake."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from ai_assets.db import migrations, results

T = TypeVar("T")


def size(pixels: Any) -> tuple[int, int]:
    """(width, height) of decoded (H, W, 3) pixels, the order Pillow and image specs use."""
    return int(pixels.shape[1]), int(pixels.shape[0])


#: ImageNet's cat classes: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = frozenset(range(281, 286))

#: The keys of the tests' S3 server (SeaweedFS).
ACCESS_KEY = "ai-assets-test"
SECRET_KEY = "ai-assets-test-secret"


@contextlib.contextmanager
def database(db_url: str) -> Iterator[sa.Engine]:
    """An engine on ``db_url`` with the project's schema applied (as a resource would)."""
    engine = sa.create_engine(db_url)
    try:
        migrations.upgrade(engine)
        yield engine
    finally:
        engine.dispose()


def configure(
    monkeypatch: Any, bucket: str, database: str, model: str, prefix: str = "", **settings: str
) -> None:
    """Point the code location at a bucket, a database and a model, as its environment does."""
    monkeypatch.setenv("AI_ASSETS_S3_BUCKET", bucket)
    monkeypatch.setenv("AI_ASSETS_S3_PREFIX", prefix)
    monkeypatch.setenv("AI_ASSETS_DATABASE_URL", database)
    monkeypatch.setenv("AI_ASSETS_MODEL", model)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def rows_by_key(db_url: str) -> dict[str, dict[str, Any]]:
    """The current results table, keyed by S3 key."""
    engine = sa.create_engine(db_url)
    try:
        return {row["s3_key"]: row for row in results.fetch_rows(engine)}
    finally:
        engine.dispose()


def wait_for(what: str, probe: Callable[[], T], timeout: float = 180, every: float = 1) -> T:
    """``probe``'s first truthy answer, asked every ``every`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.3g} s waiting for {what}"
        time.sleep(every)
    return value


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (NAME=VALUE), in any process group:
    what a test's command started, and what those started in turn."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):  # gone meanwhile, or a zombie's
            if mark.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
    return found


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now (a server that is up)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    """Answer a local test server's request with a JSON body."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in {"Content-Type": content_type, **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL.

    Nagle's algorithm is off: with keep-alive, a response written as headers then body
    otherwise waits ~40 ms for the client's delayed ACK on every request.
    """
    fast = type(handler.__name__, (handler,), {"disable_nagle_algorithm": True})
    server = ThreadingHTTPServer(("127.0.0.1", 0), fast)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def inventory_rows(db: str) -> dict[str, dict[str, Any]]:
    """The inventory (image_objects), keyed by S3 key."""
    engine = sa.create_engine(db)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(results.image_objects)).all()
    engine.dispose()
    return {row.s3_key: dict(row._mapping) for row in rows}


#: The results table as v1 created it, before Alembic.
V1_DDL = """
CREATE TABLE image_classifications (
    s3_key TEXT PRIMARY KEY, partition_key TEXT NOT NULL, etag TEXT, size_bytes BIGINT,
    label TEXT, score FLOAT, top_k JSON, model_id TEXT, status TEXT NOT NULL, error TEXT,
    classified_at TIMESTAMP WITH TIME ZONE NOT NULL, run_id TEXT,
    CONSTRAINT status_valid CHECK (status IN ('ok', 'error', 'deleted'))
)
"""


def bucket_etags(client: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """Every object under ``prefix``, key → ETag without quotes, straight from boto3."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"].strip('"') for page in pages for o in page.get("Contents", ())}


MARCH_9 = dt.datetime(2026, 3, 9, 23, 59, tzinfo=dt.UTC)


def inventory_row(key: str, day: str = "2026-03-09", **changes) -> dict:
    return {
        "s3_key": key,
        "partition_key": day,
        "etag": "e1",
        "size_bytes": 1,
        "last_modified": MARCH_9,
        "first_seen": MARCH_9,
        "deleted_at": None,
        "batch_id": None,
    } | changes


def result_row(key: str, status: str = "ok", **changes: Any) -> results.ClassificationRow:
    """A results row of March 9th's ``key`` (etag e1, classified then), as a run writes it."""
    fields = {"etag": "e1", "score": 0.5 if status == "ok" else None, "classified_at": MARCH_9}
    return results.ClassificationRow(key, "2026-03-09", status, **(fields | changes))  # type: ignore[arg-type]
