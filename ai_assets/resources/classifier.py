from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ai_assets.classify import (
    DEFAULT_DOWNLOAD_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
)

if TYPE_CHECKING:
    from ai_assets.classify import ImageClassifier


class ClassifierResource(dg.ConfigurableResource):
    """A transformers image-classification model, loaded once per process on first use."""

    model: str = Field(
        default="",
        description="Hub id or local dir (AI_ASSETS_MODEL); empty = bundled EfficientNet-Lite0.",
    )
    batch_size: int = Field(default=32, description="Inference batch size (AI_ASSETS_BATCH_SIZE).")
    top_k: int = Field(default=5, description="Labels kept per image (AI_ASSETS_TOP_K).")
    device: str = Field(default="", description="torch device; empty = CUDA when available.")
    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS)
    download_concurrency: int = Field(
        default=DEFAULT_DOWNLOAD_CONCURRENCY,
        description="Objects fetched and decoded at once (AI_ASSETS_DOWNLOAD_CONCURRENCY).",
    )
    precision: str = Field(default="fp32", description="fp32, bf16 or fp16 (AI_ASSETS_PRECISION).")
    jpeg_draft: bool = Field(
        default=True,
        description="Decode large JPEGs at 1/2–1/8 scale when that still covers the model input.",
    )

    def load(self) -> ImageClassifier:
        """The process's model, warmed up for this batch size (neither counts as run time)."""
        from ai_assets.classify import load_classifier
        from ai_assets.model_convert import ensure_default_model

        model = self.model or str(ensure_default_model())
        classifier = load_classifier(model, self.device or None, self.precision, self.jpeg_draft)
        classifier.warm_up(self.batch_size)
        return classifier
