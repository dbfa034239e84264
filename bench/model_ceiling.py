"""The model and the run's loop alone, per device, precision and batch size (bench/gpu.sh).

No database: the corpus (real-photo JPEGs of ~512 px) is held in memory, or with
``--sources memory,s3`` also in a SeaweedFS on this machine, so this runs wherever torch runs,
a GPU machine without Dagster included. Measures

* ceiling – forward passes on model-ready batches (the folded model, as runs use it);
* loop    – classify_objects over the JPEGs (round and round for ``--seconds``): fetch threads
            decode and preprocess while the model classifies, exactly the run's pipeline minus
            the upserts; and the main thread's CPU ms per image (on a GPU that includes CUDA's
            spinning while the thread waits for a batch's labels). Per source (memory: no GET;
            s3: every image fetched as runs fetch, through obstore) and per decoding: "cpu"
            (libjpeg-turbo in the fetch threads) and, where nvJPEG is, "device" (what
            AI_ASSETS_GPU_JPEG_DECODE turns on: plain JPEGs decoded by nvJPEG and resized on
            the GPU batch by batch, the fetch threads reading headers) and, with
            ``--decode-processes N``, "processes" (AI_ASSETS_DECODE_PROCESSES: N worker processes
            decode and crop, the fetch threads hand over; with ``--pageable-processes`` also
            "processes_pageable": on CUDA their slots not page-locked, so that each batch
            crosses through the driver's staging copy); with the CPU time of the process
            (and of its decode processes) and of each stage (feed.py's stages);
* agreement – each precision's and decoding's top-1 labels through that loop against
            transformers' own path (Pillow's full decode, the model's image processor, fp32 on
            the CPU), on the corpus and the sample photos.

Ends with one line: RESULT device=… <precision>_b<batch>_ceiling_img_s=… loop_img_s=… …
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures
from throughput import agreement, corpus, measure_ceiling, prepared


def round_and_round(keys: list[str], seconds: float) -> Iterator[Any]:
    """Jobs for every key once, then the keys over again until ``seconds`` have passed."""
    from ai_assets.vision.stream import Job

    deadline = time.perf_counter() + seconds
    for i in itertools.count():
        if i >= len(keys) and time.perf_counter() >= deadline:
            return
        yield Job("bench", keys[i % len(keys)])


def transformers_labels(model: str, images: dict[str, bytes]) -> dict[str, str]:
    """Top-1 per image through transformers' own path, in fp32 on the CPU."""
    from concurrent.futures import ThreadPoolExecutor

    from feed import pillow
    from transformers import AutoImageProcessor

    from ai_assets.vision.model import ImageClassifier
    from ai_assets.vision.preprocess import ProcessorPreprocessor

    classifier = ImageClassifier(model, "cpu", "fp32")
    processor = ProcessorPreprocessor(AutoImageProcessor.from_pretrained(model))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        pixels = list(pool.map(lambda data: processor(pillow(data)), images.values()))
    labels = [
        top[0].label
        for i in range(0, len(pixels), 32)
        for top in classifier.classify_batch(processor.collate(pixels[i : i + 32], "cpu"), 1)
    ]
    return dict(zip(images, labels, strict=True))


@dataclasses.dataclass
class Loop:
    """One pass of the run's loop: its rate, and per image its CPU and main-thread ms."""

    img_s: float
    main_thread_ms: float
    cpu_ms: float
    labels: dict[str, str]  # each key's top-1


def timed_loop(
    keys: list[str],
    fetch: Callable[[str], Any],
    classifier: Any,
    batch_size: int,
    concurrency: int,
    seconds: float = 0.0,
    decode_concurrency: int | None = None,
) -> Loop | None:
    """The run's loop over ``keys`` (round and round for ``seconds``), or None if it failed:
    one variant must not cost a device run the others.

    Prints the process's CPU ms per image and each stage's (feed.py's, on the threads running
    them; on CUDA a stage that waits for the GPU spins, and counts that as CPU).
    """
    from feed import Stages, instrumented

    from ai_assets.cpu import Meter
    from ai_assets.vision.stream import classify_objects

    stages, labels, done = Stages(), {}, 0
    meter, started, main = Meter(classifier), time.perf_counter(), time.thread_time()
    try:
        with instrumented(stages):
            for rows in classify_objects(
                round_and_round(keys, seconds), fetch, classifier,
                batch_size=batch_size, top_k=5, concurrency=concurrency,
                decode_concurrency=decode_concurrency,
            ):  # fmt: skip
                done += len(rows)
                for row in rows:
                    labels.setdefault(row.s3_key, row.label or "")
    except Exception:
        traceback.print_exc()
        return None
    spent = meter.spent()  # with its decode processes' CPU
    workers = spent.decode_processes
    loop = Loop(
        done / (time.perf_counter() - started),
        (time.thread_time() - main) * 1000 / done,
        spent.total * 1000 / done,
        labels,
    )
    split = ", ".join(f"{k} {v * 1000 / done:.3f}" for k, v in stages.seconds.items() if v)
    if workers:
        split += f"; decode processes {workers * 1000 / done:.3f}"
    print(f"  {loop.cpu_ms:.3f} CPU ms per image; stages: {split}", flush=True)
    return loop


