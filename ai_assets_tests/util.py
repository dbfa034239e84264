"""Small helpers the tests share: read the results table, serve a local HTTP fake."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from ai_assets import migrations, table


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
        return {row["s3_key"]: row for row in table.fetch_rows(engine)}
    finally:
        engine.dispose()


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
