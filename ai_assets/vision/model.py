"""The image-classification model: a transformers checkpoint, folded, loaded once, batched.

torch and transformers are imported only when a model is loaded, so importing this module
stays cheap. Nothing here knows about S3, the tables or Dagster.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_assets.settings import (
    DEFAULT_DECODE_CONCURRENCY,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_PRECISION,
    available_cores,
)
from ai_assets.vision.decode import EncodedJpeg, ImageError, decode_image, decode_or_keep_jpeg
from ai_assets.vision.labels import Label
from ai_assets.vision.threads import loading, torch_threads, tune_allocator

if TYPE_CHECKING:
    import torch

    from ai_assets.vision.preprocess import FastPreprocessor
    from ai_assets.vision.workers import DecodeProcesses, SharedSlots


def auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: ``AI_ASSETS_PRECISION`` → torch dtype. fp16 and bf16 run on GPU tensor cores and on CPUs with
#: AVX512-FP16 / AMX; fp16 keeps more mantissa, so it changes fewer labels (bench/feed.py).
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: CPU seconds a core spends to fetch, decode and crop one image here (GET 0.12, decode 0.65,
#: preprocess 0.39 ms in bench/feed.py's run): the feed that a model on one thread must keep up
#: with (``choose_model_threads``).
FEED_CORE_S_PER_IMAGE = 0.0012


def choose_model_threads(first_batch_s_per_image: float, threads: int) -> int:
    """The threads a CPU model runs on, from its first batch on torch's default ``threads``.

    One where even then it keeps up with the feed on the other cores: on one thread it takes
    at most ``threads`` times as long. After every batch each idle OpenMP thread of torch spins
    before it sleeps (libgomp's default), CPU that such a model's threads cannot pay back. On 2
    cores a near-zero model's batch of 32 took 5 ms and 16.5 ms of CPU on torch's 2 threads,
    7.5 ms and 7.5 ms on one; its run processes spent 2.39-2.59 CPU ms per image in the loop,
    1.71-1.94 on one thread. The bundled model (~8 ms per image on 2 threads) keeps them.
    """
    alone = first_batch_s_per_image * threads
    return 1 if alone * (threads - 1) < FEED_CORE_S_PER_IMAGE else threads


#: Cores from which a model on an accelerator gets decode processes unless told otherwise. On
#: an H200 node's 16 cores the fetch threads kept ~3.3 cores decoding (they share one GIL)
#: while the model waited; a worker process spends ~11 % more CPU per image than a thread (2
#: cores, bench/feed.py: 1.413 against 1.269 ms). So cores - 2 workers outdo the threads from
#: ~6-7 cores on.
DECODE_PROCESSES_MIN_CORES = 8


def choose_decode_processes(
    setting: int | None, device: str, cores: int, device_decode: bool = False
) -> int:
    """A run's decode processes: ``setting`` when given (0: the fetch threads decode); else
    all cores but two for a model on an accelerator, with at least DECODE_PROCESSES_MIN_CORES,
    that the CPU feeds (not nvJPEG); the run's main thread and its fetch threads keep two.

    On the CPU the model shares the cores with the feed, and the threads cost less CPU.
    """
    if setting is not None:
        return setting
    on_cpu = device.partition(":")[0] == "cpu"
    if on_cpu or device_decode or cores < DECODE_PROCESSES_MIN_CORES:
        return 0
    return cores - 2


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
        device_decode: bool = False,
        decode_processes: int = 0,
    ) -> None:
        import torch
        from transformers import pipeline

        from ai_assets.vision.preprocess import build_preprocessor

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        tune_allocator()
        self.device = device or auto_device()
        self.precision = precision
        self.dtype = getattr(torch, PRECISIONS[precision])
        classifier = pipeline("image-classification", model=model, device="cpu")
        self.preprocessor = build_preprocessor(classifier.image_processor)
        #: BatchNorm layers folded into their convs (output checked against the unfolded model)
        self.model, self.folded = self._folded_and_placed(classifier.model, fold)
        self.min_decode_side = self.preprocessor.min_decode_side if jpeg_draft else 0
        self.on_device = self._device_decoding(device_decode, classifier.image_processor)
        self.workers = self._decode_workers(decode_processes)
        self.model_id = model
        self.model_revision = _revision(self.model, model)
        id2label = self.model.config.id2label or {}
        self.labels = {int(i): str(label) for i, label in id2label.items()}
        self._on_cpu = torch.device(self.device).type == "cpu"
        #: torch's threads for the model's forward passes on the CPU, at most the cores a CPU
        #: limit leaves (torch counts the node's: on 2 cores limited to 1, the bundled model
        #: did 47 images/s on 2 threads, 62 on 1); the first warm-up may make it one
        #: (``choose_model_threads``)
        self.threads = min(torch.get_num_threads(), available_cores())
        self._warm: set[int] = set()
        self._calls_cpu = 0.0  # the callers' threads inside ``start`` (cpu.Meter)
        self._calls_lock = threading.Lock()

    def _folded_and_placed(self, network: Any, fold: bool) -> tuple[Any, int]:
        """The pipeline's model with its BatchNorms folded, on the device in its precision, and
        how many were folded.

        Loaded and folded on the CPU: its fp32 convolutions are exact, where a GPU's TF32 ones
        differ by more than the fold check allows (measured on an H200: 0.02).
        """
        import torch

        from ai_assets.vision.fold import fold_batch_norms
        from ai_assets.vision.preprocess import reference_batch

        network = network.eval().float()  # fold in fp32, whatever the checkpoint's dtype
        folded = 0
        if fold:
            example = reference_batch(self.preprocessor, "cpu")
            folded = fold_batch_norms(network, lambda: network(pixel_values=example).logits)
        # transformers wraps PreTrainedModel.to in a decorator whose signature pyright misreads
        placed = network.to(self.device, self.dtype, memory_format=torch.channels_last)  # pyright: ignore[reportArgumentType]
        return placed, folded

    def _device_decoding(self, asked: bool, processor: Any) -> FastPreprocessor | None:
        """The fast path that decodes and resizes plain JPEGs on the device, batch by batch.

        Where asked for (``device_decode``), on CUDA with torchvision, for a fast path it
        reproduces. Off by default: nvJPEG's pixels are not libjpeg-turbo's (mean 0.6 levels
        apart, 6.9 % of them by more than 2 on an H200), which changed 2.3-2.6 % of top-1
        labels against transformers' own path there (docs/scaling.md).
        """
        from ai_assets.vision.device_decode import nvjpeg_available
        from ai_assets.vision.preprocess import FastPreprocessor, reproduces_on_device

        preprocessor = self.preprocessor
        if (
            asked
            and isinstance(preprocessor, FastPreprocessor)
            and nvjpeg_available(self.device)
            and reproduces_on_device(preprocessor, processor, self.device)
        ):
            return preprocessor
        return None

    def _decode_workers(self, count: int) -> DecodeProcesses | None:
        """``count`` worker processes that decode and crop instead of the fetch threads
        (vision.workers): for many cores, whose threads would share one GIL. The fast path
        only: a processor runs in the threads."""
        from ai_assets.vision.preprocess import FastPreprocessor
        from ai_assets.vision.workers import DecodeProcesses, Recipe

        preprocessor = self.preprocessor
        if not count or not isinstance(preprocessor, FastPreprocessor):
            return None
        recipe = Recipe(preprocessor, self.min_decode_side)
        return DecodeProcesses(recipe, count)

    @property
    def decode_concurrency(self) -> int:
        """Threads preparing objects at once: the threads, which share the GIL (nvJPEG's header
        reads and CPU fallbacks included), or as many as worker processes, whose hand-over is
        a write to a pipe (their queues hold the objects beyond)."""
        return self.decode_processes or DEFAULT_DECODE_CONCURRENCY

    @property
    def decode_processes(self) -> int:
        """The worker processes that decode for this model (0: the fetch threads do)."""
        return self.workers.count if self.workers is not None and self.on_device is None else 0

    @property
    def decoding(self) -> str:
        """Where this process decodes images, in words (a run's metadata)."""
        if self.on_device is not None:
            return f"nvJPEG on {self.device} (plain JPEGs), fetch threads (the others)"
        if count := self.decode_processes:
            return f"{count} decode process{'es' if count != 1 else ''}"
        return f"fetch threads, at most {self.decode_concurrency} at once"

    def decode_pids(self) -> list[int]:
        """The decode processes' pids (their CPU is the run's too: cpu.Meter)."""
        return self.workers.pids if self.workers is not None else []

    @property
    def call_cpu_seconds(self) -> float:
        """CPU the calling threads have spent in the model so far: inside ``start``, the
        forward passes (on the CPU, the calling thread leads torch's OpenMP team) and their
        top-k, and on CUDA waiting for the labels it returns."""
        return self._calls_cpu

    def _add_call_cpu(self, seconds: float) -> None:
        with self._calls_lock:
            self._calls_cpu += seconds

    @property
    def model_threads(self) -> int:
        """The CPU threads torch runs the model on; 0 on a GPU (a run's metadata)."""
        return self.threads if self._on_cpu else 0

    def warm_up(self, batch_size: int) -> None:
        """Run one blank batch: oneDNN builds its kernels for a batch shape on first use.

        The first warm-up, at the batch size the caller runs, also chooses the model's threads.
        """
        if batch_size in self._warm:
            return
        blank = self.preprocess(np.zeros((256, 256, 3), np.uint8))
        started = time.perf_counter()
        self.predict([blank] * batch_size, top_k=1)
        if not self._warm and self._on_cpu:
            per_image = (time.perf_counter() - started) / batch_size
            self.threads = choose_model_threads(per_image, self.threads)
        self._warm.add(batch_size)

    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
        """Decode at the smallest JPEG scale that still covers the model's input size."""
        return decode_image(data, max_pixels, self.min_decode_side)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """One image's pixels → the tensor ``predict`` batches (run in worker threads)."""
        return self.preprocessor(pixels)

    def prepare(
        self, data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> torch.Tensor | EncodedJpeg:
        """Object bytes → what ``ModelBatch.put`` takes; raises ImageError (worker threads).

        A model-ready tensor, or with decoding on the device a plain JPEG whose header passed.
        """
        if self.on_device is None:
            if self.workers is not None:
                return self.workers.prepare(data, max_pixels)
            return self.preprocess(self.decode(data, max_pixels))
        image = decode_or_keep_jpeg(data, max_pixels, self.min_decode_side)
        return image if isinstance(image, EncodedJpeg) else self.preprocess(image)

    def batch(self, size: int) -> ModelBatch:
        """Room for ``size`` prepared images, filled by the threads that prepare them, or
        where processes decode, by those processes in shared memory."""
        if self.decode_processes and self.workers is not None:
            return HandedBatch(self, self.workers, size)
        return ModelBatch(self, self.preprocessor.buffer(size, self.device))

    def predict(self, pixel_values: Sequence[torch.Tensor], top_k: int) -> list[list[Label]]:
        """Top-``top_k`` labels for a batch of preprocessed images (``preprocess``'s tensors)."""
        if not pixel_values:
            return []
        return self.classify_batch(self.preprocessor.collate(pixel_values, self.device), top_k)

    def classify_batch(self, batch: torch.Tensor, top_k: int) -> list[list[Label]]:
        """Top-``top_k`` labels for a model-ready ``(N, 3, H, W)`` batch: the model alone."""
        return self.start(batch, top_k)()

    def start(self, batch: torch.Tensor, top_k: int) -> Callable[[], list[list[Label]]]:
        """Run the model on ``batch``; the call it returns waits for the top-``top_k`` labels.

        On CUDA the model's kernels are queued and the scores come back asynchronously, so the
        calling thread goes on (the pipeline builds the previous batch's rows meanwhile).
        """
        import torch

        started = time.thread_time()
        with torch.inference_mode(), torch_threads(self.threads):  # the calling thread's
            logits = self.model(pixel_values=batch.to(self.dtype)).logits
            scores, indices = logits.float().softmax(dim=-1).topk(min(top_k, logits.shape[-1]))
            done = None
            if scores.is_cuda:
                scores = scores.to("cpu", non_blocking=True)
                indices = indices.to("cpu", non_blocking=True)
                done = torch.cuda.Event(blocking=True)  # its waiter sleeps, never spins
                done.record()
        self._add_call_cpu(time.thread_time() - started)

        def labels() -> list[list[Label]]:
            if done is not None:
                waiting = time.thread_time()
                done.synchronize()  # the model's time, in this thread
                self._add_call_cpu(time.thread_time() - waiting)
            names = self.labels
            return [
                [Label(names[i], s) for s, i in zip(row_s, row_i, strict=True)]
                for row_s, row_i in zip(scores.tolist(), indices.tolist(), strict=True)
            ]

        return labels


class ModelBatch:
    """One batch of model input being assembled (the pipeline's ``Batch``, see stream.py)."""

    def __init__(self, classifier: ImageClassifier, buffer: Any) -> None:
        self.classifier = classifier
        self.buffer = buffer
        self.encoded: dict[int, EncodedJpeg] = {}  # slots whose JPEG the device decodes

    def fill(self, slot: int, data: bytes, max_pixels: int) -> None:
        self.put(slot, self.classifier.prepare(data, max_pixels))

    def put(self, slot: int, prepared: torch.Tensor | EncodedJpeg) -> None:
        if isinstance(prepared, EncodedJpeg):
            self.encoded[slot] = prepared
        else:
            self.classifier.preprocessor.put(self.buffer, slot, prepared)

    def label(self, slots: Sequence[int], top_k: int) -> Callable[[], list[list[Label] | str]]:
        refused = self._refused_before(slots)
        placed, refused_on_device = self._decode_on_device([s for s in slots if s in self.encoded])
        refused |= refused_on_device
        kept = [slot for slot in slots if slot not in refused]
        labelled = self.classifier.start(self._model_input(kept, placed), top_k) if kept else None

        def labels() -> list[list[Label] | str]:
            found = iter(labelled() if labelled else [])
            return [refused[slot] if slot in refused else next(found) for slot in slots]

        return labels

    def _refused_before(self, slots: Sequence[int]) -> dict[int, str]:
        """Slots refused before labelling, with why: none here, where ``fill`` raises."""
        return {}

    def _model_input(self, slots: list[int], placed: dict[int, torch.Tensor]) -> torch.Tensor:
        classifier = self.classifier
        if placed:
            assert classifier.on_device is not None
            return classifier.on_device.model_input(self.buffer, slots, classifier.device, placed)
        return classifier.preprocessor.model_input(self.buffer, slots, classifier.device)

    def _decode_on_device(self, slots: list[int]) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """The slots' JPEGs decoded and cropped on the device (``placed``), or else on the CPU
        path, which either prepares them or says why not (``refused``)."""
        from ai_assets.vision.device_decode import decode_jpegs

        classifier, preprocessor = self.classifier, self.classifier.on_device
        if not slots or preprocessor is None:
            return {}, {}
        jpegs = [self.encoded[slot] for slot in slots]
        placed: dict[int, torch.Tensor] = {}
        refused: dict[int, str] = {}
        for slot, jpeg, image in zip(
            slots, jpegs, decode_jpegs(jpegs, classifier.device), strict=True
        ):
            if image is not None:
                placed[slot] = preprocessor.geometry.apply_device(image)
                continue
            try:  # the CPU's decoder decides: an error row, or the image after all
                pixels = classifier.preprocess(
                    classifier.decode(jpeg.data, jpeg.width * jpeg.height)
                )
            except ImageError as exc:
                refused[slot] = str(exc)
            else:
                placed[slot] = pixels.to(classifier.device)
        return placed, refused


class HandedBatch(ModelBatch):
    """A batch that decode processes fill in shared memory (``AI_ASSETS_DECODE_PROCESSES``),
    page-locked for a model on CUDA."""

    def __init__(self, classifier: ImageClassifier, workers: DecodeProcesses, size: int) -> None:
        device = classifier.device
        dtype = workers.recipe.preprocessor.buffer_dtype(device)
        locked = workers.page_lock and device.startswith("cuda")
        self.shared = workers.lease(size, dtype, locked)
        super().__init__(classifier, self.shared.tensor)
        self.workers = workers
        self.handed: dict[int, Future[None]] = {}  # each slot's object, as a worker answers
        self._release = weakref.finalize(self, _release, workers, self.shared, self.handed)

    def fill(self, slot: int, data: bytes, max_pixels: int) -> None:
        self.handed[slot] = self.workers.submit(data, max_pixels, self.shared, slot)

    def label(self, slots: Sequence[int], top_k: int) -> Callable[[], list[list[Label] | str]]:
        labelled = super().label(slots, top_k)
        if not self.shared.page_locked:  # read already: by the model, or copied to staging
            self._release()
            return labelled

        def labels() -> list[list[Label] | str]:
            try:
                return labelled()
            finally:  # the copy by DMA, queued before the model, is done once its answers are
                self._release()

        return labels

    def _refused_before(self, slots: Sequence[int]) -> dict[int, str]:
        """Once the decode processes have answered for the slots, why they refused some; a bug
        in a worker fails the run."""
        handed = {slot: self.handed[slot] for slot in slots if slot in self.handed}
        futures.wait(handed.values())  # one wake-up for the batch, not one per object
        refused = {}
        for slot, future in handed.items():
            error = future.exception()
            if isinstance(error, ImageError):
                refused[slot] = str(error)
            elif error is not None:
                raise error
        return refused


def _release(
    workers: DecodeProcesses, shared: SharedSlots, handed: dict[int, Future[None]]
) -> None:
    """A batch's shared slots back to ``workers``, once no worker writes there any more (a
    batch given up on, never labelled, may still have objects queued)."""
    writing = {future for future in handed.values() if not future.done()}
    if not writing:
        workers.release(shared)
        return
    lock = threading.Lock()

    def written(future: Future[None]) -> None:
        with lock:
            writing.discard(future)
            if writing:
                return
        workers.release(shared)

    for future in list(writing):
        future.add_done_callback(written)


def _revision(model: Any, name: str) -> str:
    """The hub commit when there is one, else a content hash of the local weights."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return str(commit)
    digest = hashlib.sha256()
    for weights in sorted(Path(model.config.name_or_path or name).glob("*.safetensors")):
        digest.update(weights.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


def load_classifier(
    model: str,
    device: str | None = None,
    precision: str = DEFAULT_PRECISION,
    jpeg_draft: bool = True,
    device_decode: bool = False,
    decode_processes: int | None = 0,
) -> ImageClassifier:
    """Load a model once per process; every run in the process shares it, however its
    arguments are spelled (defaults omitted or given, the device named or chosen).

    ``decode_processes`` None: chosen for the device and the cores (``choose_decode_processes``).
    """
    device = device or auto_device()
    processes = choose_decode_processes(decode_processes, device, available_cores(), device_decode)
    return _loaded(model, device, precision, jpeg_draft, device_decode, processes)


@functools.lru_cache(maxsize=4)
def _loaded(
    model: str,
    device: str,
    precision: str,
    jpeg_draft: bool,
    device_decode: bool,
    decode_processes: int,
) -> ImageClassifier:
    from ai_assets.vision.workers import start_fork_server

    if decode_processes:  # their fork server imports torch while the model loads
        start_fork_server()
    classifier = ImageClassifier(
        model,
        device,
        precision,
        jpeg_draft,
        device_decode=device_decode,
        decode_processes=decode_processes,
    )
    if classifier.workers and classifier.on_device is None:  # they decode: started while the
        classifier.workers.start(wait=False)  # caller warms the model up, not at its first object
    return classifier
