"""The production deployment, proven offline: Helm chart, instance, K8sRunLauncher, Dockerfile.

No cluster, Docker engine or helm binary runs here: the chart is rendered and linted by Helm's
own Go SDK (helm-python-sdk), every manifest is validated against the Kubernetes 1.29 schema,
and the run launcher talks to a local Kubernetes API whose Job is then run as a kubelet would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import helm_python
import kubernetes_validate
import pytest
import sqlalchemy as sa
import yaml

from ai_assets.db import results
from ai_assets_dev.inprocess import InProcessDaemon
from ai_assets_tests.fakes.k8s_server import FakeKubernetes, fake_kubernetes
from ai_assets_tests.support.helm import (
    CHART,
    K8S_VERSION,
    PRODUCTION,
    ROOT,
    by_kind,
    instance_config,
    render,
)


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["defaults", "production"])
def test_chart_lints_clean(values: dict[str, Any]) -> None:
    result = helm_python.lint(CHART, values, strict=True, kube_version=f"v{K8S_VERSION}.0")
    assert result["errors"] == []
    assert result["messages"] == []


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["defaults", "production"])
def test_every_manifest_validates_strictly_against_kubernetes(values: dict[str, Any]) -> None:
    manifests = render(values)
    kinds = sorted(m["kind"] for m in manifests)
    expected = ["ConfigMap"] * 3 + ["Deployment"] * 4 + ["Role", "RoleBinding"]
    expected += ["Service"] * 3 + ["ServiceAccount"] + ["NetworkPolicy"] * 5  # with the exporter
    if values:  # production: an ingress, the model service's Deployment, Service and policy
        expected += ["Ingress", "Deployment", "Service", "NetworkPolicy"]
        # and monitoring: the rules, a ServiceMonitor each for the exporter and the service,
        # the dashboard
        expected += ["PrometheusRule", "ServiceMonitor", "ServiceMonitor", "ConfigMap"]
    assert kinds == sorted(expected)
    for manifest in manifests:  # a missing schema raises too, and fails the test
        if manifest["apiVersion"] == "monitoring.coreos.com/v1":
            _validate_operator_object(manifest)  # no CRD schema offline: checked below
        else:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def _validate_operator_object(manifest: dict[str, Any]) -> None:
    """A Prometheus Operator object's required structure (its CRD schema is not offline here);
    the rules themselves pass promtool in ai_assets_tests/ops/test_exporter.py."""
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}
    assert manifest["metadata"]["name"] and manifest["metadata"]["labels"]
    spec = manifest["spec"]
    if manifest["kind"] == "PrometheusRule":
        for group in spec["groups"]:
            assert set(group) == {"name", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert isinstance(rule["expr"], str) and rule["alert"]
    else:
        assert manifest["kind"] == "ServiceMonitor"
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) == {"port", "path", "interval"}


def _pod_labels(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The labels of each Deployment's pods, and of the run pods the K8sRunLauncher creates."""
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in by_kind(manifests, "Deployment").values()
    }
    instance = instance_config(manifests)
    pods["run"] = instance["run_launcher"]["config"]["labels"]
    return pods


def _selected(selector: dict[str, Any], pods: dict[str, dict[str, str]]) -> set[str]:
    wanted = selector.get("matchLabels", {}).items()
    return {name for name, labels in pods.items() if wanted <= labels.items()}


def test_network_policies_let_in_only_the_pods_that_need_each_port() -> None:
    manifests = render(PRODUCTION)
    pods = _pod_labels(manifests)
    allowed: dict[str, tuple[set[str], list[int]]] = {}
    for policy in by_kind(manifests, "NetworkPolicy").values():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]  # outbound stays open: S3, PostgreSQL, …
        for target in _selected(spec["podSelector"], pods):
            rules = spec.get("ingress", [])
            sources = {p for r in rules for peer in r.get("from", []) for p in _selected(
                peer.get("podSelector", {}), pods)}  # fmt: skip
            ports = [port["port"] for r in rules for port in r.get("ports", [])]
            allowed[target] = (sources, ports)
    assert allowed == {
        "ai-ai-assets-code": ({"ai-ai-assets-webserver", "ai-ai-assets-daemon"}, [4000]),
        "ai-ai-assets-model": ({"ai-ai-assets-code", "run"}, [8000]),
        "ai-ai-assets-daemon": (set(), []),
        # any source by default (networkPolicy.metricsFrom narrows it), its metrics port only
        "ai-ai-assets-exporter": (set(), [9108]),
        "run": (set(), []),
        # any source, its port only: the ingress controller lives wherever the cluster has it
        "ai-ai-assets-webserver": (set(), [3000]),
    }
    webserver = by_kind(manifests, "NetworkPolicy")["ai-ai-assets-webserver"]["spec"]
    assert "from" not in webserver["ingress"][0]
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")
    limited = render(
        {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"m": "1"}}}]},
         "modelService": {"enabled": True}}
    )  # fmt: skip
    peers = by_kind(limited, "NetworkPolicy")["ai-ai-assets-model"]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"m": "1"}}} in peers


