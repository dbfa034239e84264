"""The model service in its own uvicorn process, and its /metrics as numbers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import requests
from prometheus_client.parser import text_string_to_metric_families

from ai_assets_dev.localdev import free_port


@contextlib.contextmanager
def uvicorn_service(model: str, **settings: str) -> Iterator[str]:
    """``uvicorn ai_assets.model_service:app`` in its own process; stopped even on failure."""
    port = free_port()
    env = os.environ | {"AI_ASSETS_MODEL": model, "HF_HUB_OFFLINE": "1", **settings}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "ai_assets.model_service:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            assert process.poll() is None, "the model service exited during start-up"
            assert time.monotonic() < deadline, "the model service was not ready in 180 s"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics, parsed by prometheus_client, keyed by name and labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
