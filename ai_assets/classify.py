"""Decode images and classify them in batches with a transformers image-classification model.

Pure logic: no Dagster here. torch and transformers are imported only when a model is loaded,
so importing this module stays cheap for the code-location processes.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import datetime as dt
import functools
import hashlib
import io
import itertools
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image, ImageOps, UnidentifiedImageError

from ai_assets.settings import (
    DEFAULT_DOWNLOAD_CONCURRENCY,
    DEFAULT_MAX_IMAGE_PIXELS,
)
from ai_assets.store import Fetched
from ai_assets.table import ClassificationRow

if TYPE_CHECKING:
    import torch

#: Longer/shorter side beyond which only the central part is kept: a 10000×3 strip would
#: otherwise be resized to ~850k×256 pixels. Centre-crop models never see beyond it anyway.
MAX_ASPECT_RATIO = 8
# decode_image enforces AI_ASSETS_MAX_IMAGE_PIXELS itself, from the header, before decoding;
# Pillow's own global limit would refuse (or warn about) images that the setting allows.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An object that cannot be classified; it becomes an error row, never a failed batch.

    ``kind`` names the reason for machines (the model service's error bodies and metrics).
    """

    def __init__(self, message: str, kind: str = "not_an_image") -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Label:
    label: str
    score: float


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: int = 0
) -> Image.Image:
    """Decode bytes into an upright RGB image, refusing oversize images before decoding.

    With ``min_side``, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    Pillow's draft mode) while both sides stay at least ``min_side`` pixels: a 4000×3000
    photo bound for a 256 px model input decodes ~10× faster.
    """
    if not data:
        raise ImageError("empty object (0 bytes)", "empty")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"image is {width}x{height} = {width * height:,} pixels, "
                f"above the limit of {max_pixels:,} (AI_ASSETS_MAX_IMAGE_PIXELS)",
                "too_many_pixels",
            )
        image.seek(0)  # first frame of animations
        if min_side:
            image.draft(image.mode, (min_side, min_side))  # a no-op unless JPEG
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(_limit_aspect_ratio(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"cannot decode image: {exc}", "undecodable") from None


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
    return image if image.mode == "RGB" else image.convert("RGB")


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


def yield_to_inference() -> None:
    """Let the calling thread run only on CPU time that inference leaves idle (Linux).

    A fetch/decode thread that preempts one of torch's OpenMP threads mid-batch stalls the
    whole batch while the other OpenMP thread spins at the barrier; on 2 cores with 8 such
    threads that cost 15 % of throughput (62.5 vs 52.9 images/s). As SCHED_IDLE the thread
    still uses any core torch leaves free, and every core while a batch waits for its images.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: ``AI_ASSETS_PRECISION`` → torch dtype; bf16 runs on AMX/AVX-512 CPUs and GPU tensor cores.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class ImageClassifier:
    """A transformers image-classification model, loaded once, run in batches."""

    def __init__(
        self,
        model: str,
        device: str | None = None,
        precision: str = "fp32",
        jpeg_draft: bool = True,
        fold: bool = True,
    ) -> None:
        import torch
        from transformers import pipeline

        from ai_assets.fuse import fold_batch_norms
        from ai_assets.preprocess import build_preprocessor, reference_batch

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
            blank = self.preprocess(Image.new("RGB", (256, 256)))
            self.predict([blank] * batch_size, top_k=1)
            self._warm.add(batch_size)

    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
        """Decode at the smallest JPEG scale that still covers the model's input size."""
        return decode_image(data, max_pixels, self.min_decode_side)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image → the tensor ``predict`` batches (run in worker threads)."""
        return self.preprocessor(image)

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
        """Object bytes → a model-ready tensor; raises ImageError (run in worker threads)."""
        return self.preprocess(self.decode(data, max_pixels))

    def label(self, prepared: Sequence[Any], top_k: int) -> list[list[Label] | str]:
        """Top-``top_k`` labels per prepared image (the pipeline's interface, see Classifier)."""
        return list(self.predict(prepared, top_k))

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
    model: str, device: str | None = None, precision: str = "fp32", jpeg_draft: bool = True
) -> ImageClassifier:
    """Load a model once per process; every run in the process shares it."""
    return ImageClassifier(model, device, precision, jpeg_draft)


class Classifier(Protocol):
    """What the fetch → decode → predict pipeline needs: the in-process model or the service."""

    model_id: str
    model_revision: str

    def prepare(self, data: bytes, max_pixels: int) -> Any:
        """Object bytes → what ``label`` takes; raises ImageError (runs in worker threads)."""
        ...

    def label(self, prepared: Sequence[Any], top_k: int) -> list[list[Label] | str]:
        """Labels per prepared item, or why that item could not be classified."""
        ...


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
    prepared: Any = None  # a tensor in process, the bytes for the model service
    error: str | None = None


def prepare(
    job: Job, fetch: Callable[[str], Fetched], classifier: Classifier, max_pixels: int
) -> Outcome:
    """Fetch, decode and preprocess one object (runs in a worker thread)."""
    fetched = fetch(job.object_key)
    if fetched.deleted or fetched.error:
        return Outcome(job, fetched, error=fetched.error)
    try:
        return Outcome(job, fetched, prepared=classifier.prepare(fetched.data or b"", max_pixels))
    except ImageError as exc:
        return Outcome(job, fetched, error=str(exc))


def classify_objects(
    jobs: Iterable[Job],
    fetch: Callable[[str], Fetched],
    classifier: Classifier,
    *,
    batch_size: int,
    top_k: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    concurrency: int = DEFAULT_DOWNLOAD_CONCURRENCY,
    run_id: str | None = None,
) -> Iterator[list[ClassificationRow]]:
    """Yield result rows batch by batch; downloads and decoding overlap with inference.

    At most ``2 * batch_size`` objects are in flight, so memory stays bounded however many
    objects a run covers. Bad images become error rows; the rest of their batch goes on.
    """
    window = max(2 * batch_size, concurrency)
    with ThreadPoolExecutor(concurrency, "fetch", initializer=yield_to_inference) as pool:
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
    outcomes: Sequence[Outcome], classifier: Classifier, top_k: int, run_id: str | None
) -> list[ClassificationRow]:
    ready = [o for o in outcomes if o.prepared is not None]
    labelled = classifier.label([o.prepared for o in ready], top_k) if ready else []
    predictions = dict(zip((id(o) for o in ready), labelled, strict=True))
    now = dt.datetime.now(dt.UTC)
    rows = []
    for outcome in outcomes:
        deleted = ClassificationRow(
            status="deleted",
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
            rows.append(deleted)
        elif labels is None or isinstance(labels, str):
            error = labels if isinstance(labels, str) else outcome.error
            rows.append(dataclasses.replace(deleted, status="error", error=error))
        else:
            rows.append(
                dataclasses.replace(
                    deleted,
                    status="ok",
                    label=labels[0].label,
                    score=labels[0].score,
                    top_k=[dataclasses.asdict(label) for label in labels],
                )
            )
    return rows
