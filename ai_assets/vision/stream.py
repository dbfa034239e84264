"""Fetch → decode → predict, overlapped: objects stream through a bounded window of threads.

The pipeline works with any ``Classifier``: the in-process model (``vision.model.ImageClassifier``)
or the model service's client (``service.client.RemoteClassifier``).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ai_assets.db.results import ClassificationRow
from ai_assets.s3.objects import Fetched
from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY, DEFAULT_MAX_IMAGE_PIXELS
from ai_assets.vision.decode import ImageError
from ai_assets.vision.labels import Label
from ai_assets.vision.rows import Job, Outcome, result_rows
from ai_assets.vision.threads import yield_to_inference


class Batch(Protocol):
    """One batch's model input, assembled slot by slot by the threads that prepare it."""

    def put(self, slot: int, prepared: Any) -> None:
        """A prepared object into its slot (runs in worker threads)."""
        ...

    def label(self, slots: Sequence[int], top_k: int) -> list[list[Label] | str]:
        """Labels per filled slot, in order, or why that object could not be classified."""
        ...


class Classifier(Protocol):
    """What the fetch → decode → predict pipeline needs: the in-process model or the service."""

    model_id: str
    model_revision: str

    def prepare(self, data: bytes, max_pixels: int) -> Any:
        """Object bytes → what ``Batch.put`` takes; raises ImageError (runs in worker threads)."""
        ...

    def batch(self, size: int) -> Batch:
        """Room for ``size`` prepared objects."""
        ...


def prepare(
    job: Job,
    fetch: Callable[[str], Fetched],
    classifier: Classifier,
    max_pixels: int,
    batch: Batch,
    slot: int,
) -> Outcome:
    """Fetch, decode and preprocess one object into its batch slot (runs in a worker thread)."""
    fetched = fetch(job.object_key)
    if fetched.deleted or fetched.error:
        return Outcome(job, fetched, error=fetched.error)
    try:
        batch.put(slot, classifier.prepare(fetched.data or b"", max_pixels))
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
    run_id: str | None = None,
) -> Iterator[list[ClassificationRow]]:
    """Yield result rows batch by batch; downloads and decoding overlap with inference.

    At most ``2 * batch_size`` objects are in flight, so memory stays bounded however many
    objects a run covers. Each object goes straight into its slot of its batch (the n-th
    object: batch n // batch_size), so this thread only hands filled batches to the model.
    Bad images become error rows; the rest of their batch goes on.
    """
    window = max(2 * batch_size, concurrency)
    pool = ThreadPoolExecutor(concurrency, "fetch", initializer=yield_to_inference)
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
            pending.append(pool.submit(prepare, job, fetch, classifier, max_pixels, batch, slot))
            submitted += 1

    try:
        refill()
        while pending:
            outcomes = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            batch = batches.popleft()
            refill()
            yield _classify(outcomes, batch, top_k, classifier, run_id)
    except BaseException:  # a failure, an interrupted run, a consumer that stopped early
        pool.shutdown(wait=False, cancel_futures=True)  # not behind a slow GET in flight
        raise
    pool.shutdown()


def _classify(
    outcomes: Sequence[Outcome],
    batch: Batch,
    top_k: int,
    classifier: Classifier,
    run_id: str | None,
) -> list[ClassificationRow]:
    """Label the outcomes that are in their slots, in one call, and build every outcome's row."""
    ready = [slot for slot, outcome in enumerate(outcomes) if outcome.ready]
    labelled = batch.label(ready, top_k) if ready else []
    answers: list[list[Label] | str | None] = [None] * len(outcomes)
    for slot, labels in zip(ready, labelled, strict=True):
        answers[slot] = labels
    return result_rows(outcomes, answers, classifier.model_id, classifier.model_revision, run_id)
