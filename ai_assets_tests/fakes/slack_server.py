"""A tiny Slack Web API on 127.0.0.1: chat.postMessage and auth.test, with scripted failures."""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from ai_assets_tests.support.util import send_json, serve

OK = (200, {}, None)
RATE_LIMITED = (429, {"Retry-After": "1"}, {"ok": False, "error": "ratelimited"})
SERVER_ERROR = (500, {}, None)
INVALID_AUTH = (200, {}, {"ok": False, "error": "invalid_auth"})
CHANNEL_NOT_FOUND = (200, {}, {"ok": False, "error": "channel_not_found"})


class FakeSlack:
    """Records every request; answers from ``script`` first, then ``default``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: collections.deque[tuple[int, dict[str, str], dict | None]] = (
            collections.deque()
        )
        self.default = OK
        self.url = ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Bodies of chat.postMessage requests that were answered ok."""
        return [r["body"] for r in self.requests if r["method"] == "chat.postMessage" and r["ok"]]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        slack = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                body = json.loads(raw) if "json" in (self.headers["Content-Type"] or "") else raw
                method = self.path.rsplit("/", 1)[-1]
                status, headers, payload = slack.script.popleft() if slack.script else slack.default
                if payload is None and status == 200:
                    payload = {"ok": True, "channel": "C123", "ts": f"{len(slack.requests)}.000"}
                slack.requests.append(
                    {
                        "method": method,
                        "authorization": self.headers.get("Authorization"),
                        "body": body,
                        "status": status,
                        "ok": bool(payload and payload.get("ok")),
                    }
                )
                send_json(
                    self, status, payload or {"ok": False, "error": "internal_error"}, headers
                )

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def fake_slack() -> Iterator[FakeSlack]:
    slack = FakeSlack()
    with serve(slack.handler()) as url:
        slack.url = f"{url}/api/"
        yield slack
