"""Decode images and classify them in batches with a transformers image-classification model.

Pure logic: no Dagster here. torch and transformers are imported only when a model is loaded,
so importing this module stays cheap for the code-location processes.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import itertools
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from ai_assets.store import Fetched
from ai_assets.table import ClassificationRow

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 90_000_000
#: Longer/shorter side beyond which only the central part is kept: a 10000×3 strip would
#: otherwise be resized to ~850k×256 pixels. Centre-crop models never see beyond it anyway.
MAX_ASPECT_RATIO = 8
# decode_image enforces AI_ASSETS_MAX_IMAGE_PIXELS itself, from the header, before decoding;
# Pillow's own global limit would refuse (or warn about) images that the setting allows.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An object that cannot be classified; it becomes an error row, never a failed batch."""


@dataclasses.dataclass(frozen=True)
class Label:
    label: str
    score: float


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing oversize images before decoding."""
    if not data:
        raise ImageError("empty object (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height:,} pixels, "
                f"above the limit of {max_pixels:,} (AI_ASSETS_MAX_IMAGE_PIXELS)"
            )
        image.seek(0)  # first frame of animations
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb(_limit_aspect_ratio(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None


def _limit_aspect_ratio(image: Image.Image) -> Image.Image:
    width, height = image.size
    short = min(width, height)
    if max(width, height) <= MAX_ASPECT_RATIO * short:
        return image
    keep_w, keep_h = min(width, MAX_ASPECT_RATIO * short), min(height, MAX_ASPECT_RATIO * short)
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return image.crop((left, top, left + keep_w, top + keep_h))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited on white, 16-bit scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray((array.clip(0, top) * (255.0 / top)).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def tune_allocator() -> None:
    """Keep freed memory in the process instead of returning it to the OS after every batch.

    glibc's default mmap/trim thresholds make each forward pass re-fault its activation
    buffers; on CPU that halves throughput (bench/throughput.py measures it). Same effect as
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 1 GiB, applied wherever a model loads.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageClassifier:
    """A transformers image-classification model, loaded once, run in batches."""

    def __init__(self, model: str, device: str | None = None) -> None:
        import torch
        from transformers import pipeline

        tune_allocator()
        self.device = device or auto_device()
        classifier = pipeline("image-classification", model=model, device=self.device)
        self.model = classifier.model.eval().to(memory_format=torch.channels_last)
        self.processor = classifier.image_processor
        self.model_id = model
        self.model_revision = _revision(self.model, model)
        self.labels: dict[int, str] = dict(self.model.config.id2label)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image → a ``(3, H, W)`` float tensor (run in worker threads)."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def predict(self, pixel_values: Sequence[torch.Tensor], top_k: int) -> list[list[Label]]:
        """Top-``top_k`` labels for a batch of preprocessed images."""
        import torch

        if not pixel_values:
            return []
        batch = torch.stack(list(pixel_values)).to(self.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            logits = self.model(pixel_values=batch).logits
            scores, indices = logits.float().softmax(dim=-1).topk(min(top_k, logits.shape[-1]))
        return [
            [Label(self.labels[int(i)], float(s)) for s, i in zip(row_s, row_i, strict=True)]
            for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


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
def load_classifier(model: str, device: str | None = None) -> ImageClassifier:
    """Load a model once per process; every run in the process shares it."""
    return ImageClassifier(model, device)


@dataclasses.dataclass(frozen=True)
class Job:
    """One object to classify: its partition key and its S3 key."""

    partition_key: str
    object_key: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A fetched object, decoded and preprocessed, or the reason it cannot be classified."""

    job: Job
    fetched: Fetched
    pixel_values: torch.Tensor | None = None
    error: str | None = None


def prepare(
    job: Job, fetch: Callable[[str], Fetched], classifier: ImageClassifier, max_pixels: int
) -> Outcome:
    """Fetch, decode and preprocess one object (runs in a worker thread)."""
    fetched = fetch(job.object_key)
    if fetched.deleted or fetched.error:
        return Outcome(job, fetched, error=fetched.error)
    try:
        image = decode_image(fetched.data or b"", max_pixels)
        return Outcome(job, fetched, pixel_values=classifier.preprocess(image))
    except ImageError as exc:
        return Outcome(job, fetched, error=str(exc))


def classify_objects(
    jobs: Iterable[Job],
    fetch: Callable[[str], Fetched],
    classifier: ImageClassifier,
    *,
    batch_size: int,
    top_k: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    concurrency: int = 8,
    run_id: str | None = None,
) -> Iterator[list[ClassificationRow]]:
    """Yield result rows batch by batch; downloads and decoding overlap with inference.

    At most ``2 * batch_size`` objects are in flight, so memory stays bounded however many
    objects a run covers. Bad images become error rows; the rest of their batch goes on.
    """
    window = max(2 * batch_size, concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch") as pool:
        pending: collections.deque[Future[Outcome]] = collections.deque()
        queue = iter(jobs)

        def refill() -> None:
            for job in itertools.islice(queue, window - len(pending)):
                pending.append(pool.submit(prepare, job, fetch, classifier, max_pixels))

        refill()
        while pending:
            outcomes = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            refill()
            yield _rows(outcomes, classifier, top_k, run_id)


def _rows(
    outcomes: Sequence[Outcome], classifier: ImageClassifier, top_k: int, run_id: str | None
) -> list[ClassificationRow]:
    ready = [o for o in outcomes if o.pixel_values is not None]
    predictions = dict(
        zip(
            (id(o) for o in ready),
            classifier.predict(
                [o.pixel_values for o in ready if o.pixel_values is not None], top_k
            ),
            strict=True,
        )
    )
    now = dt.datetime.now(dt.UTC)
    rows = []
    for outcome in outcomes:
        common = dict(
            s3_key=outcome.job.object_key,
            partition_key=outcome.job.partition_key,
            etag=outcome.fetched.etag,
            size_bytes=outcome.fetched.size,
            last_modified=outcome.fetched.last_modified,
            model_id=classifier.model_id,
            model_revision=classifier.model_revision,
            classified_at=now,
            run_id=run_id,
        )
        labels = predictions.get(id(outcome))
        if outcome.fetched.deleted:
            rows.append(ClassificationRow(status="deleted", **common))
        elif labels is None:
            rows.append(ClassificationRow(status="error", error=outcome.error, **common))
        else:
            rows.append(
                ClassificationRow(
                    status="ok",
                    label=labels[0].label,
                    score=labels[0].score,
                    top_k=[dataclasses.asdict(label) for label in labels],
                    **common,
                )
            )
    return rows
