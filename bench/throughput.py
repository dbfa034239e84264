"""End-to-end classification throughput against the model's own ceiling and a seed-style loop.

Builds a corpus of real-photo JPEGs (augmented from photos that ship in scikit-image and
scikit-learn), loads it into a local SeaweedFS, and measures in one run on this machine:

* ceiling    – forward passes alone on model-ready batches (same batch size and precision,
               the same model object as e2e, BatchNorm folded), measured before and after e2e;
               the unfolded model as transformers loads it is measured too;
* e2e        – the asset's own loop in a real run: reads S3, decodes, classifies and upserts
               into a real PostgreSQL (the run's images/s metadata);
* e2e_dagster – the whole path through Dagster in a fresh process with the model loaded:
               one s3_image_sensor tick, the daemon's bookkeeping and the runs it requests;
* seed_style – per image one GET, one batch-1 pipeline call, one new DB connection + INSERT;

plus the e2e run's peak RSS and CPU per image by process, JPEG draft-mode and bf16 top-1
agreement, and the Dagster events each run writes. Where the ratio goes: the model's CPU per
image in the runs (their reported loop CPU less the feed's) against the ceiling's
(``model_cpu_over_ceiling``), and the feed's (``run_feed_cpu_ms_per_image``). Ends with one
line: RESULT e2e_img_s=… ceiling_img_s=… ratio=… e2e_dagster_img_s=… dagster_over_e2e=…
dagster_over_ceiling=… seed_style_img_s=… speedup=… peak_rss_mb=… (and more key=value pairs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_s3 import local_s3
from report import print_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUCKET = "bench"


def corpus(
    n: int, seed: int = 0, sides: tuple[int, int] | None = None, prefix: str = "bench"
) -> dict[str, bytes]:
    """``n`` distinct JPEGs: random crops, flips, colour jitter of the sample photos.

    Each fits in 512 px, or with ``sides`` has its longer side drawn from that range.
    """
    from ai_assets_dev.samples import sample_images

    bases = list(sample_images().items())
    out = {}
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        name, image = bases[i % len(bases)]
        w, h = image.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.7, 1.3))
        if sides is None:
            crop.thumbnail((512, 512), Image.Resampling.BICUBIC)
        else:
            side = rng.randint(*sides)
            ratio = side / max(crop.size)
            size = (max(1, round(crop.width * ratio)), max(1, round(crop.height * ratio)))
            crop = crop.resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=rng.randint(80, 95))
        out[f"{prefix}/{name}-{i:05}.jpg"] = buffer.getvalue()
    return out


def large_photos() -> list[bytes]:
    """JPEGs of 1–2.5k px (the sample photos enlarged 2–4×): where JPEG draft mode applies."""
    from ai_assets_dev.samples import sample_images

    out = []
    for image in sample_images().values():
        for factor in (2, 3, 4):
            size = (image.width * factor, image.height * factor)
            buffer = io.BytesIO()
            image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (exec'd).

    ``VmHWM``, not ``ru_maxrss``: Linux carries ru_maxrss across fork and exec, so a child
    would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(names: Iterable[str]) -> float:
    """CPU time (user + system) of every process whose command name is in ``names``."""
    from ai_assets_dev.localdev import process_stats

    wanted = set(names)
    return sum(stat.cpu_seconds() for stat in process_stats() if stat.command in wanted)


class Rate(NamedTuple):
    """Items per second, and the process's CPU ms per item meanwhile (every thread's)."""

    per_s: float
    cpu_ms: float


def timed_rate(run: Callable[[], int], min_seconds: float) -> Rate:
    """``run`` (returns items) repeated until ``min_seconds`` passed."""
    items, started, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < min_seconds or not items:
        items += run()
    return Rate(items / elapsed, (time.process_time() - cpu) * 1000 / items)


def prepared(
    classifier: Any, images: list[bytes], decode: Callable[[bytes], Any] | None = None
) -> list[Any]:
    """Decoded and preprocessed images, ready to batch (the same for every precision)."""
    decoder = classifier.decode if decode is None else decode
    return [classifier.preprocess(decoder(data)) for data in images]


def measure_ceiling(classifier: Any, pixels: list[Any], batch_size: int, seconds: float) -> Rate:
    """The model alone: forward passes (and top-k) on batches already decoded and collated."""
    batches = [
        classifier.preprocessor.collate(pixels[i : i + batch_size], classifier.device)
        for i in range(0, len(pixels), batch_size)
    ]
    for batch in {len(batch): batch for batch in batches}.values():  # kernels for each shape
        classifier.classify_batch(batch, top_k=5)

    def one_pass() -> int:
        for batch in batches:
            classifier.classify_batch(batch, top_k=5)
        return len(pixels)

    return timed_rate(one_pass, seconds)


def measure_e2e(env: dict[str, str], profile: str | None) -> dict[str, Any]:
    """Run :func:`e2e_child` in a fresh process, with the servers' CPU time per image."""
    servers = {"s3_server": "weed", "postgres": "postgres"}
    before = {name: cpu_seconds([command]) for name, command in servers.items()}
    command = [
        sys.executable,
        __file__,
        "--e2e-child",
        *(["--profile", profile] if profile else []),
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(f"the e2e process failed:\n{output.stderr[-5000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    for name, command in servers.items():
        spent = cpu_seconds([command]) - before[name]
        result[f"{name}_cpu_ms_per_image"] = spent / result["images"] * 1000
    result["servers_cpu_ms_per_image"] = sum(result[f"{name}_cpu_ms_per_image"] for name in servers)
    return result


ASSET_EVENT_TYPES = (
    "ASSET_MATERIALIZATION",
    "ASSET_MATERIALIZATION_PLANNED",
    "ASSET_CHECK_EVALUATION",
    "ASSET_CHECK_EVALUATION_PLANNED",
    "ASSET_OBSERVATION",
)


def e2e_child(profile: str | None) -> None:
    """A code server and a run pod in one process, Dagster on PostgreSQL; prints JSON.

    The model is loaded first (a warm run process, or the model service): then one sensor tick,
    the daemon's bookkeeping (its asset events) and the runs it requests, as the daemon would
    run them, are timed together (e2e_dagster); the asset's own images/s is e2e.
    """
    import dagster as dg

    from ai_assets_dev.inprocess import InProcessDaemon
    from ai_assets_dev.localdev import dagster_storage

    storage = dagster_storage(os.environ["BENCH_DAGSTER_PG_URL"])
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        daemon = InProcessDaemon(instance, log_level="WARNING")
        daemon.defs.resources["classifier"].process_config_and_initialize().load()  # type: ignore[attr-defined]
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.005)
            profiler.start()
        cpu, started = time.process_time(), time.perf_counter()
        result = daemon.evaluate()
        daemon.report_events(result)
        tick_s = time.perf_counter() - started
        runs = [daemon.launch(request) for request in result.run_requests or []]
        dagster_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        if profiler:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(color=False, unicode=False))  # type: ignore[arg-type]
        if not runs or not all(run.success for run in runs):
            raise RuntimeError("the e2e runs failed")
        metadata = [
            r.asset_materializations_for_node("image_classifications")[0].metadata for r in runs
        ]
        events = [instance.get_records_for_run(r.run_id, limit=100_000).records for r in runs]
    print(json.dumps(e2e_figures(metadata, events, tick_s, dagster_s, cpu_s)))


