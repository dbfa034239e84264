"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 server (SeaweedFS).

Each rule matches requests (method and a path fragment) and fires a bounded number of times:
answer 503 SlowDown or 500 InternalError, reset the connection, or delay the response.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from ai_assets_tests.support.util import serve

_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


@dataclasses.dataclass
class Rule:
    action: str  # "503" | "500" | "reset" | "delay"
    method: str = "GET"
    path_contains: str = ""
    times: int = 1  # how many matching requests it hits; -1 = forever
    delay_s: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times != 0
            and method == self.method
            and self.path_contains in urllib.parse.unquote(path)
        )


class FaultyS3:
    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rules: list[Rule] = []
        self.faults_injected = 0
        self.requests = 0
        self.lock = threading.Lock()
        self.url = ""

    def add(self, rule: Rule) -> None:
        with self.lock:
            self.rules.append(rule)

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _take(self, method: str, path: str) -> Rule | None:
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path):
                    if rule.times > 0:
                        rule.times -= 1
                    self.faults_injected += 1
                    return rule
        return None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._take(self.command, self.path)
                if rule and rule.action == "reset":
                    linger = struct.pack("ii", 1, 0)  # RST instead of FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                if rule and rule.action in ("500", "503"):
                    code, message = _ERRORS[int(rule.action)]
                    payload = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>"
                    ).encode()
                    self._reply(int(rule.action), {"Content-Type": "application/xml"}, payload)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                    response = upstream.getresponse()
                    data = response.read()
                    headers = {
                        k: v for k, v in response.getheaders() if k.lower() != "transfer-encoding"
                    }
                finally:
                    upstream.close()
                if rule and rule.action == "delay":
                    time.sleep(rule.delay_s)  # the object was read; the answer is late
                headers["Content-Length"] = str(len(data))
                self._reply(response.status, headers, data, head=self.command == "HEAD")

            def _reply(self, status: int, headers: dict[str, str], data: bytes, head=False) -> None:
                # a client that gave up on a delayed answer has hung up: nothing to tell it
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    for name, value in headers.items():
                        if name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def faulty_s3(upstream: str) -> Iterator[FaultyS3]:
    proxy = FaultyS3(upstream)
    with serve(proxy.handler()) as url:
        proxy.url = url
        yield proxy
