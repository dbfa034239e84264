"""End-to-end classification throughput against the model's own ceiling and a seed-style loop.

Builds a corpus of real-photo JPEGs (augmented from photos that ship in scikit-image and
scikit-learn), loads it into a local SeaweedFS, and measures in one process:

* ceiling    – forward passes alone on preprocessed tensors (same batch size and precision);
* e2e        – the real path: s3_image_sensor → classify_images_job runs reading S3, decoding,
               classifying and upserting into a real PostgreSQL;
* seed_style – per image one GET, one batch-1 pipeline call, one new DB connection + INSERT.

Ends with one line: RESULT e2e_img_s=… ceiling_img_s=… ratio=… seed_style_img_s=… speedup=…
peak_rss_mb=…
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ACCESS, SECRET = "bench", "bench-secret"


def corpus(n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` distinct ~512 px JPEGs: random crops, flips, colour jitter of the sample photos."""
    from ai_assets.samples import sample_images

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
        crop.thumbnail((512, 512), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=rng.randint(80, 95))
        out[f"bench/{name}-{i:05}.jpg"] = buffer.getvalue()
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_ceiling(classifier, images: list[bytes], batch_size: int) -> float:
    from ai_assets.classify import decode_image

    pixels = [classifier.preprocess(decode_image(data)) for data in images]
    classifier.predict(pixels[:batch_size], top_k=5)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        classifier.predict(pixels[i : i + batch_size], top_k=5)
    return len(pixels) / (time.perf_counter() - started)


def measure_e2e(dagster_pg_url: str) -> tuple[float, float, int, float]:
    """The production shape: Dagster's own storage on PostgreSQL (dagster-postgres).

    Returns the asset's own rate (the image_classifications code: S3 → decode → classify →
    upsert, as its ``images_per_second`` metadata reports), the rate of whole runs (adding
    Dagster's per-partition bookkeeping: planned and materialization events), runs, tick s.
    """
    import dagster as dg

    from ai_assets.inprocess import InProcessDaemon

    storage = {"postgres": {"postgres_url": dagster_pg_url.replace("+psycopg2", "")}}
    with dg.instance_for_test(overrides={"storage": storage}) as instance:
        daemon = InProcessDaemon(instance, log_level="WARNING")
        started = time.perf_counter()
        result = daemon.evaluate()
        daemon.apply_events_and_partitions(result)
        tick_s = time.perf_counter() - started
        started = time.perf_counter()
        runs = [daemon.launch(request) for request in result.run_requests or []]
        elapsed = time.perf_counter() - started
        if not all(run.success for run in runs):
            raise RuntimeError("an e2e run failed")
        metadata = [
            run.asset_materializations_for_node("image_classifications")[0].metadata for run in runs
        ]
    images = sum(m["images"].value for m in metadata)
    asset_s = sum(m["images"].value / m["images_per_second"].value for m in metadata)
    return images / asset_s, images / elapsed, len(runs), tick_s


def measure_seed_style(model_dir: str, keys: list[str], bucket: str, db_url: str) -> float:
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
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        top = classify(Image.open(io.BytesIO(data)).convert("RGB"), top_k=1)[0]
        connection = psycopg2.connect(dsn)
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO seed VALUES (%s, %s, %s)", (key, top["label"], top["score"])
            )
        connection.close()
    return len(keys) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 images; under a minute")
    parser.add_argument("--images", type=int, help="corpus size (default 512, quick 128)")
    parser.add_argument("--seed-images", type=int, help="images for seed_style (default 64/32)")
    args = parser.parse_args()
    n = args.images or (128 if args.quick else 512)
    n_seed = args.seed_images or (32 if args.quick else 64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as the image and chart set it

    from ai_assets.classify import load_classifier
    from ai_assets.localdev import postgres, seaweedfs
    from ai_assets.model_convert import ensure_default_model

    model_dir = str(ensure_default_model())
    images = corpus(n)
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-bench-") as tmp,
        seaweedfs(Path(tmp) / "s3", ACCESS, SECRET) as endpoint,
        postgres() as pg,
    ):
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": ACCESS,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": "us-east-1",
                "AI_ASSETS_S3_BUCKET": "bench",
                "AI_ASSETS_DATABASE_URL": pg.url,
                "DAGSTER_HOME": tmp,
            }
        )
        os.environ.pop("AI_ASSETS_MODEL", None)
        os.environ.pop("AI_ASSETS_S3_PREFIX", None)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda kv: client.put_object(Bucket="bench", Key=kv[0], Body=kv[1]),
                    images.items(),
                )
            )

        batch_size = int(os.environ.get("AI_ASSETS_BATCH_SIZE", "32"))
        classifier = load_classifier(model_dir, None)
        ceiling = measure_ceiling(classifier, list(images.values()), batch_size)
        e2e, e2e_run, runs, tick_s = measure_e2e(pg.create_database("dagster"))
        seed = measure_seed_style(model_dir, list(images)[:n_seed], "bench", pg.url)

    rss = peak_rss_mb()
    print(f"machine: {os.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}")
    print(f"corpus: {n} JPEGs (~512 px), batch {batch_size}, fp32, device {classifier.device}")
    print(f"{'path':<12} {'images/s':>9}")
    print(f"{'ceiling':<12} {ceiling:>9.1f}")
    print(f"{'e2e':<12} {e2e:>9.1f}   (the image_classifications code, {runs} runs)")
    print(f"{'e2e_run':<12} {e2e_run:>9.1f}   (whole Dagster runs; sensor tick {tick_s:.2f} s)")
    print(f"{'seed_style':<12} {seed:>9.1f}   ({n_seed} images)")
    print(f"e2e/ceiling = {e2e / ceiling:.3f}   e2e/seed_style = {e2e / seed:.2f}")
    print(f"peak RSS {rss:.0f} MB")
    print(
        f"RESULT e2e_img_s={e2e:.1f} ceiling_img_s={ceiling:.1f} ratio={e2e / ceiling:.3f} "
        f"seed_style_img_s={seed:.1f} speedup={e2e / seed:.2f} peak_rss_mb={rss:.0f} "
        f"e2e_run_img_s={e2e_run:.1f}"
    )


if __name__ == "__main__":
    main()
