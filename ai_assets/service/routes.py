"""The model service's HTTP endpoints; each reads the app's ``Service`` through a dependency."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

import prometheus_client as prom
from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile

from ai_assets.service.batcher import ModelState, ServiceError, refused
from ai_assets.service.metrics import Metrics
from ai_assets.settings import ServiceSettings
from ai_assets.vision.decode import ImageError
from ai_assets.vision.model import ImageClassifier

TopK = Annotated[int | None, Query(ge=1, le=1000, description="labels per image")]


@dataclasses.dataclass
class Service:
    """What the endpoints share: settings, metrics, the model's state."""

    settings: ServiceSettings
    metrics: Metrics
    state: ModelState

    async def read(self, upload: UploadFile) -> bytes:
        """The upload's bytes, refused unread beyond AI_ASSETS_MAX_IMAGE_BYTES."""
        limit = self.settings.max_image_bytes
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

    async def prepare(self, classifier: ImageClassifier, upload: UploadFile) -> Any:
        """Decode and preprocess one upload on the decode threads."""
        data = await self.read(upload)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.state.decoders, classifier.prepare, data, self.settings.max_image_pixels
        )

    def top(self, top_k: int | None) -> int:
        return top_k or self.settings.top_k


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]
router = APIRouter()


@router.post("/classify/")
@router.post("/classify", include_in_schema=False)  # answered, not redirected with an empty 307
async def classify(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="the image")],
    top_k: TopK = None,
) -> dict[str, Any]:
    """Top-k labels of one image: ``{"results": [{"label", "score"}, ...]}``."""
    classifier, batcher = service.state.require()
    try:
        pixel_values = await service.prepare(classifier, file)
    except ImageError as exc:
        raise refused(exc, file.filename) from None
    [future] = batcher.submit([pixel_values], service.top(top_k))
    labels = await future
    return {"results": [label.as_json() for label in labels]}


@router.post("/classify/batch")
async def classify_batch(
    service: ServiceDep,
    files: Annotated[list[UploadFile], File(description="the images")],
    top_k: TopK = None,
) -> dict[str, Any]:
    """Labels per image, in order; an image that cannot be classified gets an ``error``."""
    classifier, batcher = service.state.require()
    outcomes: list[Any] = []
    for upload in files:
        try:
            outcomes.append(await service.prepare(classifier, upload))
        except ImageError as exc:
            service.metrics.errors.labels(exc.kind).inc()
            outcomes.append(refused(exc, upload.filename))
    ready = [o for o in outcomes if not isinstance(o, ServiceError)]
    futures = iter(batcher.submit(ready, service.top(top_k)))
    results = []
    for outcome in outcomes:
        if isinstance(outcome, ServiceError):
            results.append({"error": {"kind": outcome.kind, "message": outcome.message}})
        else:
            labels = await next(futures)
            results.append({"results": [label.as_json() for label in labels]})
    return {"results": results}


@router.get("/model")
async def model(service: ServiceDep) -> dict[str, Any]:
    """What a run records in its rows: the model id and revision, and how it runs."""
    classifier, _ = service.state.require()
    return {
        "model_id": classifier.model_id,
        "model_revision": classifier.model_revision,
        "device": classifier.device,
        "precision": classifier.precision,
        "folded": classifier.folded,
        "batch_size": service.settings.batch_size,
        "top_k": service.settings.top_k,
    }


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (the model may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> dict[str, str]:
    """Readiness: the model is loaded, warmed and batching."""
    service.state.require()
    return {"status": "ready"}


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    registry = service.metrics.registry
    return Response(prom.generate_latest(registry), media_type=prom.CONTENT_TYPE_LATEST)