def e2e_figures(
    metadata: list[Any], events: list[Any], tick_s: float, dagster_s: float, cpu_s: float
) -> dict[str, float]:
    """What the e2e's runs report (their materializations' metadata, their event records), and
    the tick, Dagster and process CPU seconds it took, per image."""
    from ai_assets.runs import Meta

    images = int(sum(number(m, "images") for m in metadata))

    def per_image(key: str) -> float:
        """The runs' per-image ``key``, weighted by their images."""
        return sum(number(m, key) * number(m, "images") for m in metadata) / images

    feed = per_image(Meta.FEED_CPU_MS_PER_IMAGE)
    kinds = [[r.event_log_entry.dagster_event_type for r in run] for run in events]
    asset_events = [
        sum(k is not None and k.value in ASSET_EVENT_TYPES for k in run) for run in kinds
    ]
    return {
        "images": images,
        "runs": len(metadata),
        # the asset's own loop, weighted by images: what one run's metadata reports
        "asset_img_s": images
        / sum(number(m, "images") / number(m, "images_per_second") for m in metadata),
        "dagster_img_s": images / dagster_s,
        "tick_s": tick_s,
        "asset_events_per_run": max(asset_events),
        "events_per_run": max(sum(k is not None for k in run) for run in kinds),
        "cpu_ms_per_image": cpu_s / images * 1000,
        # what the runs report of their loops: the model's forward passes, and the rest
        "model_cpu_ms_per_image": per_image(Meta.CPU_MS_PER_IMAGE) - feed,
        "feed_cpu_ms_per_image": feed,
        "peak_rss_mb": peak_rss_mb(),
    }


def number(metadata: Any, key: str) -> float:
    """A run's numeric metadata value (Dagster types metadata values as any packable value)."""
    value = metadata[key].value
    assert isinstance(value, int | float), f"{key} is {value!r}"
    return value


