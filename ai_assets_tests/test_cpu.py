"""cpu.Meter on real threads and processes: a run's CPU, and the model's part of it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_assets.cpu import Meter, native_threads_cpu, thread_stats

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc")

#: A child that spends CPU on each line it reads, then answers (it stays until stdin ends).
BURNER = """
import sys, time
for line in sys.stdin:
    until = time.process_time() + float(line)
    while time.process_time() < until:
        pass
    print("spent", flush=True)
"""


class Model:
    """What a Meter asks of a model (cpu.Metered), answered by hand: its decode processes, and
    no CPU inside its calls unless a test says so."""

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = pids or []
        self.call_cpu_seconds = 0.0

    def decode_pids(self) -> list[int]:
        return self.pids


@contextlib.contextmanager
def burning() -> Iterator[subprocess.Popen[str]]:
    """A BURNER child, killed on the way out."""
    with subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            yield child
        finally:
            child.kill()


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[str]]:
    with burning() as child:
        yield child


def burn(child: subprocess.Popen[str], seconds: float) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{seconds}\n")
    child.stdin.flush()
    assert child.stdout.readline() == "spent\n"


def test_a_decode_process_counts_from_the_meters_start(burner: subprocess.Popen[str]) -> None:
    burn(burner, 0.3)  # before the meter: not the run's loop
    meter = Meter(Model([burner.pid]))
    burn(burner, 0.2)
    spent = meter.spent()
    assert 0.15 <= spent.decode_processes <= 0.29
    assert spent.total >= spent.decode_processes  # the run process's own CPU besides
    assert spent.model == pytest.approx(0, abs=0.05)
    assert spent.feed == spent.total - spent.model


def test_a_decode_process_started_meanwhile_counts_from_its_own_start() -> None:
    model = Model()
    meter = Meter(model)
    with burning() as child:
        model.pids = [child.pid]  # a worker that replaced one that died
        burn(child, 0.2)
        spent = meter.spent()  # its start-up (Python's) counts too: the replacement's cost
    assert spent.decode_processes >= 0.2


def test_python_threads_are_the_feeds_and_the_models_calls_are_the_models() -> None:
    model = Model()
    meter = Meter(model)

    def busy(seconds: float) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass

    thread = threading.Thread(target=busy, args=(0.2,))
    thread.start()
    thread.join()
    busy(0.1)
    model.call_cpu_seconds = 0.1  # as if this thread had spent it inside the model's calls
    spent = meter.spent()
    assert spent.total >= 0.3
    assert spent.model == pytest.approx(0.1, abs=0.05)  # its calls, no thread of its own
    assert spent.feed >= 0.15


def test_torchs_openmp_team_is_the_models() -> None:
    import torch

    from ai_assets.vision.threads import torch_threads

    if min(torch.get_num_threads(), len(os.sched_getaffinity(0))) < 2:
        pytest.skip("torch runs on one thread here: it has no team")
    meter = Meter(Model())
    matrix = torch.rand(512, 512)
    with torch_threads(2):
        started = time.thread_time()
        while time.thread_time() - started < 0.4:
            matrix @ matrix
    spent = meter.spent()  # this thread led the team (the model's caller): the feed here
    assert spent.model >= 0.1  # the team's other thread
    assert spent.feed >= 0.3


def test_obstores_runtime_threads_are_the_feeds(s3_client, bucket: str) -> None:
    from ai_assets.resources import ImageBucketResource

    s3_client.put_object(Bucket=bucket, Key="a.jpg", Body=b"x")
    fetcher = ImageBucketResource(bucket=bucket).get_fetcher(max_bytes=1000)
    assert fetcher.store is not None and fetcher("a.jpg").data == b"x"
    names = {stat.pid: stat.command for stat in thread_stats()}
    runtime = {tid for tid, name in names.items() if name.startswith("tokio-")}
    assert runtime, f"obstore's threads are named otherwise now: {sorted(set(names.values()))}"
    assert not runtime & native_threads_cpu().keys()


def test_a_classifier_counts_its_callers_cpu_in_its_calls(tiny_model_dir: str) -> None:
    import numpy as np

    from ai_assets.vision.model import load_classifier

    classifier = load_classifier(tiny_model_dir, "cpu")
    before = classifier.call_cpu_seconds
    started = time.thread_time()
    blank = classifier.preprocess(np.zeros((64, 64, 3), np.uint8))
    for _ in range(20):
        classifier.predict([blank] * 64, top_k=1)
    assert 0 < classifier.call_cpu_seconds - before <= time.thread_time() - started
    assert classifier.decode_pids() == []  # the run's threads decode for it
