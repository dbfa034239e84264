"""The model service: throughput and latency under 1/8/64 clients against the in-process model.

Measured in one run on this machine, with the bundled model:

* ceiling: the in-process model on the same images, decode + preprocess + predict in batches
  of AI_ASSETS_BATCH_SIZE (no HTTP), in this process while the service idles;
* service: `uvicorn ai_assets.model_service:app` in its own process; N clients (threads of
  this process, one image per `POST /classify/` as the seed's curl sends) for --requests
  requests per level: images/s, p50/p99 latency, images per model call (from /metrics);
* runs' path: `POST /classify/batch` through the runs' own client (RemoteClassifier);
* a small sensor run (2 new images) in a fresh process, from process start to rows written
  (the same work a new run pod does): loading the model in the run vs through the service.

Ends with one line: RESULT ceiling_images_per_s=… service_64_images_per_s=… …
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import print_figures

SMALL_RUN = """
import json, sys, time
started = time.perf_counter()
import dagster as dg
from ai_assets_dev.inprocess import InProcessDaemon
with dg.instance_for_test() as instance:
    _, runs = InProcessDaemon(instance).tick()
print(json.dumps({"seconds": time.perf_counter() - started, "ok": [r.success for r in runs],
                  "torch": "torch" in sys.modules}))
"""


def model_calls(url: str) -> tuple[float, float]:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics").text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values["ai_assets_service_model_calls_total"], values["ai_assets_service_images_total"]


def load(url: str, photos: list[bytes], clients: int, requests_total: int) -> dict[str, float]:
    import requests

    session_per_thread: dict[int, requests.Session] = {}

    def one(i: int) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        started = time.perf_counter()
        answer = session.post(
            f"{url}/classify/", files={"file": ("p.jpg", photos[i % len(photos)])}, timeout=300
        )
        answer.raise_for_status()
        return time.perf_counter() - started

    calls_before, images_before = model_calls(url)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(one, range(requests_total)))
    elapsed = time.perf_counter() - started
    calls_after, images_after = model_calls(url)
    return {
        "images_per_s": requests_total / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "images_per_model_call": (images_after - images_before) / (calls_after - calls_before),
    }


def ceiling(model: str, photos: list[bytes], images: int, batch_size: int) -> float:
    from ai_assets.vision.model import load_classifier

    classifier = load_classifier(model)
    classifier.warm_up(batch_size)
    started = time.perf_counter()
    done = 0
    while done < images:
        data = [photos[(done + i) % len(photos)] for i in range(batch_size)]
        batch = [classifier.preprocess(classifier.decode(image)) for image in data]
        classifier.predict(batch, top_k=5)
        done += batch_size
    return done / (time.perf_counter() - started)


def small_run(env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SMALL_RUN], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def runs_path(url: str, photos: list[bytes], total: int) -> float:
    """Images/s through the runs' client (``RemoteClassifier``), a batch per request."""
    from ai_assets.service.client import RemoteClassifier
    from ai_assets.settings import DEFAULT_BATCH_SIZE

    client = RemoteClassifier(url)
    started = time.perf_counter()
    for i in range(0, total, DEFAULT_BATCH_SIZE):
        client.label([photos[(i + j) % len(photos)] for j in range(DEFAULT_BATCH_SIZE)], 5)
    batches = -(-total // DEFAULT_BATCH_SIZE)
    return batches * DEFAULT_BATCH_SIZE / (time.perf_counter() - started)


def small_runs(url: str, model: str, photo: bytes) -> dict[str, object]:
    """A two-object run in a fresh process, with the model in it and through the service."""
    from ai_assets_dev.localdev import s3_client_at, seaweedfs

    access, secret = "bench", "bench-secret"
    figures: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ai-assets-service-bench-") as tmp,
        seaweedfs(Path(tmp) / "s3", access, secret) as endpoint,
    ):
        env = os.environ | {
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
            "AI_ASSETS_S3_PREFIX": "", "AI_ASSETS_MODEL": model, "DAGSTER_HOME": "",
        }  # fmt: skip
        s3 = s3_client_at(endpoint, access, secret)
        for mode, extra in (("in_process", {}), ("service", {"AI_ASSETS_INFERENCE_URL": url})):
            bucket = f"small-{mode.replace('_', '-')}"
            s3.create_bucket(Bucket=bucket)
            for name in ("a", "b"):
                s3.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=photo)
            database = f"sqlite:///{Path(tmp) / f'{mode}.sqlite'}"
            bucket_env = {"AI_ASSETS_S3_BUCKET": bucket, "AI_ASSETS_DATABASE_URL": database}
            outcome = small_run(env | extra | bucket_env)
            assert outcome["ok"] == [True], outcome
            figures[f"small_run_s_{mode}"] = outcome["seconds"]
            figures[f"small_run_torch_{mode}"] = outcome["torch"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=384, help="requests per client level")
    parser.add_argument("--quick", action="store_true", help="96 requests per level")
    args = parser.parse_args()
    total = 96 if args.quick else args.requests
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ai_assets.settings import DEFAULT_BATCH_SIZE
    from ai_assets.vision.convert import ensure_default_model
    from ai_assets_dev.localdev import model_service
    from ai_assets_dev.samples import sample_jpegs

    model = str(ensure_default_model())
    photos = list(sample_jpegs().values())
    figures: dict[str, Any] = {"requests_per_level": total}
    figures["ceiling_images_per_s"] = ceiling(model, photos, 4 * total, DEFAULT_BATCH_SIZE)
    with model_service(env={"AI_ASSETS_MODEL": model}) as url:
        for clients in (1, 8, 64):
            print(f"{clients} clients:", flush=True)
            for name, value in load(url, photos, clients, total).items():
                figures[f"service_{clients}_{name}"] = value
        figures["runs_path_images_per_s"] = runs_path(url, photos, total)
        figures |= small_runs(url, model, photos[0])
    figures["service_64_vs_ceiling"] = (
        figures["service_64_images_per_s"] / figures["ceiling_images_per_s"]
    )
    figures["small_run_speedup"] = (
        figures["small_run_s_in_process"] / figures["small_run_s_service"]
    )
    print_figures(
        figures,
        ["ceiling_images_per_s", "service_1_images_per_s", "service_8_images_per_s",
         "service_64_images_per_s", "service_64_vs_ceiling", "service_64_p50_ms",
         "service_64_p99_ms", "service_64_images_per_model_call", "runs_path_images_per_s",
         "small_run_s_in_process", "small_run_s_service", "small_run_speedup"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