def decodings(classifier: Any, pageable: bool = False) -> dict[str, Callable[[], None]]:
    """Each decoding the classifier was loaded with, as the call that switches it to that one:
    "cpu" (the fetch threads), "device" (nvJPEG) and "processes" (decode worker processes);
    with ``pageable``, "processes_pageable": their slots not page-locked (the same as
    "processes" off CUDA, where no slot is: a dry run)."""
    on_device, workers = classifier.on_device, classifier.workers

    def switch(device: Any, processes: Any, page_lock: bool = True) -> Callable[[], None]:
        def to() -> None:
            classifier.on_device, classifier.workers = device, processes
            if processes is not None:
                processes.page_lock = page_lock
                processes.start()  # the workers' start (the fork server's imports) is no loop's

        return to

    return (
        {"cpu": switch(None, None)}
        | ({"device": switch(on_device, None)} if on_device else {})
        | ({"processes": switch(None, workers)} if workers else {})
        | ({"processes_pageable": switch(None, workers, False)} if workers and pageable else {})
    )


@contextlib.contextmanager
def sources(
    names: list[str], images: dict[str, bytes]
) -> Iterator[dict[str, Callable[[str], Any]]]:
    """A fetch per source: "memory" (the bytes at hand) and "s3" (a local SeaweedFS, obstore)."""
    from ai_assets.s3.objects import Fetched, ObjectFetcher

    def in_memory(key: str) -> Fetched:
        return Fetched(key=key, etag="e", size=len(images[key]), data=images[key])

    fetches: dict[str, Callable[[str], Any]] = {"memory": in_memory}
    with contextlib.ExitStack() as stack:
        if "s3" in names:
            from local_s3 import ACCESS, SECRET, local_s3
            from obstore.store import S3Store

            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            endpoint = stack.enter_context(local_s3(directory, "ceiling", images))
            store = S3Store(
                "ceiling", endpoint=endpoint, region="us-east-1", access_key_id=ACCESS,
                secret_access_key=SECRET, client_options={"allow_http": True},
            )  # fmt: skip  # as ImageBucketResource configures it for this endpoint
            fetches["s3"] = ObjectFetcher(None, "ceiling", 50 << 20, store)
        yield {name: fetches[name] for name in names}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the bundled, converted one)")
    parser.add_argument("--device", help="torch device (default: CUDA when available)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--batch-sizes", default="32")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, help="fetch threads (default cores + 1)")
    parser.add_argument(
        "--decode-concurrency", type=int, help="of them, decoding at once (default at most 4)"
    )
    parser.add_argument(
        "--decode-processes", type=int, default=0, help="N: also decode in N worker processes"
    )
    parser.add_argument(
        "--pageable-processes",
        action="store_true",
        help="also decode in processes into slots that are not page-locked (on CUDA)",
    )
    parser.add_argument("--sources", default="memory", help="memory, s3 or both")
    parser.add_argument("--no-agreement", action="store_true", help="skip the accuracy guard")
    parser.add_argument(
        "--device-decode",
        action="store_true",
        help="the nvJPEG path off CUDA too, libjpeg-turbo standing in for nvJPEG: a dry run",
    )
    return parser.parse_args()


