"""The image-classification model: a transformers checkpoint, folded, loaded once, batched.

torch and transformers are imported only when a model is loaded, so importing this module
stays cheap. Nothing here knows about S3, the tables or Dagster.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_assets.settings import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_PRECISION
from ai_assets.vision.decode import decode_image
from ai_assets.vision.labels import Label
from ai_assets.vision.threads import loading, tune_allocator

if TYPE_CHECKING:
    import torch


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: ``AI_ASSETS_PRECISION`` → torch dtype. fp16 and bf16 run on GPU tensor cores and on CPUs with
#: AVX512-FP16 / AMX; fp16 keeps more mantissa, so it changes fewer labels (bench/feed.py).
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class ImageClassifier:
    """A transformers image-classification model, loaded once, run in batches."""

    @loading()  # with the cyclic collector paused, then frozen (vision.threads)
    def __init__(
        self,
        model: str,
        device: str | None = None,
        precision: str = DEFAULT_PRECISION,
        jpeg_draft: bool = True,
        fold: bool = True,
    ) -> None:
        import torch
        from transformers import pipeline

        from ai_assets.vision.fold import fold_batch_norms
        from ai_assets.vision.preprocess import build_preprocessor, reference_batch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        tune_allocator()
        self.device = device or auto_device()
        self.precision = precision
        self.dtype = getattr(torch, PRECISIONS[precision])
        # loaded and folded on the CPU: its fp32 convolutions are exact, where a GPU's TF32
        # ones differ by more than the fold check allows (measured on an H200: 0.02), then moved
        classifier = pipeline("image-classification", model=model, device="cpu")
        self.preprocessor = build_preprocessor(classifier.image_processor)
        network = classifier.model.eval().float()  # fold in fp32, whatever the checkpoint's dtype
        #: BatchNorm layers folded into their convs (output checked against the unfolded model)
        self.folded = 0
        if fold:
            example = reference_batch(self.preprocessor, "cpu")
            self.folded = fold_batch_norms(network, lambda: network(pixel_values=example).logits)
        # transformers wraps PreTrainedModel.to in a decorator whose signature pyright misreads
        self.model = network.to(self.device, self.dtype, memory_format=torch.channels_last)  # pyright: ignore[reportArgumentType]
        self.min_decode_side = self.preprocessor.min_decode_side if jpeg_draft else 0
        self.model_id = model
        self.model_revision = _revision(self.model, model)
        id2label = self.model.config.id2label or {}
        self.labels = {int(i): str(label) for i, label in id2label.items()}
        self._warm: set[int] = set()

    def warm_up(self, batch_size: int) -> None:
        """Run one blank batch: oneDNN builds its kernels for a batch shape on first use (~1 s)."""
        if batch_size not in self._warm:
            blank = self.preprocess(np.zeros((256, 256, 3), np.uint8))
            self.predict([blank] * batch_size, top_k=1)
            self._warm.add(batch_size)

    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """Decode at the smallest JPEG scale that still covers the model's input size."""
        return decode_image(data, max_pixels, self.min_decode_side)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """One image's pixels → the tensor ``predict`` batches (run in worker threads)."""
        return self.preprocessor(pixels)

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
        """Object bytes → a model-ready tensor; raises ImageError (run in worker threads)."""
        return self.preprocess(self.decode(data, max_pixels))

    def batch(self, size: int) -> ModelBatch:
        """Room for ``size`` prepared images, filled by the threads that prepare them."""
        return ModelBatch(self, self.preprocessor.buffer(size, self.device))

    def predict(self, pixel_values: Sequence[torch.Tensor], top_k: int) -> list[list[Label]]:
        """Top-``top_k`` labels for a batch of preprocessed images."""
        if not pixel_values:
            return []
        return self.classify_batch(self.preprocessor.collate(pixel_values, self.device), top_k)

    def classify_batch(self, batch: torch.Tensor, top_k: int) -> list[list[Label]]:
        """Top-``top_k`` labels for a model-ready ``(N, 3, H, W)`` batch: the model alone."""
        import torch

        with torch.inference_mode():
            logits = self.model(pixel_values=batch.to(self.dtype)).logits
            scores, indices = logits.float().softmax(dim=-1).topk(min(top_k, logits.shape[-1]))
        return [
            [Label(self.labels[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True)]
            for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


class ModelBatch:
    """One batch of model input being assembled (the pipeline's ``Batch``, see stream.py)."""

    def __init__(self, classifier: ImageClassifier, buffer: Any) -> None:
        self.classifier = classifier
        self.buffer = buffer

    def put(self, slot: int, prepared: torch.Tensor) -> None:
        self.classifier.preprocessor.put(self.buffer, slot, prepared)

    def label(self, slots: Sequence[int], top_k: int) -> list[list[Label] | str]:
        classifier = self.classifier
        pixels = classifier.preprocessor.model_input(self.buffer, slots, classifier.device)
        return list(classifier.classify_batch(pixels, top_k))


def _revision(model: Any, name: str) -> str:
    """The hub commit when there is one, else a content hash of the local weights."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    digest = hashlib.sha256()
    for weights in sorted(Path(model.config.name_or_path or name).glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def load_classifier(
    model: str,
    device: str | None = None,
    precision: str = DEFAULT_PRECISION,
    jpeg_draft: bool = True,
) -> ImageClassifier:
    """Load a model once per process; every run in the process shares it."""
    return ImageClassifier(model, device, precision, jpeg_draft)
