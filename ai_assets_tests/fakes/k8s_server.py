"""A tiny Kubernetes API on 127.0.0.1: the endpoints K8sRunLauncher and run monitoring use.

POST/GET/LIST/DELETE batch/v1 Jobs (and their status), LIST/DELETE pods. Posted bodies are
stored and echoed back, so the real ``kubernetes`` client deserialises a ``V1Job``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from ai_assets_tests.support.util import send_json, serve

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?$")


class FakeKubernetes:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.posted: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    def set_job_status(self, name: str, **status: Any) -> None:
        for (_, job_name), job in self.jobs.items():
            if job_name == name:
                job["status"] = status

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_Handler,), {"api": self})


class _Handler(BaseHTTPRequestHandler):
    """The API's routes, over the ``FakeKubernetes`` its subclass names (``handler``)."""

    api: FakeKubernetes

    def _send(self, status: int, body: dict[str, Any]) -> None:
        send_json(self, status, body)

    def _not_found(self, kind: str, name: str | None) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404,
                         "message": f'{kind} "{name}" not found'})  # fmt: skip

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        self.api.requests.append((method, url.path))
        query = parse_qs(url.query)
        if match := _JOBS.match(url.path):
            namespace, name, _ = match.groups()
            return self._jobs(method, namespace, name, query)
        if match := _PODS.match(url.path):
            namespace, name = match.groups()
            return self._pods(method, namespace, name, query)
        self._not_found("path", url.path)

    def _jobs(self, method: str, namespace: str, name: str | None, query) -> None:
        if method == "POST":
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.api.posted.append(body)
            job = json.loads(json.dumps(body))
            job["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            job["status"] = {"active": 1}
            self.api.jobs[(namespace, job["metadata"]["name"])] = job
            return self._send(201, job)
        if method == "GET" and name is None:
            items = [j for (ns, _), j in self.api.jobs.items() if ns == namespace]
            selector = query.get("labelSelector", [""])[0]
            items = [j for j in items if _selected(j, selector)]
            return self._send(200, {"kind": "JobList", "apiVersion": "batch/v1",
                                    "metadata": {}, "items": items})  # fmt: skip
        job = self.api.jobs.get((namespace, name or ""))
        if job is None:
            return self._not_found("jobs.batch", name)
        if method == "GET":
            return self._send(200, job)
        if method == "DELETE":
            self.api.deleted.append(("job", namespace, name or ""))
            del self.api.jobs[(namespace, name or "")]
            return self._send(200, {"kind": "Status", "apiVersion": "v1",
                                    "status": "Success"})  # fmt: skip
        self._not_found("method", method)

    def _pods(self, method: str, namespace: str, name: str | None, query) -> None:
        if method == "GET" and name is None:
            return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                    "metadata": {}, "items": []})  # fmt: skip
        if method == "DELETE":
            self.api.deleted.append(("pod", namespace, name or ""))
            return self._send(200, {"kind": "Status", "apiVersion": "v1",
                                    "status": "Success"})  # fmt: skip
        self._not_found("pods", name)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _selected(job: dict[str, Any], selector: str) -> bool:
    labels = job["metadata"].get("labels", {})
    pairs = [part.split("=", 1) for part in selector.split(",") if "=" in part]
    return all(labels.get(key) == value for key, value in pairs)


@contextlib.contextmanager
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    api = FakeKubernetes()
    with serve(api.handler()) as url:
        api.url = url
        yield api