def measure_seed_style(model_dir: str, keys: list[str], db_url: str) -> float:
    """The tutorial path users come from: everything one image at a time."""
    import boto3
    import psycopg2
    from transformers import pipeline

    classify = pipeline("image-classification", model=model_dir)
    client = boto3.client("s3")
    dsn = db_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS seed (key text, label text, score float)")
    started = time.perf_counter()
    for key in keys:
        data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        top = classify(Image.open(io.BytesIO(data)).convert("RGB"), top_k=1)[0]
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO seed VALUES (%s, %s, %s)", (key, top["label"], top["score"])
            )
        connection.close()
    return len(keys) / (time.perf_counter() - started)


def top1(classifier: Any, pixels: list[Any], batch_size: int = 32) -> list[str]:
    """Each image's top-1 label (batched: a prediction does not depend on its batch)."""
    return [
        labels[0].label
        for i in range(0, len(pixels), batch_size)
        for labels in classifier.predict(pixels[i : i + batch_size], top_k=1)
    ]


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def measure_draft(classifier: Any, photos: list[bytes]) -> tuple[float, float, float]:
    """JPEG draft mode on large photos: top-1 agreement; decode+preprocess ms, full and draft."""
    from ai_assets.vision.decode import decode_image

    def prepare(decode: Callable[[bytes], Any]) -> tuple[list[Any], float]:
        started = time.process_time()
        pixels = prepared(classifier, photos, decode)
        return pixels, (time.process_time() - started) / len(photos) * 1000

    (full, full_ms), (draft, draft_ms) = prepare(decode_image), prepare(classifier.decode)
    return agreement(top1(classifier, full), top1(classifier, draft)), full_ms, draft_ms


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320 images; under a minute")
    parser.add_argument(
        "--images", type=int, help="corpus size (default: one sensor batch, 2,000; quick 320)"
    )
    parser.add_argument("--seed-images", type=int, help="images for seed_style (default 64/32)")
    parser.add_argument("--profile", help="write a pyinstrument profile of the e2e run here")
    parser.add_argument("--e2e-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def point_runs_at(pg: Any, dagster_home: str) -> None:
    """This process's settings, which the e2e process inherits: the bench's databases, the
    corpus's day as the start date, the bundled model in fp32."""
    os.environ.update(
        {
            "AI_ASSETS_DATABASE_URL": pg.url,
            # the corpus's day, as uploaded now: a fresh deployment's first ticks also record
            # the days before it that hold no object (up to 200 a tick, two materializations
            # each, ~20 ms each in Dagster's storage here), a one-off that is not the per-image
            # path this bench measures
            "AI_ASSETS_START_DATE": dt.datetime.now(dt.UTC).date().isoformat(),
            "DAGSTER_HOME": dagster_home,
            "BENCH_DAGSTER_PG_URL": pg.create_database("dagster"),
        }
    )
    for name in ("AI_ASSETS_MODEL", "AI_ASSETS_PRECISION"):
        os.environ.pop(name, None)


def measure_variants(
    classifier: Any, model_dir: str, pixels: list[Any], batch_size: int, seconds: float
) -> tuple[dict[str, float], str]:
    """Beside the e2e: the unfolded model's ceiling, JPEG draft mode's and bf16's top-1
    agreement, bf16's ceiling; and a note on draft mode's cost."""
    from ai_assets.vision.model import ImageClassifier, load_classifier

    unfolded = ImageClassifier(model_dir, fold=False)
    figures = {
        "unfolded_ceiling_img_s": measure_ceiling(unfolded, pixels, batch_size, seconds).per_s
    }
    del unfolded
    photos = large_photos()
    draft_agree, full_ms, draft_ms = measure_draft(classifier, photos)
    sample = pixels[:320]
    bf16 = load_classifier(model_dir, None, "bf16")
    figures["draft_top1_agreement"] = draft_agree
    figures["bf16_ceiling_img_s"] = measure_ceiling(bf16, sample, batch_size, seconds).per_s
    figures["bf16_top1_agreement"] = agreement(top1(classifier, sample), top1(bf16, sample))
    note = (
        f"JPEG draft mode on {len(photos)} photos of 1-2.5k px: decode+preprocess "
        f"{full_ms:.1f} -> {draft_ms:.1f} ms per image"
    )
    return figures, note


def main() -> None:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as the image and chart set it
    if args.e2e_child:
        e2e_child(args.profile)
        return
    from ai_assets.settings import max_objects_per_run
    from ai_assets.vision.convert import ensure_default_model
    from ai_assets.vision.model import load_classifier
    from ai_assets_dev.localdev import postgres

    n = args.images or (320 if args.quick else max_objects_per_run())  # one sensor batch
    n_seed = args.seed_images or (32 if args.quick else 64)
    ceiling_s = 3.0 if args.quick else 8.0
    model_dir = str(ensure_default_model())
    images = corpus(n)
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-bench-") as tmp,
        local_s3(Path(tmp) / "s3", BUCKET, images),
        postgres() as pg,
    ):
        point_runs_at(pg, tmp)
        batch_size = int(os.environ.get("AI_ASSETS_BATCH_SIZE", "32"))
        classifier = load_classifier(model_dir, None)
        pixels = prepared(classifier, list(images.values()))
        ceiling_before = measure_ceiling(classifier, pixels, batch_size, ceiling_s)
        e2e = measure_e2e(dict(os.environ), args.profile)
        ceiling_after = measure_ceiling(classifier, pixels, batch_size, ceiling_s)
        seed = measure_seed_style(model_dir, list(images)[:n_seed], pg.url)
    variants, draft = measure_variants(classifier, model_dir, pixels, batch_size, ceiling_s / 2)
    report(
        result_figures(e2e, (ceiling_before, ceiling_after), seed, variants),
        f"corpus: {n} JPEGs (~512 px), batch {batch_size}, fp32, device {classifier.device}, "
        f"{classifier.folded} BatchNorm layers folded; "
        f"ceiling before e2e {ceiling_before.per_s:.1f}, after {ceiling_after.per_s:.1f} "
        f"images/s ({ceiling_before.cpu_ms:.1f} and {ceiling_after.cpu_ms:.1f} CPU ms each); "
        f"seed_style on {n_seed} images",
        draft,
    )


