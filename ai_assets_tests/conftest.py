"""Fixtures for real services: PostgreSQL, SeaweedFS (S3), a tiny local model, the real model.

Every server binds 127.0.0.1 on a free port and is stopped at the end of the session, even
when tests fail. A test that uses a server, or lives in e2e/ or deploy/, is marked
``integration`` here, so ``make test-fast`` (``-m "not integration"``) runs the rest alone.
``make test`` runs two workers (pytest-xdist); the e2e tests share one of them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import dagster as dg
import pytest

from ai_assets_dev.localdev import PostgresServer, postgres, seaweedfs
from ai_assets_tests.fakes.sqs_server import FakeSqs, fake_sqs
from ai_assets_tests.support.util import ACCESS_KEY, SECRET_KEY, configure

if TYPE_CHECKING:  # imported where used: it loads the partitions, which read the start date
    from ai_assets_dev.inprocess import InProcessDaemon

_counter = itertools.count()
#: Fixtures that start a server (or need one): their tests are ``integration`` tests.
SERVER_FIXTURES = frozenset(
    {"pg_server", "s3_endpoint", "moto_endpoint", "slack_api", "fake_queue", "service_url"}
)
#: Folders whose every test runs real processes (dagster dev, helm, a browser, the demo).
SERVER_FOLDERS = ("e2e", "deploy")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns xdist_group marks into groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        folder = item.path.parent.name
        if (
            fixtures & SERVER_FIXTURES
            or params.get("db_url") == "postgresql"
            or folder in SERVER_FOLDERS
        ):
            item.add_marker(pytest.mark.integration)
        if folder == "e2e":  # a module's tests share its dagster dev or demo: one worker each
            item.add_marker(pytest.mark.xdist_group(f"e2e-{item.path.stem}"))


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the tests' partitions start today (UTC): from the default start years back, every test's
# first complete pass would record hundreds of empty days; tests of older days set their own
os.environ.setdefault("AI_ASSETS_START_DATE", dt.datetime.now(dt.UTC).date().isoformat())
for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(proxy, None)  # network tests only ever talk to 127.0.0.1


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET_KEY) as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_client(s3_env: dict[str, str]) -> Any:
    return boto3.session.Session().client("s3")  # keys from this test's environment


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket on the session's SeaweedFS server."""
    name = f"test-{os.getpid()}-{next(_counter)}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny randomly initialised ViT image classifier, built locally in a second."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    labels = {0: "alpha", 1: "beta", 2: "gamma", 3: "delta"}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def lite0_dir() -> str:
    """The real converted EfficientNet-Lite0 (cached in the repo's .cache after the first run)."""
    from ai_assets.vision.convert import ensure_default_model

    return str(ensure_default_model())


@pytest.fixture(scope="session")
def jpegs() -> dict[str, bytes]:
    from ai_assets_dev.samples import sample_jpegs

    return sample_jpegs()


_RELIABILITY: list[tuple[str, str, int, int]] = []


@pytest.fixture
def reliability_report():
    """Record ``(case, outcome, rows expected, rows found)`` for the ``make reliability`` table."""
    return lambda case, outcome, expected, found: _RELIABILITY.append(
        (case, outcome, expected, found)
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RELIABILITY:
        return
    width = max(len(repr(case)) for case, *_ in _RELIABILITY)
    terminalreporter.section("reliability summary")
    terminalreporter.write_line(f"{'case':<{width}}  {'outcome':<8} {'expected':>8} {'found':>6}")
    for case, outcome, expected, found in _RELIABILITY:
        terminalreporter.write_line(f"{case!r:<{width}}  {outcome:<8} {expected:>8} {found:>6}")


@pytest.fixture
def slack_api() -> Iterator[Any]:
    from ai_assets_tests.fakes.slack_server import fake_slack

    with fake_slack() as slack:
        yield slack


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's server (S3 and SQS, S3 sending its event notifications to SQS) for one test."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "moto",
            "AWS_SECRET_ACCESS_KEY": "moto-secret",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance, its storage in a temporary directory."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def make_daemon(instance: dg.DagsterInstance) -> Callable[[], InProcessDaemon]:
    """The in-process daemon, built once the test has set the environment it reads."""
    from ai_assets_dev.inprocess import InProcessDaemon

    return lambda: InProcessDaemon(instance)


@pytest.fixture
def fake_queue(
    s3_env: dict[str, str],
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
    tiny_model_dir: str,
) -> Iterator[tuple[FakeSqs, str]]:
    """SeaweedFS for the bucket, the fast SQS server for its (hand-written) notifications."""
    with fake_sqs() as sqs:
        url = sqs.create_queue("image-events")
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        configure(
            monkeypatch,
            bucket,
            f"sqlite:///{tmp_path / 'results.sqlite'}",
            tiny_model_dir,
            prefix="in/",
            AI_ASSETS_SQS_QUEUE_URL=url,
        )
        yield sqs, url
