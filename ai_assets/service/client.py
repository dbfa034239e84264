"""The model service as the runs' classifier: a run sends object bytes and loads no model.

Pure logic over HTTP (requests); nothing here knows about Dagster or imports torch. The
service decodes, checks the size limits and batches; this client only splits a run's batch
into a few concurrent requests and retries while the service is busy or restarting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from ai_assets.common import chunked
from ai_assets.settings import DEFAULT_DECODE_CONCURRENCY
from ai_assets.vision.labels import Label

#: HTTP statuses that mean "try again": overloaded (503), or a proxy in front of a restart.
RETRY_STATUSES = frozenset({502, 503, 504})


class ModelServiceError(RuntimeError):
    """The model service refused a request or stayed unreachable: the run fails with it."""


class RemoteClassifier:
    """The pipeline's ``Classifier`` backed by ``POST /classify/batch`` of the model service."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 4,
        timeout: float = 120.0,
        attempts: int = 8,
        backoff: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._local = threading.local()
        info = self._request("GET", "/model")
        self.model_id: str = info["model_id"]
        self.model_revision: str = info["model_revision"]
        self.device = f"{info['device']} (model service {self.url})"
        self.precision: str = info["precision"]
        self.folded: int = int(info.get("folded", 0))
        #: a batch passes the bytes on (``Uploads.fill``): the service decodes them
        self.decode_concurrency = DEFAULT_DECODE_CONCURRENCY
        self.decode_processes = 0  # nor in processes of this one
        self.decoding = f"by the model service {self.url}"
        self.model_threads = 0  # the model runs in the service, not in this process
        self.call_cpu_seconds = 0.0  # so this process spends none of its CPU on it (cpu.Meter)

    def decode_pids(self) -> list[int]:
        """None: the service decodes."""
        return []

    def batch(self, size: int) -> Uploads:
        """A batch of object bytes, sent when it is labelled."""
        return Uploads(self, size)

    def label(self, prepared: Sequence[Any], top_k: int) -> list[list[Label] | str]:
        """Labels per image, from at most ``concurrency`` requests in flight at once."""
        size = -(-len(prepared) // self.concurrency)  # ceil: one request per worker
        chunks = list(chunked(prepared, size))
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="inference") as pool:
            answers = list(pool.map(lambda chunk: self._classify(chunk, top_k), chunks))
        return [item for answer in answers for item in answer]

    def _classify(self, chunk: Sequence[bytes], top_k: int) -> list[list[Label] | str]:
        files = [
            ("files", (f"{i}", data, "application/octet-stream")) for i, data in enumerate(chunk)
        ]
        body = self._request("POST", "/classify/batch", params={"top_k": top_k}, files=files)
        results: list[list[Label] | str] = []
        for item in body["results"]:
            if "error" in item:
                results.append(item["error"]["message"])
            else:
                results.append([Label(r["label"], float(r["score"])) for r in item["results"]])
        if len(results) != len(chunk):
            raise ModelServiceError(f"{self.url} answered {len(results)} results for {len(chunk)}")
        return results

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call, retried with backoff on 502/503/504 and connection errors."""
        problem = ""
        for attempt in range(self.attempts):
            wait = self.backoff * 2**attempt
            try:
                response = self._session().request(
                    method, self.url + path, timeout=self.timeout, **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUSES:
                    if response.ok:
                        return response.json()
                    raise ModelServiceError(
                        f"{method} {self.url}{path} answered {response.status_code}: "
                        f"{response.text[:300]}"
                    )
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                wait = max(wait, float(response.headers.get("Retry-After") or 0))
            if attempt + 1 < self.attempts:
                time.sleep(min(wait, 15.0))
        raise ModelServiceError(
            f"the model service at {self.url} stayed unavailable after {self.attempts} "
            f"attempts ({problem}); is AI_ASSETS_INFERENCE_URL right and the service up?"
        )


class Uploads:
    """One batch for the service (the pipeline's ``Batch``, see vision/stream.py)."""

    def __init__(self, classifier: RemoteClassifier, size: int) -> None:
        self.classifier = classifier
        self.items: list[bytes] = [b""] * size

    def fill(self, slot: int, data: bytes, max_pixels: int) -> None:
        """The bytes as they are: the service decodes them and applies its own limits."""
        self.items[slot] = data

    def label(self, slots: Sequence[int], top_k: int) -> Callable[[], list[list[Label] | str]]:
        answers = self.classifier.label([self.items[slot] for slot in slots], top_k)
        return lambda: answers