def result_figures(
    e2e: dict[str, Any], ceilings: tuple[Rate, Rate], seed: float, variants: dict[str, float]
) -> dict[str, float]:
    """The RESULT line's figures: the e2e's, the ceilings' around it (their mean), the rest."""
    before, after = ceilings
    return {
        "e2e_img_s": e2e["asset_img_s"],
        "ceiling_img_s": (before.per_s + after.per_s) / 2,
        "ceiling_cpu_ms_per_image": (before.cpu_ms + after.cpu_ms) / 2,
        "seed_style_img_s": seed,
        "peak_rss_mb": e2e["peak_rss_mb"],
        "unfolded_ceiling_img_s": variants["unfolded_ceiling_img_s"],
        "run_images": e2e["images"],
        "e2e_dagster_img_s": e2e["dagster_img_s"],
        "e2e_runs": e2e["runs"],
        "sensor_tick_s": e2e["tick_s"],
        "asset_events_per_run": e2e["asset_events_per_run"],
        "events_per_run": e2e["events_per_run"],
        "run_cpu_ms_per_image": e2e["cpu_ms_per_image"],
        "run_model_cpu_ms_per_image": e2e["model_cpu_ms_per_image"],
        "run_feed_cpu_ms_per_image": e2e["feed_cpu_ms_per_image"],
        **{k: e2e[k] for k in SERVER_FIGURES},
        "draft_top1_agreement": variants["draft_top1_agreement"],
        "bf16_ceiling_img_s": variants["bf16_ceiling_img_s"],
        "bf16_top1_agreement": variants["bf16_top1_agreement"],
    }


#: The e2e's servers' CPU per image, reported as measured.
SERVER_FIGURES = (
    "servers_cpu_ms_per_image", "s3_server_cpu_ms_per_image", "postgres_cpu_ms_per_image",
)  # fmt: skip


def report(figures: dict[str, float], *notes: str) -> None:
    """The figures as a table, then the one ``RESULT`` line that outside checks read."""
    import torch

    figures = {
        **figures,
        "ratio": figures["e2e_img_s"] / figures["ceiling_img_s"],
        # > 1: the model costs more CPU per image in the e2e, beside the feed, than alone
        "model_cpu_over_ceiling": figures["run_model_cpu_ms_per_image"]
        / figures["ceiling_cpu_ms_per_image"],
        "speedup": figures["e2e_img_s"] / figures["seed_style_img_s"],
        "dagster_over_e2e": figures["e2e_dagster_img_s"] / figures["e2e_img_s"],
        "dagster_over_ceiling": figures["e2e_dagster_img_s"] / figures["ceiling_img_s"],
    }
    threads = torch.get_num_threads()
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {threads} threads")
    for note in notes:
        print(note)
    print_figures(
        figures,
        ["e2e_img_s", "ceiling_img_s", "ratio", "e2e_dagster_img_s", "dagster_over_e2e",
         "dagster_over_ceiling", "seed_style_img_s", "speedup", "peak_rss_mb"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
