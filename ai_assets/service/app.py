"""The classifier as an HTTP service (served as ``uvicorn ai_assets.model_service:app``).

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
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ai_assets.service.batcher import Batcher, ModelState, ServiceError
from ai_assets.service.metrics import Metrics
from ai_assets.service.routes import Service, router
from ai_assets.settings import ServiceSettings, service_settings


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service; its settings come from the configuration contract (the environment)."""
    settings = settings or service_settings()
    metrics = Metrics()
    service = Service(settings, metrics, ModelState(settings, metrics))
    app = FastAPI(
        title="ai_assets model service",
        description="Image classification with server-side dynamic batching.",
        lifespan=_lifespan,
    )
    app.state.service = service
    app.middleware("http")(_observe)
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model in a thread, then start batching: /healthz answers meanwhile."""
    service: Service = app.state.service
    loop = asyncio.get_running_loop()
    loading = loop.run_in_executor(None, service.state.load)
    worker: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal worker
        with contextlib.suppress(Exception):
            await loading
        state = service.state
        if state.classifier is not None:
            state.batcher = Batcher(state.classifier, service.settings, service.metrics)
            worker = asyncio.create_task(state.batcher.run())
            service.metrics.ready.set(1)

    starting = asyncio.create_task(start())
    yield
    starting.cancel()
    if worker is not None:
        worker.cancel()


async def _observe(request: Request, call_next: Any) -> Response:
    """Count and time every request by its route's path (a bounded label set)."""
    metrics: Metrics = request.app.state.service.metrics
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    endpoint = route.path if route is not None else "other"
    metrics.requests.labels(endpoint, str(response.status_code)).inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    request.app.state.service.metrics.errors.labels(exc.kind).inc()
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    body = {"error": {"kind": exc.kind, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    missing = [
        ".".join(str(p) for p in e["loc"][1:]) for e in exc.errors() if e["type"] == "missing"
    ]
    kind = "missing_field" if missing else "invalid_request"
    message = f"missing form field(s): {', '.join(missing)}" if missing else str(exc.errors())[:500]
    request.app.state.service.metrics.errors.labels(kind).inc()
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=422)
