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
            yield _classify(outcomes, classifier, top_k, run_id)


def _classify(
    outcomes: Sequence[Outcome], classifier: Classifier, top_k: int, run_id: str | None
) -> list[ClassificationRow]:
    """Label the outcomes that were prepared, in one call, and build every outcome's row."""
    ready = [i for i, outcome in enumerate(outcomes) if outcome.prepared is not None]
    labelled = classifier.label([outcomes[i].prepared for i in ready], top_k) if ready else []
    answers: list[list[Label] | str | None] = [None] * len(outcomes)
    for i, labels in zip(ready, labelled, strict=True):
        answers[i] = labels
    return result_rows(outcomes, answers, classifier.model_id, classifier.model_revision, run_id)
