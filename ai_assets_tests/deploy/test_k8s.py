import json

import pytest

from ai_assets.k8s import classification_run_k8s_config, classification_run_tags


def test_nothing_set_means_no_k8s_config() -> None:
    assert classification_run_k8s_config({}) == {}
    assert classification_run_tags({}) == {"ai_assets/run-kind": "classification"}


def test_resources_gpu_node_selector_and_tolerations() -> None:
    env = {
        "AI_ASSETS_RUN_CPU_REQUEST": "2",
        "AI_ASSETS_RUN_MEMORY_REQUEST": "4Gi",
        "AI_ASSETS_RUN_MEMORY_LIMIT": "6Gi",
        "AI_ASSETS_RUN_GPUS": "1",
        "AI_ASSETS_RUN_NODE_SELECTOR": '{"cloud.google.com/gke-accelerator": "nvidia-l4"}',
        "AI_ASSETS_RUN_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", '
        '"effect": "NoSchedule"}]',
    }
    tags = classification_run_tags(env)
    assert json.loads(tags["dagster-k8s/config"]) == {
        "container_config": {
            "resources": {
                "requests": {"cpu": "2", "memory": "4Gi"},
                "limits": {"memory": "6Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AI_ASSETS_RUN_GPUS": "one"}, "whole number"),
        ({"AI_ASSETS_RUN_NODE_SELECTOR": "gpu=true"}, "must be JSON"),
        ({"AI_ASSETS_RUN_TOLERATIONS": '{"key": "x"}'}, "must be a JSON list"),
    ],
)
def test_bad_settings_fail_loudly_at_load(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_run_k8s_config(env)
