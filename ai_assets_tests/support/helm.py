"""The Helm chart rendered as Kubernetes would receive it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ai-assets"
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
K8S_VERSION = "1.29"


def render(values: dict[str, Any] | None = None, name: str = "ai", namespace: str = "images"):
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def instance_config(manifests: list[dict[str, Any]], release: str = "ai") -> dict[str, Any]:
    """The Dagster instance the chart renders (its instance ConfigMap's dagster.yaml), parsed."""
    configmap = by_kind(manifests, "ConfigMap")[f"{release}-ai-assets-instance"]
    return yaml.safe_load(configmap["data"]["dagster.yaml"])
