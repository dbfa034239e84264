"""The model and the in-process run loop alone, per device, precision and batch size.

No S3 and no database: the corpus of bench/throughput.py (real-photo JPEGs of ~512 px) is held
in memory, so this runs wherever torch runs, a GPU machine without Dagster included. Measures

* ceiling – forward passes on model-ready batches (the folded model, as runs use it);
* loop    – classify_objects over the in-memory JPEGs (round and round for ``--seconds``): fetch
            threads decode and preprocess while the model classifies, exactly the run's
            pipeline minus S3 and the upserts; and the main thread's CPU ms per image (on a
            GPU that includes CUDA's spinning while the thread waits for a batch's labels);
* agreement – each precision's top-1 labels on the device against the fp32 model's on the CPU
            (the same preprocessed images): what the device's arithmetic changes.

Ends with one line: RESULT device=… <precision>_b<batch>_ceiling_img_s=… loop_img_s=… …
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures
from throughput import agreement, corpus, measure_ceiling, prepared, top1


def round_and_round(keys: list[str], seconds: float) -> Iterator[Any]:
    """Jobs for every key once, then the keys over again until ``seconds`` have passed."""
    from ai_assets.vision.stream import Job

    deadline = time.perf_counter() + seconds
    for i in itertools.count():
        if i >= len(keys) and time.perf_counter() >= deadline:
            return
        yield Job("bench", keys[i % len(keys)])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the bundled, converted one)")
    parser.add_argument("--device", help="torch device (default: CUDA when available)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--batch-sizes", default="32")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, help="decode threads (default cores + 1)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ai_assets.s3.objects import Fetched
    from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY
    from ai_assets.vision.model import ImageClassifier
    from ai_assets.vision.stream import classify_objects

    model = args.model
    if not model:
        from ai_assets.vision.convert import ensure_default_model

        model = str(ensure_default_model())
    images = corpus(args.images)
    concurrency = args.concurrency or DEFAULT_DOWNLOAD_CONCURRENCY
    figures: dict[str, object] = {}
    reference = ImageClassifier(model, "cpu", "fp32")
    pixels = prepared(reference, list(images.values()))  # the same for every precision
    expected = top1(reference, pixels)
    del reference
    for precision in args.precisions.split(","):
        classifier = ImageClassifier(model, args.device, precision)
        figures["device"] = classifier.device
        agrees = figures[f"{precision}_top1_agreement"] = agreement(
            top1(classifier, pixels), expected
        )
        print(f"{precision}: top-1 agreement with fp32 on the CPU {agrees:.4f}", flush=True)
        for batch_size in map(int, args.batch_sizes.split(",")):
            ceiling = measure_ceiling(classifier, pixels, batch_size, args.seconds)
            classifier.warm_up(batch_size)
            started, main = time.perf_counter(), time.thread_time()
            done = sum(
                len(rows)
                for rows in classify_objects(
                    round_and_round(list(images), args.seconds),
                    lambda key: Fetched(key=key, etag="e", size=len(images[key]), data=images[key]),
                    classifier,
                    batch_size=batch_size,
                    top_k=5,
                    concurrency=concurrency,
                )
            )
            loop = done / (time.perf_counter() - started)
            main_ms = (time.thread_time() - main) * 1000 / done
            name = f"{precision}_b{batch_size}"
            figures[f"{name}_ceiling_img_s"] = round(ceiling, 1)
            figures[f"{name}_loop_img_s"] = round(loop, 1)
            figures[f"{name}_loop_main_thread_ms"] = round(main_ms, 3)
            print(
                f"{name}: ceiling {ceiling:,.1f} images/s; loop {loop:,.1f} images/s, "
                f"main thread {main_ms:.3f} ms per image",
                flush=True,
            )
    figures["decode_threads"] = concurrency
    figures["cpus"] = os.cpu_count()
    print_figures(figures, ["device"])


if __name__ == "__main__":
    main()