def test_monitoring_targets_the_exporter_and_the_service_and_ships_rules_and_dashboard() -> None:
    manifests = render(PRODUCTION)
    services = by_kind(manifests, "Service")
    for monitor in by_kind(manifests, "ServiceMonitor").values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        [service] = [s for s in services.values() if wanted <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert monitor["spec"]["endpoints"][0]["port"] in ports
    exporter = services["ai-ai-assets-exporter"]["metadata"]["annotations"]
    assert exporter["prometheus.io/scrape"] == "true"
    [rule] = by_kind(manifests, "PrometheusRule").values()
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]
    for group, rendered in zip(shipped, rule["spec"]["groups"], strict=True):
        for mine, out in zip(group["rules"], rendered["rules"], strict=True):
            assert {k: v for k, v in out.items() if k != "annotations"} == {
                k: v for k, v in mine.items() if k != "annotations"
            }
            assert out["annotations"]["runbook_url"] == (
                "https://git.acme.example/platform/ai-assets/-/blob/main/README.md#"
                + mine["alert"].lower()
            )
    dashboard = by_kind(manifests, "ConfigMap")["ai-ai-assets-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["ai-assets.json"])["uid"] == "ai-assets"
    assert not {"PrometheusRule", "ServiceMonitor"} & {m["kind"] for m in render()}


def test_json_logs_reach_every_process_and_every_run() -> None:
    def args_and_instance(values: dict[str, Any]) -> tuple[dict[str, list[str]], dict]:
        manifests = render(values)
        args = {
            name: d["spec"]["template"]["spec"]["containers"][0]["args"]
            for name, d in by_kind(manifests, "Deployment").items()
        }
        return args, instance_config(manifests)

    args, instance = args_and_instance({"logFormat": "json"})
    for name in ("webserver", "daemon", "code", "exporter"):
        assert args[f"ai-ai-assets-{name}"][-2:] == ["--log-format", "json"], name
    handlers = instance["python_logs"]["dagster_handler_config"]["handlers"]
    assert handlers["json_stdout"]["stream"] == "ext://sys.stdout"
    args, instance = args_and_instance({})
    assert not any("--log-format" in a for a in args.values())
    assert "python_logs" not in instance


def test_manifests_reference_secrets_and_hold_none() -> None:
    manifests = render(PRODUCTION)
    assert not by_kind(manifests, "Secret")
    text = json.dumps(manifests)
    env = by_kind(manifests, "ConfigMap")["ai-ai-assets-env"]["data"]
    secret_vars = {"DAGSTER_PG_PASSWORD", "SLACK_BOT_TOKEN", "AWS_SECRET_ACCESS_KEY",
                   "AWS_ACCESS_KEY_ID", "AI_ASSETS_DATABASE_URL"}  # fmt: skip
    assert not secret_vars & env.keys()
    code = by_kind(manifests, "Deployment")["ai-ai-assets-code"]["spec"]["template"]["spec"]
    [container] = code["containers"]
    assert {"secretRef": {"name": "ai-assets-runtime"}} in container["envFrom"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert refs == {
        "DAGSTER_PG_PASSWORD": "dagster-postgresql",
        "SLACK_BOT_TOKEN": "ai-assets-slack",
    }
    for deployment in by_kind(manifests, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["requests"]
            assert "livenessProbe" in c
    assert "arn:aws:iam::123456789012:role/ai-assets" in text  # IRSA annotation kept


def test_rbac_grants_only_what_the_launcher_needs() -> None:
    [role] = by_kind(render(), "Role").values()
    grants = {
        (r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]
    }
    assert grants == {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("batch", "jobs/status"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch", "delete"},
        ("", "pods/log"): {"get"},
        ("", "events"): {"get", "list", "watch"},
    }


def test_classification_values_become_run_tags() -> None:
    env = by_kind(render(PRODUCTION), "ConfigMap")["ai-ai-assets-env"]["data"]
    from ai_assets.k8s import classification_run_k8s_config

    config = classification_run_k8s_config(env)
    assert config["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert config["pod_spec_config"]["node_selector"] == {
        "node.kubernetes.io/instance-type": "g5.xlarge"
    }
    assert config["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert env["AI_ASSETS_WEBSERVER_URL"] == "https://dagster.acme.example"
    assert (env["AI_ASSETS_PRECISION"], env["AI_ASSETS_BATCH_SIZE"]) == ("fp16", "256")
    assert env["AI_ASSETS_GPU_JPEG_DECODE"] == "false"  # the accurate decoder unless asked
    # unset: the run chooses its decode processes for its device and cores when it loads
    assert "AI_ASSETS_DECODE_PROCESSES" not in env
    for count in (0, 14):  # 0 included: the fetch threads decode whatever the node
        custom = by_kind(render({"model": {"decodeProcesses": count}}), "ConfigMap")
        assert custom["ai-ai-assets-env"]["data"]["AI_ASSETS_DECODE_PROCESSES"] == str(count)


def test_the_model_service_deployment_serves_runs_with_probes_and_no_credentials() -> None:
    manifests = render(PRODUCTION)
    deployment = by_kind(manifests, "Deployment")["ai-ai-assets-model"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert container["args"][:2] == ["uvicorn", "ai_assets.model_service:app"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert all("secretRef" not in ref for ref in container["envFrom"])
    service = by_kind(manifests, "Service")["ai-ai-assets-model"]
    assert service["spec"]["ports"][0]["port"] == 8000
    env = by_kind(manifests, "ConfigMap")["ai-ai-assets-env"]["data"]
    assert env["AI_ASSETS_INFERENCE_URL"] == "http://ai-ai-assets-model:8000"
    default = render()
    assert "ai-ai-assets-model" not in by_kind(default, "Deployment")
    assert (
        "AI_ASSETS_INFERENCE_URL" not in by_kind(default, "ConfigMap")["ai-ai-assets-env"]["data"]
    )


def test_the_event_queue_reaches_the_sensor_and_the_listing_reconciles() -> None:
    env = by_kind(render(PRODUCTION), "ConfigMap")["ai-ai-assets-env"]["data"]
    assert env["AI_ASSETS_SQS_QUEUE_URL"].endswith("/123456789012/acme-product-photos-events")
    assert env["AI_ASSETS_RECONCILE_MINUTES"] == "60"
    default = by_kind(render(), "ConfigMap")["ai-ai-assets-env"]["data"]
    assert "AI_ASSETS_SQS_QUEUE_URL" not in default  # no queue: the listing runs continuously


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"s3": {"sqsQueueUrl": "acme-events"}}, "sqsQueueUrl"),
        ({"s3": {"reconcileMinutes": -1}}, "reconcileMinutes"),
        ({"webserver": {"port": "http"}}, "port"),
        ({"s3": {"bucket": ""}}, "bucket"),
        ({"classification": {"gpus": -1}}, "gpus"),
        ({"model": {"precision": "int8"}}, "precision"),
        ({"model": {"decodeProcesses": -1}}, "decodeProcesses"),
        ({"webserver": {"ingress": {"enabled": True}}}, "webserver.ingress.host is required"),
        ({"unknown": 1}, "unknown"),
        ({"computeLogs": {"bucket": "images"}}, "the sensor would classify the logs"),
        (  # its keys are uploads/storage/…: under the watched uploads/
            {
                "s3": {"prefix": "uploads/"},
                "computeLogs": {"bucket": "images", "prefix": "uploads"},
            },
            "the sensor would classify the logs",
        ),
        ({"computeLogs": {"bucket": "Bad_Bucket"}}, "computeLogs"),
    ],
)
def test_invalid_values_are_rejected_with_a_clear_message(values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


def test_the_chart_renders_the_production_instance_not_the_local_one() -> None:
    instance = instance_config(render())
    assert instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    storage = instance["storage"]["custom"]  # dagster-postgres's, holding its connections
    assert storage["module"] == "ai_assets.ops.storage"
    assert storage["class"] == "PooledPostgresStorage"
    assert set(storage["config"]["postgres_db"]) >= {"hostname", "db_name", "username", "password"}
    assert instance["run_monitoring"]["enabled"]
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())  # the top level: `dagster dev`
    assert not {"run_launcher", "storage", "run_coordinator"} & set(local)
    assert instance["telemetry"] == local["telemetry"]


def test_compute_logs_go_to_their_own_bucket_or_are_not_captured() -> None:
    def compute_logs(values: dict[str, Any]) -> dict[str, Any]:
        return instance_config(render(values))["compute_logs"]

    assert compute_logs({})["class"] == "NoOpComputeLogManager"  # a pod's disk: no one reads it
    beside_the_images = {
        "s3": {"bucket": "photos", "prefix": "uploads/", "endpointUrl": "http://s3:8333"},
        "computeLogs": {"bucket": "photos", "uploadIntervalSeconds": 0},
    }
    s3 = compute_logs(beside_the_images)
    assert s3["class"] == "S3ComputeLogManager"
    assert s3["config"] == {
        "bucket": "photos", "prefix": "dagster/compute-logs", "region": "us-east-1",
        "endpoint_url": "http://s3:8333",
    }  # fmt: skip


# -- the instance and the run launcher, against real PostgreSQL and a local Kubernetes API --


@pytest.fixture
def deployment(
    tmp_path: Path,
    pg_server,
    pg_url: str,
    bucket: str,
    s3_env: dict[str, str],
    s3_client: Any,
    tiny_model_dir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[FakeKubernetes, dict[str, str], Path]]:
    """DAGSTER_HOME holding the rendered dagster.yaml; the environment the chart would set."""
    manifests = render(PRODUCTION)
    configmaps = by_kind(manifests, "ConfigMap")
    instance_yaml = instance_config(manifests)
    env = dict(configmaps["ai-ai-assets-env"]["data"])
    for in_cluster in ("AI_ASSETS_SQS_QUEUE_URL", "AI_ASSETS_INFERENCE_URL"):
        del env[in_cluster]  # AWS's queue and the cluster's model service: not reachable here
    storage_db = f"dagster_{pg_url.rsplit('/', 1)[1]}"
    pg_server.create_database(storage_db)
    compute_logs = instance_yaml["compute_logs"]["config"]  # AWS's bucket: the local server's
    compute_logs |= {"bucket": f"{bucket}-logs", "endpoint_url": s3_env["AWS_ENDPOINT_URL"]}
    # staged before each upload in the system's temp folder unless set, where every run leaves
    # its empty folder: harmless in a run's own pod, litter on a test machine
    compute_logs["local_dir"] = str(tmp_path / "staged-logs")
    s3_client.create_bucket(Bucket=compute_logs["bucket"])
    with fake_kubernetes() as api:
        launcher = instance_yaml["run_launcher"]["config"]
        launcher["load_incluster_config"] = False  # no cluster: the local API instead
        launcher["kubeconfig_file"] = str(api.kubeconfig(tmp_path / "kubeconfig"))
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
        env |= {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(pg_server.port),
            "DAGSTER_PG_DB": storage_db,
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "from-the-dagster-postgresql-secret",
            "AI_ASSETS_S3_BUCKET": bucket,
            "AI_ASSETS_S3_PREFIX": "",
            "AI_ASSETS_MODEL": tiny_model_dir,
            "AI_ASSETS_DATABASE_URL": pg_url,  # from the ai-assets-runtime secret
            **s3_env,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY"):
            monkeypatch.delenv(proxy, raising=False)
        yield api, env, home


def test_the_rendered_instance_loads_with_postgres_storage_and_the_k8s_launcher(
    deployment,
) -> None:
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresEventLogStorage

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.get_ref().storage_data.class_name == "PooledPostgresStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_launcher.job_namespace == "images"
        assert instance.run_launcher.env_secrets == ["ai-assets-runtime"]


def test_k8s_run_launcher_end_to_end(
    deployment, s3_client: Any, bucket: str, jpegs: dict[str, bytes], pg_url: str
) -> None:
    from dagster._core.launcher import WorkerStatus

    api, env, home = deployment
    _launch_at_once(home)
    for name in ("chelsea", "coffee", "china"):
        s3_client.put_object(Bucket=bucket, Key=f"{name}.jpg", Body=jpegs[name])
    with dg.DagsterInstance.get() as instance:  # the sensor inventories and batches them
        daemon = InProcessDaemon(instance)
        result = daemon.evaluate()
        daemon.report_events(result)
    [request] = result.run_requests or []

    _launch_classification({**request.tags, "dagster/partition": request.partition_key})
    [job] = api.posted
    container = _check_run_job(job)

    # the kubelet's part: run the container's command with its environment
    container_env = {**env, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    container_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    done = subprocess.run(
        container["args"], env=container_env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]

    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        launcher = instance.run_launcher
        name = job["metadata"]["name"]
        api.set_job_status(name, succeeded=1)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS
        api.set_job_status(name, failed=1)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.FAILED

    rows = results.fetch_rows(sa.create_engine(pg_url))
    assert sorted(r["s3_key"] for r in rows) == ["chelsea.jpg", "china.jpg", "coffee.jpg"]
    assert {r["run_id"] for r in rows} == {run.run_id}
    _check_compute_logs(s3_client, f"{bucket}-logs", run.run_id)


def _check_compute_logs(s3_client: Any, bucket: str, run_id: str) -> None:
    """The run pod's stderr, in the compute-log bucket where the webserver reads it back."""
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="dagster/compute-logs/")
    keys = [o["Key"] for o in listed.get("Contents", []) if run_id in o["Key"]]
    [stderr] = [k for k in keys if k.endswith(".err")]
    text = s3_client.get_object(Bucket=bucket, Key=stderr)["Body"].read().decode()
    assert "image_classifications" in text, text[-2000:]


def test_terminate_deletes_the_job(deployment) -> None:
    api, _, home = deployment
    _launch_at_once(home)
    _launch_classification({"dagster/partition": "2026-01-01"})
    [job] = api.posted
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert instance.run_launcher.terminate(run.run_id)
    assert ("job", "images", job["metadata"]["name"]) in api.deleted


def _launch_at_once(home: Path) -> None:
    """The deployment's instance with the default run coordinator: the queued one only queues."""
    instance_yaml = yaml.safe_load((home / "dagster.yaml").read_text())
    instance_yaml["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "DefaultRunCoordinator",
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))


def _launch_classification(tags: dict[str, str]) -> None:
    """``dagster job launch`` of classify_images_job with ``tags``, through the run launcher."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    launch = [dagster, "job", "launch", "-m", "ai_assets.definitions", "-j", "classify_images_job"]
    subprocess.run([*launch, "--tags", json.dumps(tags)], check=True, cwd=ROOT, env=os.environ)


def _check_run_job(job: dict[str, Any]) -> dict[str, Any]:
    """The Job the K8sRunLauncher posted, as the production values shape it; its container."""
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ai-assets"
    assert container["image"] == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ai-assets:2026.11.25"
    assert {"secretRef": {"name": "ai-assets-runtime"}} in container["envFrom"]
    assert {"configMapRef": {"name": "ai-ai-assets-env"}} in container["envFrom"]
    password = next(e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert pod["serviceAccountName"] == "ai-ai-assets"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "from-the-dagster-postgresql-secret" not in json.dumps(job)
    return container


# -- the image --


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    done = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_what_pyproject_declares() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [torch] = [d for d in project["dependencies"] if d.startswith("torch")]
    assert f"pip install {torch}" in dockerfile  # torch first, with the same pin
    assert dockerfile.index(f"pip install {torch}") < dockerfile.index("COPY pyproject.toml")
    # what the requirements line lists: the dependencies, and on the GPU variant the gpu extra
    [code] = re.findall(r'RUN python -c "(.*)" > /tmp/requirements.txt', dockerfile)
    for index_url, extra in (
        ("https://cpu.example/whl", []),
        ("", project["optional-dependencies"]["gpu"]),
    ):
        environment = {**os.environ, "TORCH_INDEX_URL": index_url}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment,
                              capture_output=True, text=True, check=True)  # fmt: skip
        listed = done.stdout.splitlines()
        assert listed == project["dependencies"] + extra
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("COPY ai_assets")
    assert "USER 10001" in dockerfile and "AI_ASSETS_MODEL=" in dockerfile
    assert "MALLOC_MMAP_THRESHOLD_=1073741824" in dockerfile
    # load_from_defs_folder finds [tool.dg] from the code's own path: the code must run from
    # the WORKDIR holding pyproject.toml (the last WORKDIR; nothing changes it afterwards)
    [workdir] = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("WORKDIR")]
    assert workdir == "/opt/dagster/app" and "COPY ai_assets ./ai_assets" in dockerfile
