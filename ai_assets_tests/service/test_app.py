"""The model service under a real uvicorn on 127.0.0.1, and runs that use it instead of torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from ai_assets.service.client import ModelServiceError, RemoteClassifier
from ai_assets_dev.localdev import free_port
from ai_assets_tests.support.hostile import decompression_bomb
from ai_assets_tests.support.service import metrics, uvicorn_service
from ai_assets_tests.support.util import configure, rows_by_key, send_json, serve

MAX_BYTES = 3_000_000


@pytest.fixture(scope="module")
def service_url(lite0_dir: str) -> Iterator[str]:
    with uvicorn_service(lite0_dir, AI_ASSETS_MAX_IMAGE_BYTES=str(MAX_BYTES)) as url:
        yield url


def test_the_seed_curl_contract_answers_chelsea_is_a_cat(
    service_url: str, jpegs: dict[str, bytes], tmp_path: Path
) -> None:
    photo = tmp_path / "test.jpg"
    photo.write_bytes(jpegs["chelsea"])
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-s", "-F", f"file=@{photo}", f"{service_url}/classify/"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    else:  # the same multipart request curl -F sends
        with photo.open("rb") as f:
            out = requests.post(f"{service_url}/classify/", files={"file": f}, timeout=60).text
    results = json.loads(out)["results"]
    assert len(results) == 5
    assert "cat" in results[0]["label"]
    assert all(set(r) == {"label", "score"} for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0 and sum(scores) <= 1 + 1e-6
    assert requests.get(f"{service_url}/healthz", timeout=5).json() == {"status": "ok"}
    without_slash = requests.post(
        f"{service_url}/classify", files={"file": ("test.jpg", jpegs["chelsea"])},
        allow_redirects=False, timeout=60,
    )  # fmt: skip
    assert without_slash.status_code == 200
    assert without_slash.json()["results"][0]["label"] == results[0]["label"]


def test_64_concurrent_clients_are_batched_into_fewer_model_calls(
    service_url: str, jpegs: dict[str, bytes]
) -> None:
    before = metrics(service_url)
    photos = [jpegs["chelsea"], jpegs["coffee"]] * 32

    def post(data: bytes) -> requests.Response:
        return requests.post(
            f"{service_url}/classify/", files={"file": ("p.jpg", data)}, timeout=120
        )

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(post, photos))
    assert [a.status_code for a in answers] == [200] * 64
    labels = [a.json()["results"][0]["label"] for a in answers]
    assert all("cat" in label for label in labels[::2])
    assert set(labels[1::2]) == {"espresso"}
    after = metrics(service_url)
    calls = (
        after["ai_assets_service_model_calls_total{}"]
        - before["ai_assets_service_model_calls_total{}"]
    )
    images = (
        after["ai_assets_service_batch_size_sum{}"] - before["ai_assets_service_batch_size_sum{}"]
    )
    assert images == 64
    assert calls < 64, f"{calls} model calls for 64 requests: no batching"
    assert after["ai_assets_service_queue_depth{}"] == 0
    assert after["ai_assets_service_ready{}"] == 1
    assert after["ai_assets_service_requests_total{endpoint=/classify/,status=200}"] >= 64
    assert after["ai_assets_service_request_seconds_count{endpoint=/classify/}"] >= 64


@pytest.mark.reliability
def test_hostile_uploads_get_a_clear_4xx_and_the_service_stays_up(
    service_url: str, jpegs: dict[str, bytes], reliability_report
) -> None:
    url = f"{service_url}/classify/"
    cases = {
        "not an image": ({"file": ("x.jpg", b"definitely not a JPEG")}, 415, "not_an_image"),
        "empty file": ({"file": ("x.jpg", b"")}, 400, "empty"),
        "too many bytes": ({"file": ("big.jpg", b"\xff" * (MAX_BYTES + 1))}, 413, "too_large"),
        "decompression bomb": (
            {"file": ("bomb.png", decompression_bomb())},
            413,
            "too_many_pixels",
        ),
        "truncated JPEG": ({"file": ("t.jpg", jpegs["coffee"][:300])}, 415, "undecodable"),
        "missing field": ({"image": ("x.jpg", jpegs["coffee"])}, 422, "missing_field"),
    }
    before = metrics(service_url)
    for name, (files, status, kind) in cases.items():
        answer = requests.post(url, files=files, timeout=60)
        assert answer.status_code == status, name
        assert answer.json()["error"]["kind"] == kind, name
        assert answer.json()["error"]["message"], name
    no_body = requests.post(url, timeout=10)
    assert no_body.status_code == 422 and no_body.json()["error"]["kind"] == "missing_field"
    batch = requests.post(
        f"{service_url}/classify/batch",
        files=[("files", ("a.jpg", jpegs["coffee"])), ("files", ("b.jpg", b"junk"))],
        timeout=60,
    ).json()["results"]
    assert batch[0]["results"][0]["label"] == "espresso"
    assert batch[1]["error"]["kind"] == "not_an_image"
    assert requests.get(f"{service_url}/readyz", timeout=5).status_code == 200
    after = metrics(service_url)
    for kind in ("not_an_image", "empty", "too_large", "too_many_pixels", "missing_field"):
        key = f"ai_assets_service_errors_total{{kind={kind}}}"
        assert after[key] > before.get(key, 0), kind
    reliability_report("hostile uploads to the model service", "clear 4xx", 0, 0)


def test_a_service_decoding_in_worker_processes_answers_as_one_decoding_in_threads(
    service_url: str, lite0_dir: str, jpegs: dict[str, bytes]
) -> None:
    uploads = {
        "cat": jpegs["chelsea"], "espresso": jpegs["coffee"], "junk": b"definitely not a JPEG",
        "truncated": jpegs["coffee"][:300], "empty": b"",
    }  # fmt: skip
    settings = {"AI_ASSETS_MAX_IMAGE_BYTES": str(MAX_BYTES), "AI_ASSETS_DECODE_PROCESSES": "2"}
    with uvicorn_service(lite0_dir, **settings) as processes_url:
        for name, data in uploads.items():
            files = {"file": (f"{name}.jpg", data)}
            threads = requests.post(f"{service_url}/classify/", files=files, timeout=60)
            processes = requests.post(f"{processes_url}/classify/", files=files, timeout=60)
            assert processes.status_code == threads.status_code, name
            assert processes.json() == threads.json(), name


@pytest.mark.integration  # a subprocess or a server
@pytest.mark.reliability
def test_an_overfull_queue_answers_503_with_retry_after(
    lite0_dir: str, jpegs: dict[str, bytes], reliability_report
) -> None:
    tight = {
        "AI_ASSETS_QUEUE_LIMIT": "2",
        "AI_ASSETS_BATCH_SIZE": "1",
        "AI_ASSETS_BATCH_WAIT_MS": "0",
    }
    with uvicorn_service(lite0_dir, **tight) as url:

        def post(_: int) -> requests.Response:
            files = {"file": ("p.jpg", jpegs["chelsea"])}
            return requests.post(f"{url}/classify/", files=files, timeout=120)

        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(post, range(64)))
        refused = [a for a in answers if a.status_code == 503]
        assert refused, "64 clients against a queue of 2 were all served"
        assert {a.status_code for a in answers} == {200, 503}
        assert all(a.headers["Retry-After"] == "1" for a in refused)
        assert {a.json()["error"]["kind"] for a in refused} == {"queue_full"}
        assert metrics(url)["ai_assets_service_errors_total{kind=queue_full}"] == len(refused)
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
    reliability_report("model service queue overfull", "503 + Retry-After", 0, 0)


class FlakyService(BaseHTTPRequestHandler):
    """Answers 503 twice, then like the model service."""

    calls: list[str] = []  # noqa: RUF012 - shared by the handler instances of one test

    def do_GET(self) -> None:
        self.answer({"model_id": "m", "model_revision": "r", "device": "cpu", "precision": "fp32"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.answer({"results": [{"results": [{"label": "cat", "score": 0.9}]}]})

    def answer(self, body: dict[str, Any]) -> None:
        self.calls.append(self.command)
        if len(self.calls) in (2, 3):
            send_json(self, 503, {"error": {"kind": "queue_full"}}, {"Retry-After": "0"})
        else:
            send_json(self, 200, body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_client_retries_503_and_fails_clearly_when_the_service_stays_down() -> None:
    FlakyService.calls = []
    with serve(FlakyService) as url:
        client = RemoteClassifier(url, backoff=0.01)
        [labels] = client.label([b"img"], top_k=1)
        assert not isinstance(labels, str) and labels[0].label == "cat"
        assert FlakyService.calls == ["GET", "POST", "POST", "POST"]
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelServiceError, match="AI_ASSETS_INFERENCE_URL"):
        RemoteClassifier(down, attempts=2, backoff=0.01)


RUN_THROUGH_SERVICE = """
import json, sys
import dagster as dg
from ai_assets_dev.inprocess import InProcessDaemon
with dg.instance_for_test() as instance:
    _, runs = InProcessDaemon(instance).tick()