@dataclasses.dataclass
class Bench:
    """What every precision's measurements share: the settings, the corpus, its fetches."""

    args: argparse.Namespace
    images: dict[str, bytes]
    everything: list[str]  # the corpus and the sample photos: the accuracy guard's keys
    expected: dict[str, str]  # transformers' own top-1 per key (empty: no guard)
    pixels: list[Any]  # model-ready images for the ceiling
    fetches: dict[str, Callable[[str], Any]]

    def fetch_threads(self, decode: str) -> int:
        """As a run's default: two per decode process, unless ``--concurrency`` says."""
        from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY, default_fetch_threads

        if decode.startswith("processes") and not self.args.concurrency:
            return default_fetch_threads(self.args.decode_processes)
        return self.args.concurrency or DEFAULT_DOWNLOAD_CONCURRENCY

    def agreement(self, classifier: Any, precision: str, decodes: dict) -> dict[str, float]:
        """Each decoding's top-1 agreement with transformers' path, through the run's loop."""
        figures = {}
        for decode in decodes if self.expected else ():
            decodes[decode]()
            done = timed_loop(
                self.everything, self.fetches["memory"], classifier, 64,
                self.fetch_threads(decode), decode_concurrency=self.args.decode_concurrency,
            )  # fmt: skip
            if done is None:
                continue
            labels = [done.labels[k] for k in self.expected]
            got = agreement(labels, list(self.expected.values()))
            prefix = precision if decode == "cpu" else f"{precision}_{decode}"
            figures[f"{prefix}_top1_agreement"] = got
            print(f"{precision}, {decode} decoding: top-1 agreement with transformers' "
                  f"path {got:.4f} on {len(self.expected)}", flush=True)  # fmt: skip
        return figures

    def speeds(self, classifier: Any, name: str, batch: int, decodes: dict) -> dict[str, float]:
        """The ceiling at ``batch``, then the loop per source and decoding."""
        args = self.args
        ceiling = measure_ceiling(classifier, self.pixels, batch, args.seconds).per_s
        figures = {f"{name}_ceiling_img_s": round(ceiling, 1)}
        print(f"{name}: ceiling {ceiling:,.1f} images/s", flush=True)
        classifier.warm_up(batch)
        for source, decode in itertools.product(self.fetches, decodes):
            decodes[decode]()
            print(f"{name}: loop from {source}, {decode} decoding:", flush=True)
            done = timed_loop(
                list(self.images), self.fetches[source], classifier, batch,
                self.fetch_threads(decode), args.seconds, args.decode_concurrency,
            )  # fmt: skip
            if done is None:
                continue
            kind = "" if source == "memory" else f"{source}_"
            kind += "" if decode == "cpu" else f"{decode}_"
            figures[f"{name}_{kind}loop_img_s"] = round(done.img_s, 1)
            figures[f"{name}_{kind}loop_main_thread_ms"] = round(done.main_thread_ms, 3)
            figures[f"{name}_{kind}loop_cpu_ms"] = round(done.cpu_ms, 3)
            print(f"  {done.img_s:,.1f} images/s, main thread {done.main_thread_ms:.3f} "
                  f"ms per image", flush=True)  # fmt: skip
        return figures

    def precision(self, precision: str) -> dict[str, Any]:
        """One precision's agreement, ceilings and loops."""
        from ai_assets.vision.model import ImageClassifier

        args = self.args
        classifier = ImageClassifier(
            args.model, args.device, precision, device_decode=True,
            decode_processes=args.decode_processes,
        )  # fmt: skip
        decodes = decodings(classifier, args.pageable_processes)
        figures: dict[str, Any] = {"device": classifier.device}
        figures |= self.agreement(classifier, precision, decodes)
        for batch in map(int, args.batch_sizes.split(",")):
            figures |= self.speeds(classifier, f"{precision}_b{batch}", batch, decodes)
        if classifier.workers:
            classifier.workers.close()
        return figures


def main() -> None:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ai_assets.settings import DEFAULT_DECODE_CONCURRENCY, DEFAULT_DOWNLOAD_CONCURRENCY
    from ai_assets.vision import device_decode
    from ai_assets.vision.model import ImageClassifier
    from ai_assets_dev.samples import sample_jpegs

    if args.device_decode:  # libjpeg-turbo stands in for nvJPEG (device_decode.decode_jpegs)
        device_decode.nvjpeg_available = lambda device: True
    if not args.model:
        from ai_assets.vision.convert import ensure_default_model

        args.model = str(ensure_default_model())
    images = corpus(args.images)
    photos = {f"photos/{name}.jpg": data for name, data in sample_jpegs().items()}
    expected = {} if args.no_agreement else transformers_labels(args.model, images | photos)
    reference = ImageClassifier(args.model, "cpu", "fp32")
    pixels = prepared(reference, list(images.values()))  # the same for every precision
    del reference
    figures: dict[str, object] = {}
    with sources(args.sources.split(","), images | photos) as fetches:
        bench = Bench(args, images, [*images, *photos], expected, pixels, fetches)
        for precision in args.precisions.split(","):
            figures |= bench.precision(precision)
    concurrency = args.concurrency or DEFAULT_DOWNLOAD_CONCURRENCY
    figures["fetch_threads"] = concurrency
    figures["decode_processes"] = args.decode_processes
    if args.decode_processes:
        figures["processes_fetch_threads"] = bench.fetch_threads("processes")
    figures["decode_threads"] = min(
        concurrency, args.decode_concurrency or DEFAULT_DECODE_CONCURRENCY
    )
    figures["cpus"] = os.cpu_count()
    print_figures(figures, ["device"])


if __name__ == "__main__":
    main()
