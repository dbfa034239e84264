"""Fetch → decode → predict, overlapped: objects stream through a bounded window of threads.

The pipeline works with any ``Classifier``: the in-process model (``vision.model.ImageClassifier``)
or the model service's client (``service.client.RemoteClassifier``).
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from ai_assets.db.results import ClassificationRow
from ai_assets.s3.objects import Fetched
from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY, DEFAULT_MAX_IMAGE_PIXELS
from ai_assets.vision.decode import ImageError
from ai_assets.vision.labels import Label
from ai_assets.vision.rows import Job, Outcome, result_rows
from ai_assets.vision.threads import yield_to_inference

Answer = list[Label] | str | None  # an outcome's labels, why it has none, or None: not labelled
Labelled = Callable[[], list[Answer]]  # waits for a started batch's answers


class Batch(Protocol):
    """One batch's model input, assembled slot by slot by the threads that prepare it."""

    def fill(self, slot: int, data: bytes, max_pixels: int) -> None:
        """An object's bytes prepared into its slot (runs in worker threads); raises
        ImageError, or where the object is prepared later (decode processes, the model
        service), ``label`` answers with the reason instead of labels."""
        ...

    def label(self, slots: Sequence[int], top_k: int) -> Callable[[], list[list[Label] | str]]:
        """Start labelling the filled slots; the call it returns waits for their labels, in
        order, or why each object could not be classified.

        On an accelerator the model labels one batch while this thread builds the previous
        batch's rows and assembles the next (``classify_objects``).
        """
        ...


class Classifier(Protocol):
    """What the fetch → decode → predict pipeline needs: the in-process model or the service."""

    model_id: str
    model_revision: str

    @property
    def decode_concurrency(self) -> int:
        """Objects it prepares at once at most (the threads beyond fetch or wait)."""
        ...

    def batch(self, size: int) -> Batch:
        """Room for ``size`` prepared objects."""
        ...


def prepare(
    job: Job,
    fetch: Callable[[str], Fetched],
    max_pixels: int,
    batch: Batch,
    slot: int,
    decoding: threading.Semaphore,
) -> Outcome:
    """Fetch one object and fill its batch slot with it (runs in a worker thread); the filling
    waits for one of the ``decoding`` turns."""
    fetched = fetch(job.object_key)
    if fetched.deleted or fetched.error:
        return Outcome(job, fetched, error=fetched.error)
    try:
        with decoding:
            batch.fill(slot, fetched.data or b"", max_pixels)
    except ImageError as exc:
        return Outcome(job, fetched, error=str(exc))
    return Outcome(job, fetched, ready=True)


def classify_objects(
    jobs: Iterable[Job],
    fetch: Callable[[str], Fetched],
    classifier: Classifier,
    *,
    batch_size: int,
    top_k: int,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    concurrency: int = DEFAULT_DOWNLOAD_CONCURRENCY,
    decode_concurrency: int | None = None,
    run_id: str | None = None,
) -> Iterator[list[ClassificationRow]]:
    """Yield result rows batch by batch; downloads and decoding overlap with inference.

    At most ``2 * batch_size`` objects are in flight, however many a run covers. ``concurrency``
    threads fetch, at most ``decode_concurrency`` (default: the classifier's) decoding at once,
    each object straight into its slot (the n-th: batch n // batch_size), so this thread only
    hands filled batches to the model. Bad images become error rows; their batch goes on. A
    batch's rows come once the next batch is being labelled: an accelerator never waits for them.
    """
    window = max(2 * batch_size, concurrency)
    pool = ThreadPoolExecutor(concurrency, "fetch", initializer=yield_to_inference)
    decoding = threading.BoundedSemaphore(decode_concurrency or classifier.decode_concurrency)
    pending: collections.deque[Future[Outcome]] = collections.deque()
    batches: collections.deque[Batch] = collections.deque()
    queue = iter(jobs)
    submitted = 0

    def refill() -> None:
        nonlocal submitted
        for job in itertools.islice(queue, window - len(pending)):
            slot = submitted % batch_size
            if slot == 0:
                batches.append(classifier.batch(batch_size))
            batch = batches[-1]
            pending.append(pool.submit(prepare, job, fetch, max_pixels, batch, slot, decoding))
            submitted += 1

    labelling: tuple[Sequence[Outcome], Labelled] | None = None
    try:
        refill()
        while pending:
            outcomes = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            batch = batches.popleft()
            refill()
            started = outcomes, _label(outcomes, batch, top_k)
            if labelling is not None:  # the previous batch's rows, while this one is labelled
                yield _rows(classifier, run_id, *labelling)
            labelling = started
        if labelling is not None:
            yield _rows(classifier, run_id, *labelling)
    except BaseException:  # a failure, an interrupted run, a consumer that stopped early
        pool.shutdown(wait=False, cancel_futures=True)  # not behind a slow GET in flight
        raise
    pool.shutdown()


def _rows(
    classifier: Classifier, run_id: str | None, outcomes: Sequence[Outcome], answers: Labelled
) -> list[ClassificationRow]:
    """A labelled batch's result rows, once its labels are in."""
    model_id, revision = classifier.model_id, classifier.model_revision
    return result_rows(outcomes, answers(), model_id, revision, run_id)


def _label(outcomes: Sequence[Outcome], batch: Batch, top_k: int) -> Labelled:
    """Start labelling the outcomes that are in their slots, in one call; the call it returns
    gives each outcome's answer (None: it never reached the model)."""
    ready = [slot for slot, outcome in enumerate(outcomes) if outcome.ready]
    labelled = batch.label(ready, top_k) if ready else lambda: []

    def answers() -> list[Answer]:
        found: list[Answer] = [None] * len(outcomes)
        for slot, labels in zip(ready, labelled(), strict=True):
            found[slot] = labels
        return found

    return answers
