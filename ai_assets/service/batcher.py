"""Dynamic batching: images from concurrent requests become model batches; the model's state."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ai_assets.service.metrics import Metrics
from ai_assets.settings import DEFAULT_DECODE_CONCURRENCY, ServiceSettings
from ai_assets.vision.decode import ImageError
from ai_assets.vision.labels import Label
from ai_assets.vision.model import ImageClassifier
from ai_assets.vision.threads import yield_to_inference

#: HTTP status per ImageError kind: the client sent something the model cannot take.
_STATUS = {"empty": 400, "too_large": 413, "too_many_pixels": 413}
_NOT_AN_IMAGE = 415


class ServiceError(Exception):
    """A request the service answers with a JSON error body instead of results."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after


def refused(exc: ImageError, name: str | None) -> ServiceError:
    """The answer to an image the model cannot take: 400, 413 or 415 with the reason."""
    return ServiceError(_STATUS.get(exc.kind, _NOT_AN_IMAGE), exc.kind, f"{name or 'file'}: {exc}")


@dataclasses.dataclass
class _Item:
    pixel_values: Any
    top_k: int
    future: asyncio.Future[list[Label]]


class Batcher:
    """Gathers images from concurrent requests into model batches (dynamic batching)."""

    def __init__(
        self, classifier: ImageClassifier, settings: ServiceSettings, metrics: Metrics
    ) -> None:
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # one batch at a time

    def submit(self, items: list[Any], top_k: int) -> list[asyncio.Future[list[Label]]]:
        """Queue a request's images together, or refuse them all if the queue is full.

        A request larger than the whole limit is still taken when nothing waits, so no request
        size is refused forever.
        """
        waiting = self.queue.qsize()
        if waiting and waiting + len(items) > self.settings.queue_limit:
            raise ServiceError(
                503,
                "queue_full",
                f"{self.queue.qsize()} images are waiting (AI_ASSETS_QUEUE_LIMIT="
                f"{self.settings.queue_limit}); retry shortly",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        futures = []
        for pixel_values in items:
            future: asyncio.Future[list[Label]] = loop.create_future()
            self.queue.put_nowait(_Item(pixel_values, top_k, future))
            futures.append(future)
        self.metrics.queue_depth.set(self.queue.qsize())
        return futures

    async def run(self) -> None:
        """Forever: take the first waiting image, wait briefly for more, run one batch."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.settings.batch_wait_ms / 1000
            while len(batch) < self.settings.batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(timeout, 0)))
                except TimeoutError:
                    break
            self.metrics.queue_depth.set(self.queue.qsize())
            live = [item for item in batch if not item.future.cancelled()]
            if not live:
                continue
            top_k = max(item.top_k for item in live)
            try:
                labels = await loop.run_in_executor(
                    self.model_thread,
                    self.classifier.predict,
                    [i.pixel_values for i in live],
                    top_k,
                )
            except Exception as exc:  # a model failure fails this batch's requests, not the service
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.metrics.model_calls.inc()
            self.metrics.batch_size.observe(len(live))
            self.metrics.classified(len(live))
            for item, item_labels in zip(live, labels, strict=True):
                if not item.future.done():
                    item.future.set_result(item_labels[: item.top_k])


class ModelState:
    """The model loads in a thread at start-up, so the process answers /healthz meanwhile."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.classifier: ImageClassifier | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.loaded = threading.Event()
        #: the threads that decode uploads, sized once the model knows its decode processes
        self.decoders: ThreadPoolExecutor | None = None

    def load(self) -> None:
        from ai_assets.vision.convert import ensure_default_model
        from ai_assets.vision.model import load_classifier

        try:
            model = self.settings.model or str(ensure_default_model())
            processes = self.settings.decode_processes
            classifier = load_classifier(
                model, None, self.settings.precision, True, False, processes
            )
            classifier.warm_up(self.settings.batch_size)
            classifier.warm_up(1)
        except Exception as exc:  # reported by /readyz and the log; the process stays up
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        # SCHED_IDLE, as in runs: preempting torch's threads mid-batch costs more than it
        # gains (vision.threads.yield_to_inference); with decode processes, each thread hands
        # its upload to one of them and waits
        self.decoders = ThreadPoolExecutor(
            max(DEFAULT_DECODE_CONCURRENCY, classifier.decode_processes),
            "decode",
            initializer=yield_to_inference,
        )
        self.classifier = classifier
        self.metrics.info.info(
            {"model_id": classifier.model_id, "model_revision": classifier.model_revision,
             "device": classifier.device, "precision": classifier.precision}
        )  # fmt: skip
        self.loaded.set()

    def require(self) -> tuple[ImageClassifier, Batcher]:
        if self.classifier is None or self.batcher is None:
            raise ServiceError(
                503, "not_ready", self.error or "the model is loading", retry_after=5
            )
        return self.classifier, self.batcher
