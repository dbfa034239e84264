from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ai_assets.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DECODE_PROCESSES,
    DEFAULT_INFERENCE_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_PRECISION,
    DEFAULT_TOP_K,
    default_fetch_threads,
)

if TYPE_CHECKING:
    from ai_assets.service.client import RemoteClassifier
    from ai_assets.vision.model import ImageClassifier


class ClassifierResource(dg.ConfigurableResource):
    """A transformers image-classification model, loaded once per process on first use."""

    model: str = Field(
        default="",
        description="Hub id or local dir (AI_ASSETS_MODEL); empty = bundled EfficientNet-Lite0.",
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, description="Inference batch size (AI_ASSETS_BATCH_SIZE)."
    )
    top_k: int = Field(
        default=DEFAULT_TOP_K, description="Labels kept per image (AI_ASSETS_TOP_K)."
    )
    device: str = Field(default="", description="torch device; empty = CUDA when available.")
    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS)
    download_concurrency: int = Field(
        default=0,
        description="Objects fetched and decoded at once (AI_ASSETS_DOWNLOAD_CONCURRENCY); 0 = "
        "cores + 1 (at most 16), and at least twice the decode processes.",
    )
    precision: str = Field(
        default=DEFAULT_PRECISION, description="fp32, bf16 or fp16 (AI_ASSETS_PRECISION)."
    )
    jpeg_draft: bool = Field(
        default=True,
        description="Decode large JPEGs at 1/2–1/8 scale when that still covers the model input.",
    )
    gpu_jpeg_decode: bool = Field(
        default=False,
        description="Decode plain JPEGs on the GPU with nvJPEG (AI_ASSETS_GPU_JPEG_DECODE): ~3x "
        "the images/s of a 16-core H200 node, but nvJPEG's pixels change ~2.5 % of top-1 labels "
        "against transformers' own path (libjpeg-turbo's), so it is off unless asked for.",
    )
    decode_processes: int | None = Field(
        default=DEFAULT_DECODE_PROCESSES,
        description="Worker processes that decode and crop images instead of the fetch threads "
        "(AI_ASSETS_DECODE_PROCESSES); 0 = the threads; unset = cores - 2 for a model on a GPU "
        "with 8 cores or more (the threads share one GIL), else the threads, which cost less "
        "CPU where the model shares the cores.",
    )

    inference_url: str = Field(
        default="",
        description="Model service base URL (AI_ASSETS_INFERENCE_URL); empty = load the model "
        "in the run's process.",
    )
    inference_concurrency: int = Field(
        default=DEFAULT_INFERENCE_CONCURRENCY,
        description="Requests in flight to the model service (AI_ASSETS_INFERENCE_CONCURRENCY).",
    )

    def fetch_threads(self, model: ImageClassifier | RemoteClassifier) -> int:
        """A run's fetch threads for the loaded ``model``: ``download_concurrency``, or when 0
        chosen from the cores and its decode processes (each thread waits for its worker's
        crop)."""
        return self.download_concurrency or default_fetch_threads(model.decode_processes)

    def load(self) -> ImageClassifier | RemoteClassifier:
        """The process's model, warmed up for this batch size (neither counts as run time).

        With ``inference_url``, a client of the model service instead: torch is never imported.
        """
        if self.inference_url:
            from ai_assets.service.client import RemoteClassifier

            return RemoteClassifier(self.inference_url, concurrency=self.inference_concurrency)
        from ai_assets.vision.convert import ensure_default_model
        from ai_assets.vision.model import load_classifier

        model = self.model or str(ensure_default_model())
        classifier = load_classifier(
            model,
            self.device or None,
            self.precision,
            self.jpeg_draft,
            self.gpu_jpeg_decode,
            self.decode_processes,
        )
        classifier.warm_up(self.batch_size)
        return classifier
