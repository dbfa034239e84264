"""The feed: the run process's own CPU per image around a near-zero-compute model.

The model is a one-layer ViT of 224 px with the bundled model's image processor and its 1,000
labels, so everything but the model is the real path. The corpus is N JPEGs (default 2,000) of
384–640 px made from the sample photos. Measured in one run, on this machine:

* memory – the run's loop (fetch ∥ decode ∥ preprocess, collate, model, rows, upsert into a real
  PostgreSQL) over images already in memory: no GET; and side by side, each lever undone alone:
  memory_pillow_decode (JPEGs decoded by Pillow, as before libjpeg-turbo's direct decode) and
  memory_pillow_resize (the preprocessing resize by Pillow, as before torch's); and
  memory_processes, decoding in one worker process per core (AI_ASSETS_DECODE_PROCESSES): its
  CPU includes the workers' (``_workers_ms``), and ``_parent_cpu_ms_no_model`` is what stays in
  the run's process, under its one GIL;
* s3     – the same loop, every image fetched from a local SeaweedFS as runs do (obstore); and
  side by side, s3_boto3, every GET through boto3 as before, and s3_before, boto3's GETs,
  Pillow's decode and Pillow's resize at once: the loop before this issue's per-image levers
  (a lower bound: its slot, row and upsert levers stay), ``s3_cut`` times the loop's CPU;
* decode – one thread decoding the corpus in full, and at 1/8 scale: entropy decoding alone,
  the part of a decode that no DCT scale or crop skips.

Side-by-side variants run interleaved, ``--rounds`` passes each (default 3), summed. Then:

* run    – the whole run as Dagster executes it (s3_image_sensor's tick first, untimed; then the
  runs it requests, in this process, with the model already loaded; ``--rounds`` times, every
  object classified again after the first: ``reclassify``), Dagster's storage on
  PostgreSQL as the Helm chart deploys it (its connections held: ai_assets.ops.storage); then
  the same runs again with nothing left to classify: Dagster's and the asset's fixed CPU per run
  (``run_fixed_cpu_s``), and the run's CPU per image beyond it; and that fixed CPU with
  dagster-postgres's own storage, a login per operation (``run_fixed_cpu_s_dagster_postgres``),
  and with Dagster's storage in SQLite, the embedded default's (``run_fixed_cpu_s_sqlite``: each
  run's events go to a SQLite file of its own);
* process – the same runs in run processes of their own, started as Dagster's run launchers
  start them (``dagster api execute_run``; a Kubernetes run pod runs the same command): the
  process's whole CPU per image, and apart, what it spends before its first image (Python,
  Dagster, the code location, the model's imports and load) and after its last row (the day's
  totals, the events, the interpreter's exit), which every run pays once whatever its size.

For each: images/s, the process's CPU ms per image, split by stage (the CPU time of the thread
doing each stage, wherever it runs: get, decode, preprocess, collate, model call with top-k,
rows, upsert) and "other" (the rest: thread pools, generators, and in "run" Dagster itself),
and the main thread's busy ms per image, with and without the model call it makes. torch runs
one thread, so the model's CPU is the calling thread's. Model excluded means: all CPU but the
"model" stage.

Then the accuracy guard: top-1 agreement of the run's path (with the bundled model, in fp32, fp16
and bf16) with transformers' own processor path in fp32, on corpus images and the sample photos.

Ends with: RESULT cpu_ms_per_image=… (run, model excluded) run_img_s=… memory_img_s=… …
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import io
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_s3 import local_s3
from report import print_figures

BUCKET = "feed"
STAGES = ("get", "decode", "preprocess", "collate", "model", "rows", "upsert")
#: A run's config that classifies its batch again, whole: a run classifies only what is not
#: current yet, so a measured run after the first would find nothing to do.
REDO = {"ops": {"image_classifications": {"config": {"reclassify": True}}}}


def corpus(n: int) -> dict[str, bytes]:
    """``n`` distinct JPEGs of 384–640 px made from the sample photos."""
    from throughput import corpus as photos

    return photos(n, sides=(384, 640), prefix="feed")


def near_zero_model(directory: Path, like: Path) -> str:
    """A one-layer 224 px ViT with ``like``'s image processor and labels: the model costs ~0."""
    import torch
    from transformers import AutoConfig, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    labels = {
        int(i): str(name) for i, name in (AutoConfig.from_pretrained(like).id2label or {}).items()
    }
    config = ViTConfig(
        image_size=224, patch_size=32, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(directory)
    shutil.copy(like / "preprocessor_config.json", directory / "preprocessor_config.json")
    return str(directory)


class Stages:
    """CPU seconds per stage, each measured on the thread that runs it."""

    def __init__(self) -> None:
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self.lock = threading.Lock()

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def stage(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self.lock:
                    self.seconds[name] += spent

        return stage


@contextlib.contextmanager
def instrumented(stages: Stages) -> Iterator[None]:
    """Every stage of the run's path timed where it is defined (undone afterwards)."""
    from ai_assets.db import results
    from ai_assets.s3.objects import ObjectFetcher
    from ai_assets.vision import device_decode, model, stream
    from ai_assets.vision.model import ImageClassifier
    from ai_assets.vision.preprocess import FastPreprocessor, Geometry

    patches = [
        (ObjectFetcher, "__call__", "get"),
        (ImageClassifier, "decode", "decode"),
        (ImageClassifier, "preprocess", "preprocess"),
        (FastPreprocessor, "put", "collate"),  # in the worker threads, slot by slot
        (ImageClassifier, "start", "model"),  # labels are built when the rows are
        (stream, "result_rows", "rows"),
        (results, "upsert_rows", "upsert"),
        # decoding on the device (CUDA): headers in the worker threads, the rest batch by batch
        (model, "decode_or_keep_jpeg", "header"),  # and the CPU decode of what is not plain
        (device_decode, "decode_jpegs", "device_decode"),
        (Geometry, "apply_device", "device_resize"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, stage in patches:
        setattr(owner, name, stages.timed(stage, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


@contextlib.contextmanager
def resized_by(classifier: Any, resize: str) -> Iterator[None]:
    """The classifier's preprocessing resizing with ``resize`` ("torch" or "pillow") for a while."""
    saved = classifier.preprocessor.resize
    classifier.preprocessor.resize = resize
    try:
        yield
    finally:
        classifier.preprocessor.resize = saved


@contextlib.contextmanager
def decoded_by_pillow() -> Iterator[None]:
    """Every JPEG decoded by Pillow for a while, as before libjpeg-turbo's direct decode (both
    the plain JPEGs' path and Pillow's path decode through ``_turbo_decode``)."""
    from ai_assets.vision import decode

    saved = decode._turbo_decode  # pyright: ignore[reportPrivateUsage]
    decode._turbo_decode = lambda data, width, height: None  # pyright: ignore[reportPrivateUsage]
    try:
        yield
    finally:
        decode._turbo_decode = saved  # pyright: ignore[reportPrivateUsage]


def decode_floor(images: list[bytes], rounds: int) -> dict[str, float]:
    """One thread's CPU ms per image to decode the corpus in full (as runs do) and at 1/8
    scale, where libjpeg-turbo's IDCT is a DC term and upsampling and colour conversion touch
    1/64 of the pixels: what is left is entropy decoding, which no scale or crop skips."""
    import simplejpeg

    spent = {"decode_full_ms": 0.0, "decode_eighth_ms": 0.0}
    for _ in range(rounds):
        for name, smallest in (("decode_full_ms", 0), ("decode_eighth_ms", 1)):
            started = time.thread_time()
            for data in images:
                simplejpeg.decode_jpeg(data, "RGB", min_width=smallest, min_height=smallest)
            spent[name] += time.thread_time() - started
    return {name: seconds * 1000 / (rounds * len(images)) for name, seconds in spent.items()}


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fixed_cpu(runs: Callable[[], None], times: int = 3) -> float:
    """CPU seconds of ``runs`` with nothing left to classify, the median of ``times``, after one
    untimed (an instance's first run creates what later ones reuse)."""
    runs()
    spent = []
    for _ in range(times):
        started = process_cpu()
        runs()
        spent.append(process_cpu() - started)
    return sorted(spent)[times // 2]


class Tally:
    """One variant's CPU, main-thread time, wall time and stages, summed over its passes; with
    ``classifier``, its decode processes' CPU too (``workers``, in ``cpu``)."""

    def __init__(self, classifier: Any = None) -> None:
        self.stages = Stages()
        self.classifier = classifier
        self.cpu = self.main = self.wall = self.workers = 0.0
        self.images = 0

    def add(self, images: int, work: Callable[[], None]) -> None:
        from ai_assets.cpu import Meter

        with instrumented(self.stages):
            meter, main, wall = Meter(self.classifier), time.thread_time(), time.perf_counter()
            work()
            self.wall += time.perf_counter() - wall
            self.main += time.thread_time() - main
            spent = meter.spent()  # the decode processes' too (children of the fork server)
        self.cpu += spent.total
        self.workers += spent.decode_processes
        self.images += images

    def figures(self, name: str) -> dict[str, float]:
        """Per image: images/s, CPU ms (all, model excluded), main thread, each stage, other;
        with decode processes, theirs and what stays in this process (under its one GIL)."""
        per_image = {s: self.stages.seconds[s] * 1000 / self.images for s in STAGES}
        total = self.cpu * 1000 / self.images
        workers = self.workers * 1000 / self.images
        print(f"{name}: {self.images / self.wall:,.0f} images/s, {total:.2f} CPU ms per image")
        figures = {
            f"{name}_img_s": self.images / self.wall,
            f"{name}_cpu_ms": total,
            f"{name}_cpu_ms_no_model": total - per_image["model"],
            f"{name}_main_thread_ms": self.main * 1000 / self.images,
            # the model is called on the main thread: what the thread does besides feeding it
            f"{name}_main_thread_no_model_ms": self.main * 1000 / self.images - per_image["model"],
            **{f"{name}_{stage}_ms": value for stage, value in per_image.items()},
            f"{name}_other_ms": total - sum(per_image.values()) - workers,
        }
        if self.classifier is not None:
            figures[f"{name}_workers_ms"] = workers
            figures[f"{name}_parent_cpu_ms_no_model"] = total - per_image["model"] - workers
        return figures


Variant = tuple[Callable[[], contextlib.AbstractContextManager[Any]], Callable[[], None]]


def side_by_side(
    variants: dict[str, Variant], images: int, rounds: int, decoding: dict[str, Any] | None = None
) -> dict[str, float]:
    """Each variant's figures, the variants' passes interleaved round by round; ``decoding``
    names the classifiers whose decode processes' CPU counts in a variant's.

    This machine's speed drifts by tens of percent within minutes (shared cores): variants run
    one after another would measure the drift as much as the lever.
    """
    tallies = {name: Tally((decoding or {}).get(name)) for name in variants}
    for _ in range(rounds):
        for name, (setting, work) in variants.items():
            with setting():
                tallies[name].add(images, work)
    return {k: v for name, tally in tallies.items() for k, v in tally.figures(name).items()}


def tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live descendants, and of those it has reaped."""
    from ai_assets.cpu import ProcStat

    total, pending = 0.0, [pid]
    while pending:
        pid = pending.pop()
        if (stat := ProcStat.of(pid)) is None:
            continue  # it ended meanwhile: its parent's counters have it once reaped
        total += stat.cpu_seconds(reaped_children=True)
        with contextlib.suppress(OSError):  # it ends now: no children left to list
            for task in (Path("/proc") / str(pid) / "task").iterdir():
                pending += map(int, (task / "children").read_text().split())
    return total


def run_process(daemon: Any, request: Any, images: int) -> dict[str, float]:
    """One run in a run process of its own, as Dagster's run launchers start one; its CPU
    sampled every 50 ms and split at its first image and its last row (the run's log lines)."""
    import dagster as dg

    run_id, command = daemon.run_process_command(request, REDO)
    samples: list[tuple[float, float]] = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL) as child:
        while child.poll() is None:
            samples.append((time.time(), tree_cpu(child.pid)))
            time.sleep(0.05)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    status = daemon.instance.get_run_by_id(run_id).status
    assert status == dg.DagsterRunStatus.SUCCESS, f"the run process ended {status}"
    records = daemon.instance.get_records_for_run(run_id).records
    logged = {
        record.event_log_entry.user_message.split(" ", 1)[0]: record.event_log_entry.timestamp
        for record in records
        if record.event_log_entry.dagster_event is None  # the asset's own log lines
    }
    [reported] = [
        event.step_materialization_data.materialization.metadata
        for record in records
        if (event := record.event_log_entry.dagster_event) and event.is_step_materialization
    ]
    first, last = logged["classifying"], logged[f"{images:,}"]  # "2,000 objects in …"
    cpu_at = lambda moment: max((c for t, c in samples if t <= moment), default=0.0)  # noqa: E731
    return {
        "process_img_s": images / wall,
        "process_cpu_ms": cpu * 1000 / images,
        "process_before_first_image_cpu_s": cpu_at(first),
        "process_loop_cpu_ms": (cpu_at(last) - cpu_at(first)) * 1000 / images,
        "process_after_last_row_cpu_s": cpu - cpu_at(last),
        # what the run reports of itself (process_cpu_seconds), against /proc's samples above
        "process_reported_cpu_s": reported["process_cpu_seconds"].value,
        "process_sampled_cpu_s_at_last_row": cpu_at(last),
        # and its loop's CPU per image with the model and without (cpu.Meter's split)
        "process_reported_cpu_ms": reported["cpu_ms_per_image"].value,
        "process_reported_feed_cpu_ms": reported["feed_cpu_ms_per_image"].value,
    }


def loop(
    keys: list[str], fetch: Callable[[str], Any], classifier: Any, engine: Any, batch_size: int
) -> None:
    """The run's loop without Dagster: classify_objects, each batch upserted behind the next,
    with a run's default fetch threads for the classifier's decoding."""
    from ai_assets.db import results
    from ai_assets.settings import default_fetch_threads
    from ai_assets.vision.stream import Job, classify_objects

    jobs = (Job("2026-12-01", key) for key in keys)
    batches = classify_objects(
        jobs, fetch, classifier, batch_size=batch_size, top_k=5,
        concurrency=default_fetch_threads(classifier.decode_processes),
    )  # fmt: skip
    for _ in results.upsert_behind(engine, batches):
        pass


def pillow(data: bytes) -> Any:
    """Pixels as transformers' pipeline loads an image: Pillow, upright, RGB, in full."""
    import numpy as np
    from PIL import Image, ImageOps

    return np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def top1_agreement(images: list[bytes], precision: str, batch_size: int = 32) -> float:
    """Top-1 agreement of the run's path (scaled decode, fast preprocessing, ``precision``)
    with transformers' own: Pillow's full decode and the model's image processor, in fp32."""
    from transformers import AutoImageProcessor

    from ai_assets.vision.convert import ensure_default_model
    from ai_assets.vision.model import load_classifier
    from ai_assets.vision.preprocess import ProcessorPreprocessor

    model = str(ensure_default_model())
    ours, reference = load_classifier(model, None, precision), load_classifier(model)
    processor = ProcessorPreprocessor(AutoImageProcessor.from_pretrained(model))

    def labels(classifier: Any, batches: Iterator[Any]) -> list[str]:
        return [top[0].label for batch in batches for top in classifier.classify_batch(batch, 1)]

    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    ready = (ours.preprocess(ours.decode(d)) for d in images)
    mine = labels(ours, (ours.preprocessor.collate(list(itertools.islice(ready, batch_size)), "cpu")
                         for _ in chunks))  # fmt: skip
    theirs = labels(reference, (processor.collate([processor(pillow(d)) for d in c], "cpu")
                                for c in chunks))  # fmt: skip
    return sum(a == b for a, b in zip(mine, theirs, strict=True)) / len(images)


@dataclasses.dataclass
class Feed:
    """What every measurement shares: the corpus, a PostgreSQL, the near-zero model loaded as a
    run's resource loads it."""

    images: dict[str, bytes]
    batch_size: int
    rounds: int
    pg: Any
    model_dir: str
    classifier: Any

    @functools.cached_property
    def keys(self) -> list[str]:
        return sorted(self.images)

    def database(self, name: str) -> Any:
        """A fresh database of the project's tables."""
        import sqlalchemy as sa

        from ai_assets.db import migrations

        engine = sa.create_engine(self.pg.create_database(name))
        migrations.upgrade(engine)
        return engine

    def in_memory(self, key: str) -> Any:
        """A GET that is not one: the object's bytes, from memory."""
        from ai_assets.s3.objects import Fetched

        data = self.images[key]
        return Fetched(key=key, etag="e", size=len(data), data=data)

    def loop(self, name: str, fetch: Any = None, classifier: Any = None) -> Callable[[], None]:
        """The run's loop over the corpus into a database of its own (``fetch``: in memory)."""
        engine = self.database(name)
        fetch, classifier = fetch or self.in_memory, classifier or self.classifier
        return lambda: loop(self.keys, fetch, classifier, engine, self.batch_size)


def measure_memory(feed: Feed) -> dict[str, float]:
    """The loop from memory, and side by side each lever undone alone, and decode processes."""
    from ai_assets.vision.model import load_classifier

    cores = len(os.sched_getaffinity(0))  # one worker process per core
    in_processes = load_classifier(feed.model_dir, None, "fp32", True, False, cores)
    in_processes.warm_up(feed.batch_size)
    in_processes.prepare(feed.images[feed.keys[0]])  # the workers' start is not the loop's
    figures = side_by_side(
        {
            "memory": (contextlib.nullcontext, feed.loop("memory")),
            "memory_pillow_decode": (decoded_by_pillow, feed.loop("pillow_decode")),
            "memory_pillow_resize": (
                lambda: resized_by(feed.classifier, "pillow"),
                feed.loop("pillow_resize"),
            ),
            "memory_processes": (
                contextlib.nullcontext,
                feed.loop("processes", classifier=in_processes),
            ),
        },
        len(feed.keys),
        feed.rounds,
        {"memory_processes": in_processes},
    )
    figures["decode_processes"] = cores
    figures |= decode_floor([feed.images[k] for k in feed.keys], feed.rounds)
    print(
        "decode on one thread: {decode_full_ms:.3f} ms per image in full, "
        "{decode_eighth_ms:.3f} at 1/8 scale (entropy decoding)".format(**figures)
    )
    return figures


@contextlib.contextmanager
def per_image_levers_undone(classifier: Any) -> Iterator[None]:
    """Pillow's decode and Pillow's resize at once (with boto3's GETs: ``s3_before``)."""
    with decoded_by_pillow(), resized_by(classifier, "pillow"):
        yield


def measure_s3(feed: Feed, endpoint: str) -> dict[str, float]:
    """The loop from SeaweedFS through the run's own fetcher; through boto3's GETs; and with
    every per-image lever that a switch undoes undone at once (``s3_before``: boto3's GETs,
    Pillow's decode and Pillow's resize over the crop box), a lower bound of the loop before
    this issue, whose slot, row and upsert levers stay; ``s3_cut`` is its CPU over the loop's."""
    from ai_assets.resources import ImageBucketResource
    from ai_assets.s3.objects import ObjectFetcher

    bucket = ImageBucketResource(bucket=BUCKET, endpoint_url=endpoint)
    fetcher = bucket.get_fetcher(50 << 20)
    assert fetcher.store is not None, "obstore is not configured"
    boto3_fetch = ObjectFetcher(fetcher.client, BUCKET, 50 << 20)
    figures = side_by_side(
        {
            "s3": (contextlib.nullcontext, feed.loop("s3", fetcher)),
            "s3_boto3": (contextlib.nullcontext, feed.loop("s3_boto3", boto3_fetch)),
            "s3_before": (
                lambda: per_image_levers_undone(feed.classifier),
                feed.loop("s3_before", boto3_fetch),
            ),
        },
        len(feed.keys),
        feed.rounds,
    )
    figures["s3_cut"] = figures["s3_before_cpu_ms_no_model"] / figures["s3_cpu_ms_no_model"]
    print(f"{'ms / image':<16}{'s3_before':>10}{'s3':>10}")
    for key in (*(f"{stage}_ms" for stage in STAGES), "other_ms", "cpu_ms_no_model"):
        before, now = figures[f"s3_before_{key}"], figures[f"s3_{key}"]
        print(f"{key:<16}{before:>10.3f}{now:>10.3f}")
    print(f"the loop's CPU, model excluded, cut {figures['s3_cut']:.2f}x", flush=True)
    return figures


def measure_runs(feed: Feed) -> dict[str, float]:
    """Whole runs as Dagster executes them, in this process, then their fixed cost per run,
    then the same runs in run processes of their own."""
    import dagster as dg

    from ai_assets_dev.inprocess import InProcessDaemon
    from ai_assets_dev.localdev import dagster_storage

    images = len(feed.keys)
    os.environ["AI_ASSETS_DATABASE_URL"] = feed.pg.create_database("run")
    storage = {"storage": dagster_storage(feed.pg.create_database("dagster"))}
    with dg.instance_for_test(overrides=storage) as instance:
        daemon = InProcessDaemon(instance, log_level="WARNING")
        requests = daemon.evaluate().run_requests or []  # the sensor's tick: not the run's work
        assert len(requests) == 1, "the sensor split the corpus into several runs"

        def run(on: Any = daemon, config: dict | None = REDO) -> None:
            assert on.launch(requests[0], config).success

        figures = side_by_side({"run": (contextlib.nullcontext, run)}, images, feed.rounds)
        event = instance.get_latest_materialization_event(dg.AssetKey("image_classifications"))
        assert event is not None and event.asset_materialization is not None
        reported = event.asset_materialization.metadata  # the last run's: cpu.Meter's split
        feed_cpu = reported["feed_cpu_ms_per_image"]
        assert isinstance(feed_cpu, dg.FloatMetadataValue) and feed_cpu.value is not None
        figures["run_reported_feed_cpu_ms"] = feed_cpu.value
        # the same run again, nothing left to classify: what a run costs whatever its size
        fixed = figures["run_fixed_cpu_s"] = fixed_cpu(lambda: run(config=None))
        with dg.instance_for_test() as sqlite:
            sqlite_daemon = InProcessDaemon(sqlite, log_level="WARNING")
            figures["run_fixed_cpu_s_sqlite"] = fixed_cpu(lambda: run(sqlite_daemon, None))
        stock = {"storage": dagster_storage(feed.pg.create_database("dagster_stock"), False)}
        with dg.instance_for_test(overrides=stock) as instance:
            stock_daemon = InProcessDaemon(instance, log_level="WARNING")
            figures["run_fixed_cpu_s_dagster_postgres"] = fixed_cpu(lambda: run(stock_daemon, None))
        beyond = figures["run_cpu_ms_no_model"] - fixed * 1000 / images
        figures["run_cpu_ms_per_image_beyond_fixed"] = beyond
        written = classified(os.environ["AI_ASSETS_DATABASE_URL"])
        assert written == images, "the runs did not classify every image"
        process = [run_process(daemon, requests[0], images) for _ in range(2)]
    figures |= {k: sum(p[k] for p in process) / len(process) for k in process[0]}
    print("run process: {process_img_s:.0f} images/s, {process_cpu_ms:.2f} CPU ms per "
          "image: {process_before_first_image_cpu_s:.2f} s before the first image, "
          "{process_loop_cpu_ms:.2f} ms per image, {process_after_last_row_cpu_s:.2f} s "
          "after the last row".format(**figures))  # fmt: skip
    return figures


def classified(url: str) -> int:
    """Rows in a database's results table: the runs' proof of work."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT count(*) FROM image_classifications"))
        count = rows.scalar_one()
    engine.dispose()
    return count


def measure_agreement(feed: Feed, count: int) -> dict[str, float]:
    """Top-1 agreement with transformers' own path, per precision, on every k-th corpus image
    (the sorted keys group the crops by sample photo: the first N alone would judge two
    photos') and the sample photos."""
    import torch

    from ai_assets_dev.samples import sample_jpegs

    torch.set_num_threads(os.cpu_count() or 1)
    every = max(1, len(feed.keys) // count)
    guard = [feed.images[k] for k in feed.keys[::every][:count]]
    guard += list(sample_jpegs().values())
    figures = {}
    for precision in ("fp32", "fp16", "bf16"):
        agree = figures[f"top1_agreement_{precision}"] = top1_agreement(guard, precision)
        print(f"top-1 agreement with transformers' path, {precision}: {agree:.4f} on {len(guard)}")
    return figures


#: The figures the summary table shows first, in this order; RESULT has every figure.
SUMMARY = [
    "cpu_ms_per_image", "run_img_s", "run_main_thread_ms", "run_main_thread_no_model_ms",
    "run_fixed_cpu_s", "run_fixed_cpu_s_dagster_postgres", "run_fixed_cpu_s_sqlite",
    "run_cpu_ms_per_image_beyond_fixed", "run_reported_feed_cpu_ms",
    "top1_agreement_fp32", "top1_agreement_fp16", "top1_agreement_bf16", "memory_img_s",
    "memory_cpu_ms_no_model", "memory_main_thread_ms", "memory_main_thread_no_model_ms",
    "memory_processes_img_s", "memory_processes_cpu_ms_no_model",
    "memory_processes_parent_cpu_ms_no_model", "memory_processes_workers_ms",
    "decode_full_ms", "decode_eighth_ms", "s3_img_s", "s3_cpu_ms_no_model",
    "s3_get_ms", "s3_boto3_cpu_ms_no_model", "s3_boto3_get_ms", "s3_before_cpu_ms_no_model",
    "s3_cut", "process_cpu_ms",
    "process_img_s", "process_before_first_image_cpu_s", "process_loop_cpu_ms",
    "process_after_last_row_cpu_s", "process_reported_cpu_s",
    "process_sampled_cpu_s_at_last_row", "process_reported_cpu_ms", "process_reported_feed_cpu_ms",
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--agreement-images", type=int, default=400, help="corpus images in the accuracy guard"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved passes of each side-by-side variant"
    )
    args = parser.parse_args()

    import torch

    from ai_assets.vision.convert import ensure_default_model
    from ai_assets.vision.model import load_classifier
    from ai_assets_dev.localdev import postgres

    torch.set_num_threads(1)  # the model's CPU is then the calling thread's
    images = corpus(args.images)
    size = sum(map(len, images.values())) / len(images)
    print(f"{len(images):,} JPEGs of 384–640 px, {size / 1024:.0f} KiB on average", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-feed-") as tmp,
        local_s3(Path(tmp) / "s3", BUCKET, images) as endpoint,
        postgres() as pg,
    ):
        model_dir = near_zero_model(Path(tmp) / "model", ensure_default_model())
        os.environ.update(
            {"AI_ASSETS_MODEL": model_dir, "AI_ASSETS_BATCH_SIZE": str(args.batch_size),
             "AI_ASSETS_MAX_OBJECTS_PER_RUN": str(len(images))}
        )  # fmt: skip
        # the arguments ClassifierResource.load passes: the runs below reuse this model
        classifier = load_classifier(model_dir, None, "fp32", True)
        classifier.warm_up(args.batch_size)
        feed = Feed(images, args.batch_size, args.rounds, pg, model_dir, classifier)
        figures: dict[str, float] = {"images": len(images), "batch_size": args.batch_size}
        figures |= measure_memory(feed)
        figures |= measure_s3(feed, endpoint)
        figures |= measure_runs(feed)
    figures["cpu_ms_per_image"] = figures["run_cpu_ms_no_model"]
    figures |= measure_agreement(feed, args.agreement_images)
    print_figures(figures, SUMMARY)


if __name__ == "__main__":
    main()
