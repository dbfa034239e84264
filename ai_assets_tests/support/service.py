"""The model service in its own uvicorn process, and its /metrics as numbers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import requests
from prometheus_client.parser import text_string_to_metric_families

from ai_assets_dev.localdev import model_service


@contextlib.contextmanager
def uvicorn_service(model: str, **settings: str) -> Iterator[str]:
    """``uvicorn ai_assets.model_service:app`` in its own process; stopped even on failure."""
    with model_service(env={"AI_ASSETS_MODEL": model, "HF_HUB_OFFLINE": "1", **settings}) as url:
        yield url


def metrics(url: str) -> dict[str, float]:
    """Every sample of /metrics, parsed by prometheus_client, keyed by name and labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