metadata = [r.asset_materializations_for_node("image_classifications")[0].metadata for r in runs]
print(json.dumps({"runs": [r.success for r in runs], "torch": "torch" in sys.modules,
                  "transformers": "transformers" in sys.modules,
                  "decoding": [m["decoding"].value for m in metadata],
                  "model_threads": [m["model_threads"].value for m in metadata]}))
"""


def test_a_run_classifies_through_the_service_without_loading_a_model(
    service_url: str,
    s3_client: Any,
    bucket: str,
    jpegs: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("chelsea", "coffee"):
        s3_client.put_object(Bucket=bucket, Key=f"in/{name}.jpg", Body=jpegs[name])
    s3_client.put_object(Bucket=bucket, Key="in/broken.jpg", Body=b"not an image")
    db = f"sqlite:///{tmp_path / 'results.sqlite'}"
    configure(monkeypatch, bucket, db, "/nonexistent-model", prefix="in/",
              AI_ASSETS_INFERENCE_URL=service_url)  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", RUN_THROUGH_SERVICE],
        capture_output=True, text=True, timeout=300, env=os.environ | {"DAGSTER_HOME": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {
        "runs": [True], "torch": False, "transformers": False,
        "decoding": [f"by the model service {service_url}"], "model_threads": [0],
    }  # fmt: skip
    rows = rows_by_key(db)
    assert "cat" in rows["in/chelsea.jpg"]["label"]
    assert rows["in/coffee.jpg"]["label"] == "espresso"
    assert rows["in/broken.jpg"]["status"] == "error"
    assert "not a recognised image format" in rows["in/broken.jpg"]["error"]
    model = requests.get(f"{service_url}/model", timeout=5).json()
    assert {(r["model_id"], r["model_revision"]) for r in rows.values()} == {
        (model["model_id"], model["model_revision"])
    }
