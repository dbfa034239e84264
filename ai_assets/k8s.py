"""Per-run Kubernetes resources for classification runs, from the environment.

The code location's environment (set by the Helm chart's values) becomes the
``dagster-k8s/config`` tag of classify_images_job, so every run of it, whether a sensor, a
backfill or the UI launched it, lands on the right node pool with the right resources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

K8S_CONFIG_TAG = "dagster-k8s/config"
#: QueuedRunCoordinator's tag_concurrency_limits in dagster.yaml bound runs with this tag.
RUN_KIND_TAG = "ai_assets/run-kind"

_RESOURCES = {
    "AI_ASSETS_RUN_CPU_REQUEST": ("requests", "cpu"),
    "AI_ASSETS_RUN_MEMORY_REQUEST": ("requests", "memory"),
    "AI_ASSETS_RUN_CPU_LIMIT": ("limits", "cpu"),
    "AI_ASSETS_RUN_MEMORY_LIMIT": ("limits", "memory"),
}


def _json(env: Mapping[str, str], name: str, kind: type) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be JSON ({kind.__name__}): {exc}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {raw!r}")
    return value


def classification_run_k8s_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``dagster-k8s/config`` for classification runs; empty when nothing is set.

    ``AI_ASSETS_RUN_{CPU,MEMORY}_{REQUEST,LIMIT}``, ``AI_ASSETS_RUN_GPUS`` (NVIDIA GPUs per
    run), ``AI_ASSETS_RUN_NODE_SELECTOR`` (JSON object), ``AI_ASSETS_RUN_TOLERATIONS`` (JSON
    list of Kubernetes tolerations).
    """
    resources: dict[str, dict[str, str]] = {}
    for name, (section, resource) in _RESOURCES.items():
        if env.get(name):
            resources.setdefault(section, {})[resource] = env[name]
    gpus = env.get("AI_ASSETS_RUN_GPUS", "").strip()
    if gpus and gpus != "0":
        if not gpus.isdigit():
            raise ValueError(f"AI_ASSETS_RUN_GPUS must be a whole number, got {gpus!r}")
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    config: dict[str, Any] = {}
    if resources:
        config["container_config"] = {"resources": resources}
    pod_spec: dict[str, Any] = {}
    if selector := _json(env, "AI_ASSETS_RUN_NODE_SELECTOR", dict):
        pod_spec["node_selector"] = selector
    if tolerations := _json(env, "AI_ASSETS_RUN_TOLERATIONS", list):
        pod_spec["tolerations"] = tolerations
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


def classification_run_tags(env: Mapping[str, str]) -> dict[str, str]:
    tags = {RUN_KIND_TAG: "classification"}
    if config := classification_run_k8s_config(env):
        tags[K8S_CONFIG_TAG] = json.dumps(config, sort_keys=True)
    return tags
