"""The classifier as an HTTP service: ``uvicorn ai_assets.model_service:app``.

``POST /classify/`` with a multipart ``file`` answers ``{"results": [{"label", "score"}, ...]}``
(the transformers pipeline's format; the system this project replaced served the same), and
``POST /classify/batch`` with many ``files`` serves runs (``AI_ASSETS_INFERENCE_URL``).
Requests from any number of clients are gathered into model batches of up to
``AI_ASSETS_BATCH_SIZE`` images, waiting at most ``AI_ASSETS_BATCH_WAIT_MS`` for a batch to
fill; at most ``AI_ASSETS_QUEUE_LIMIT`` images wait, beyond that a request gets 503 with
``Retry-After``. The model is the runs' own (folded, fast preprocessing, device auto,
``AI_ASSETS_PRECISION``), loaded once in the background at start-up: ``/healthz`` answers at
once, ``/readyz`` once it is loaded and warmed. ``/metrics`` is Prometheus' text format.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import prometheus_client as prom
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ai_assets.decode import ImageError
from ai_assets.model import ImageClassifier, Label
from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY, ServiceSettings, service_settings
from ai_assets.tuning import yield_to_inference

TopK = Annotated[int | None, Query(ge=1, le=1000, description="labels per image")]
#: HTTP status per ImageError kind: the client sent something the model cannot take.
_STATUS = {"empty": 400, "too_large": 413, "too_many_pixels": 413}
_NOT_AN_IMAGE = 415


class ServiceError(Exception):
    """A request the service answers with a JSON error body instead of results."""

    def __init__(self, status: int, kind: str, message: str, retry_after: int = 0) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.retry_after = status, kind, message, retry_after


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "ai_assets_service_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.errors = prom.Counter(
            "ai_assets_service_errors",
            "Rejected images and failed requests by kind",
            ["kind"],
            registry=r,
        )
        self.latency = prom.Histogram(
            "ai_assets_service_request_seconds",
            "Request latency, upload to answer",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "ai_assets_service_batch_size",
            "Images per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.model_calls = prom.Counter(
            "ai_assets_service_model_calls", "Model forward passes", registry=r
        )
        self.images = prom.Counter("ai_assets_service_images", "Images classified", registry=r)
        self.images_per_second = prom.Gauge(
            "ai_assets_service_images_per_second",
            "Images classified per second over the last 10 s",
            registry=r,
        )
        self.queue_depth = prom.Gauge(
            "ai_assets_service_queue_depth", "Images waiting for a model batch", registry=r
        )
        self.ready = prom.Gauge(
            "ai_assets_service_ready", "1 once the model is loaded and warmed", registry=r
        )
        self.info = prom.Info("ai_assets_service_model", "The model served", registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def classified(self, count: int) -> None:
        now = time.monotonic()
        self.images.inc(count)
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - 10:
            self._recent.popleft()
        self.images_per_second.set(sum(n for _, n in self._recent) / 10)


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

    def load(self) -> None:
        from ai_assets.model import load_classifier
        from ai_assets.model_convert import ensure_default_model

        try:
            model = self.settings.model or str(ensure_default_model())
            classifier = load_classifier(model, None, self.settings.precision)
            classifier.warm_up(self.settings.batch_size)
            classifier.warm_up(1)
        except Exception as exc:  # reported by /readyz and the log; the process stays up
            self.error = f"{type(exc).__name__}: {exc}"
            raise
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


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service; its settings come from the configuration contract (the environment)."""
    settings = settings or service_settings()
    metrics = Metrics()
    state = ModelState(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loading = loop.run_in_executor(None, state.load)
        worker: asyncio.Task[None] | None = None

        async def start() -> None:
            nonlocal worker
            with contextlib.suppress(Exception):
                await loading
            if state.classifier is not None:
                state.batcher = Batcher(state.classifier, settings, metrics)
                worker = asyncio.create_task(state.batcher.run())
                metrics.ready.set(1)

        starting = asyncio.create_task(start())
        yield
        starting.cancel()
        if worker is not None:
            worker.cancel()

    app = FastAPI(
        title="ai_assets model service",
        description="Image classification with server-side dynamic batching.",
        lifespan=lifespan,
    )
    app.state.model = state
    app.state.metrics = metrics

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = route.path if route is not None else "other"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.errors.labels(exc.kind).inc()
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        body = {"error": {"kind": exc.kind, "message": exc.message}}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        missing = [
            ".".join(str(p) for p in e["loc"][1:]) for e in exc.errors() if e["type"] == "missing"
        ]
        kind = "missing_field" if missing else "invalid_request"
        message = (
            f"missing form field(s): {', '.join(missing)}" if missing else str(exc.errors())[:500]
        )
        metrics.errors.labels(kind).inc()
        return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=422)

    async def read(upload: UploadFile) -> bytes:
        """The upload's bytes, refused unread beyond AI_ASSETS_MAX_IMAGE_BYTES."""
        limit = settings.max_image_bytes
        if upload.size is not None and upload.size > limit:
            raise ImageError(
                f"upload is {upload.size:,} bytes, above the limit of {limit:,} "
                "(AI_ASSETS_MAX_IMAGE_BYTES)",
                "too_large",
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ImageError(
                f"upload is above the limit of {limit:,} bytes (AI_ASSETS_MAX_IMAGE_BYTES)",
                "too_large",
            )
        return data

    # decode threads run as SCHED_IDLE, as in runs: preempting torch's threads mid-batch costs
    # more than it gains (tuning.yield_to_inference)
    decoders = ThreadPoolExecutor(
        DEFAULT_DOWNLOAD_CONCURRENCY, "decode", initializer=yield_to_inference
    )

    async def prepare(classifier: ImageClassifier, upload: UploadFile) -> Any:
        data = await read(upload)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            decoders, classifier.prepare, data, settings.max_image_pixels
        )

    def refused(exc: ImageError, name: str | None) -> ServiceError:
        return ServiceError(
            _STATUS.get(exc.kind, _NOT_AN_IMAGE), exc.kind, f"{name or 'file'}: {exc}"
        )

    def top(top_k: int | None) -> int:
        return top_k or settings.top_k

    @app.post("/classify/")
    @app.post("/classify", include_in_schema=False)  # answered, not redirected with an empty 307
    async def classify(
        file: Annotated[UploadFile, File(description="the image")],
        top_k: TopK = None,
    ) -> dict[str, Any]:
        """Top-k labels of one image: ``{"results": [{"label", "score"}, ...]}``."""
        classifier, batcher = state.require()
        try:
            pixel_values = await prepare(classifier, file)
        except ImageError as exc:
            raise refused(exc, file.filename) from None
        [future] = batcher.submit([pixel_values], top(top_k))
        labels = await future
        return {"results": [dataclasses.asdict(label) for label in labels]}

    @app.post("/classify/batch")
    async def classify_batch(
        files: Annotated[list[UploadFile], File(description="the images")],
        top_k: TopK = None,
    ) -> dict[str, Any]:
        """Labels per image, in order; an image that cannot be classified gets an ``error``."""
        classifier, batcher = state.require()
        outcomes: list[Any] = []
        for upload in files:
            try:
                outcomes.append(await prepare(classifier, upload))
            except ImageError as exc:
                metrics.errors.labels(exc.kind).inc()
                outcomes.append(refused(exc, upload.filename))
        ready = [o for o in outcomes if not isinstance(o, ServiceError)]
        futures = iter(batcher.submit(ready, top(top_k)))
        results = []
        for outcome in outcomes:
            if isinstance(outcome, ServiceError):
                results.append({"error": {"kind": outcome.kind, "message": outcome.message}})
            else:
                labels = await next(futures)
                results.append({"results": [dataclasses.asdict(label) for label in labels]})
        return {"results": results}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """What a run records in its rows: the model id and revision, and how it runs."""
        classifier, _ = state.require()
        return {
            "model_id": classifier.model_id,
            "model_revision": classifier.model_revision,
            "device": classifier.device,
            "precision": classifier.precision,
            "folded": classifier.folded,
            "batch_size": settings.batch_size,
            "top_k": settings.top_k,
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        """Readiness: the model is loaded, warmed and batching."""
        state.require()
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(prom.generate_latest(metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

    return app


app = create_app()
