"""Decoding in worker processes (AI_ASSETS_DECODE_PROCESSES): the rows the threads give, and a
dead worker costs at most the object it held."""

from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ai_assets.s3.objects import Fetched
from ai_assets.settings import (
    DEFAULT_DECODE_CONCURRENCY,
    DEFAULT_DOWNLOAD_CONCURRENCY,
    available_cores,
)
from ai_assets.vision import model
from ai_assets.vision import workers as worker_processes
from ai_assets.vision.decode import ImageError
from ai_assets.vision.model import (
    HandedBatch,
    ImageClassifier,
    choose_decode_processes,
    load_classifier,
)
from ai_assets.vision.preprocess import FastPreprocessor, Geometry, ProcessorPreprocessor
from ai_assets.vision.stream import Job, classify_objects
from ai_assets.vision.workers import DecodeProcesses, Recipe
from ai_assets_dev.localdev import process_running
from ai_assets_tests.support.util import wait_for


@pytest.fixture(scope="module")
def with_processes(tiny_model_dir: str) -> Iterator[ImageClassifier]:
    classifier = ImageClassifier(tiny_model_dir, "cpu", decode_processes=2)
    assert classifier.workers is not None, "the tiny model takes the fast path"
    yield classifier
    classifier.workers.close()


def hostile(jpegs: dict[str, bytes]) -> dict[str, bytes]:
    """Good photos among every kind of object a decoder must turn into a clear error."""

    def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    photo = Image.open(io.BytesIO(jpegs["chelsea"]))
    rotated = photo.getexif()
    rotated[0x0112] = 6
    return {
        "chelsea.jpg": jpegs["chelsea"],
        "coffee.jpg": jpegs["coffee"],
        "not-an-image": b"not an image",
        "empty": b"",
        "truncated.jpg": jpegs["coffee"][:3000],
        "rotated.jpg": encoded(photo, "JPEG", exif=rotated),
        "grey.jpg": encoded(photo.convert("L"), "JPEG"),
        "cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "alpha.png": encoded(photo.convert("RGBA"), "PNG"),
        "strip.png": encoded(Image.new("RGB", (4000, 3), (200, 10, 10)), "PNG"),
        "too-many-pixels.png": encoded(Image.new("L", (3000, 3000)), "PNG"),
    }


def rows(classifier: ImageClassifier, objects: dict[str, bytes]) -> dict[str, tuple]:
    def fetch(key: str) -> Fetched:
        return Fetched(key=key, etag="e", size=len(objects[key]), data=objects[key])

    jobs = [Job("2026-12-01", key) for key in objects]
    batches = classify_objects(
        jobs, fetch, classifier, batch_size=4, top_k=3, max_pixels=4_000_000, concurrency=3
    )
    return {
        row.s3_key: (row.status, row.label, row.score, row.top_k, row.error)
        for batch in batches
        for row in batch
    }


def test_worker_processes_give_the_rows_the_threads_give(
    with_processes: ImageClassifier, tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    objects = hostile(jpegs)
    threads = rows(load_classifier(tiny_model_dir, "cpu"), objects)
    assert rows(with_processes, objects) == threads
    statuses = {key: row[0] for key, row in threads.items()}
    assert statuses["rotated.jpg"] == statuses["cmyk.jpg"] == statuses["strip.png"] == "ok"
    assert {key for key, status in statuses.items() if status == "error"} == {
        "not-an-image", "empty", "truncated.jpg", "too-many-pixels.png",
    }  # fmt: skip
    assert with_processes.decode_concurrency == 2  # the workers bound decoding, not the threads
    assert with_processes.decoding == "2 decode processes"


def test_workers_start_at_the_first_object_and_close_leaves_nothing(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    classifier = ImageClassifier(tiny_model_dir, "cpu", decode_processes=2)
    workers = classifier.workers
    assert workers is not None and workers.pids == []  # loading a model starts no process
    classifier.prepare(jpegs["coffee"])
    assert rows(classifier, {"coffee.jpg": jpegs["coffee"]})["coffee.jpg"][0] == "ok"
    pids, leased = workers.pids, list(workers._pool.leased)
    assert len(pids) == 2 and len(leased) == 2  # one object's slot, one batch's
    for slots in leased:  # not in /dev/shm, which a container caps at 64 MiB
        assert os.readlink(f"/proc/self/fd/{slots.fd}").startswith("/memfd:")
    workers.close()
    assert not any(process_running(pid) for pid in pids)
    assert all(slots.memory.closed for slots in leased)


def test_batches_reuse_their_shared_slots_so_a_run_holds_its_window_not_its_size(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    workers = with_processes.workers
    assert workers is not None
    objects = {f"{i}.jpg": jpegs["coffee"] for i in range(40)}  # 10 batches of 4
    assert {row[0] for row in rows(with_processes, objects).values()} == {"ok"}
    again = rows(with_processes, objects)
    assert {row[0] for row in again.values()} == {"ok"}
    batch_slots = [slots for slots in workers._pool.leased if slots.layout.count == 4]
    assert 0 < len(batch_slots) <= 4  # a window of 8 objects: 3 batches, and one labelled


def test_page_locked_slots_go_back_only_once_their_batch_is_answered(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    """On CUDA the batch crosses from page-locked slots by DMA, asynchronously: its slots may
    not take a newer batch's crops before the model has answered (the copy came before it)."""
    workers = with_processes.workers
    assert workers is not None
    batch = with_processes.batch(2)
    assert isinstance(batch, HandedBatch) and not batch.shared.page_locked  # the CPU's
    shared, free = batch.shared, workers._pool.free[2, batch.shared.layout.dtype, False]
    shared.page_locked = True  # as registered with CUDA: the order of the release is the test's
    try:
        for slot in range(2):
            batch.fill(slot, jpegs["chelsea"], 10**8)
        labels = batch.label([0, 1], 2)
        assert shared not in free
        assert [len(labels) for labels in labels()] == [2, 2]
        assert shared in free
    finally:
        shared.page_locked = False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA would page-lock them")
def test_slots_cuda_cannot_page_lock_stay_pageable(caplog: pytest.LogCaptureFixture) -> None:
    slots = worker_processes.SharedSlots(2, torch.uint8, (8, 8, 3), page_locked=True)
    try:
        assert not slots.page_locked
        assert "CUDA refused to page-lock 384 bytes of decode slots" in caplog.text
        slots.tensor.fill_(7)  # the slots work as pageable memory
        assert int(slots.tensor.sum()) == 7 * 384
    finally:
        slots.close()


def test_a_batch_given_up_on_frees_its_slots_once_its_objects_are_written(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    """A stale worker's crop must never land in a slot a newer batch already holds."""
    workers, pids = started(with_processes, jpegs["coffee"])
    signal_all(pids, signal.SIGSTOP)
    try:
        batch = with_processes.batch(4)
        assert isinstance(batch, HandedBatch)
        shared, free = batch.shared, workers._pool.free[4, batch.shared.layout.dtype, False]
        for slot in range(4):
            batch.fill(slot, jpegs["chelsea"], 10**8)
        del batch  # a run that failed mid-batch: nothing will label it
        gc.collect()
        assert shared not in free
    finally:
        signal_all(pids, signal.SIGCONT)
    wait_for("the slots back", lambda: shared in free, 30)


def test_closing_fails_the_objects_in_flight_and_leaves_nothing(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    assert with_processes.workers is not None
    workers = DecodeProcesses(with_processes.workers.recipe, 1)
    workers.start()
    [pid] = workers.pids
    slots = workers.lease(2, torch.uint8)
    os.kill(pid, signal.SIGSTOP)  # holds its objects until it is killed
    handed = [workers.submit(jpegs["coffee"], 10**8, slots, slot) for slot in range(2)]
    workers.close()
    for future in handed:
        with pytest.raises(RuntimeError, match="the decode processes were closed"):
            future.result(timeout=30)
    assert not process_running(pid) and slots.memory.closed
    with pytest.raises(RuntimeError, match="closed"):
        workers.prepare(jpegs["coffee"], 10**8)


def test_a_run_starts_its_workers_while_the_model_loads_not_at_the_first_object(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    from ai_assets.resources.classifier import ClassifierResource

    resource = ClassifierResource(model=tiny_model_dir, device="cpu", decode_processes=3)
    classifier = resource.load()
    workers = classifier.workers
    assert workers is not None
    try:
        wait_for("3 workers", lambda: len(workers.pids) == 3, 30, 0.01)  # no object asked for yet
        assert classifier.prepare(jpegs["coffee"]).shape == (3, 32, 32)
    finally:
        workers.close()


def test_a_tmpdir_too_deep_for_the_fork_servers_socket_fails_the_load_clearly(
    tmp_path: Path,
) -> None:
    """AF_UNIX caps a socket's path at 107 bytes; multiprocessing's own error names no remedy."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    load = "from ai_assets.vision.workers import start_fork_server; start_fork_server()"
    done = subprocess.run(
        [sys.executable, "-c", load], env={**os.environ, "TMPDIR": str(deep)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "AF_UNIX path too long" in done.stderr
    assert "Set TMPDIR to a short, writable folder" in done.stderr
    assert "AI_ASSETS_DECODE_PROCESSES=0" in done.stderr


@pytest.mark.parametrize(
    ("setting", "device", "cores", "device_decode", "chosen"),
    [
        (None, "cpu", 2, False, 0),  # the model shares the cores: the threads cost less
        (None, "cpu", 64, False, 0),
        (None, "cuda", 16, False, 14),  # an H200 node: the threads kept ~3.3 cores busy
        (None, "cuda:1", 8, False, 6),
        (None, "cuda", 7, False, 0),  # 5 workers would not outdo the threads' ~3.3 cores
        (None, "cuda", 16, True, 0),  # nvJPEG decodes the plain JPEGs
        (0, "cuda", 16, False, 0),  # as set
        (3, "cpu", 2, False, 3),
    ],
)
def test_decode_processes_are_chosen_for_the_device_and_the_cores_unless_set(
    setting: int | None, device: str, cores: int, device_decode: bool, chosen: int
) -> None:
    assert choose_decode_processes(setting, device, cores, device_decode) == chosen


def test_a_model_loads_with_the_decode_processes_chosen_for_it_and_its_fetch_threads_follow(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_assets.resources.classifier import ClassifierResource

    resource = ClassifierResource(model=tiny_model_dir, device="cpu")
    assert resource.decode_processes is None  # the default: chosen when the model loads
    threads = resource.load()
    assert threads.decode_processes == 0 and threads.workers is None  # on the CPU
    assert resource.fetch_threads(threads) == DEFAULT_DOWNLOAD_CONCURRENCY
    asked = []

    def one(setting: int | None, device: str, cores: int, device_decode: bool) -> int:
        asked.append((setting, device, cores, device_decode))
        return 1  # as an accelerator's choice would be, on the CPU this test has

    monkeypatch.setattr(model, "choose_decode_processes", one)
    chosen = resource.load()
    try:
        assert asked == [(None, "cpu", available_cores(), False)]
        assert chosen.decode_processes == 1 and chosen.decoding == "1 decode process"
        assert resource.fetch_threads(chosen) == max(DEFAULT_DOWNLOAD_CONCURRENCY, 2)
        pinned = ClassifierResource(model=tiny_model_dir, device="cpu", download_concurrency=5)
        assert pinned.fetch_threads(chosen) == 5
    finally:
        workers = chosen.workers
        assert workers is not None
        wait_for("1 worker", lambda: len(workers.pids) == 1, 30, 0.01)  # started, then ended
        workers.close()


def test_a_worker_that_ended_while_idle_is_replaced_and_the_object_labelled(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    workers, before = started(with_processes, jpegs["coffee"])
    signal_all(before, signal.SIGKILL)
    wait_for("the workers to end", lambda: not any(map(process_running, before)), 30, 0.01)
    expected = with_processes.preprocess(with_processes.decode(jpegs["coffee"]))
    for _ in before:  # each dead worker in turn: its object goes to a new one
        assert np.array_equal(with_processes.prepare(jpegs["coffee"]).numpy(), expected.numpy())
    after = workers.pids
    assert len(after) == 2 and not set(after) & set(before)


def test_ctrl_c_or_a_group_sigterm_leaves_the_workers_to_the_run(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    """The run's process decides when they stop: a signal to the whole process group (Ctrl-C
    in a terminal) must not turn the objects they hold into error rows, even one that reaches a
    worker the moment it was forked, before its loop started."""
    workers, before = started(with_processes, jpegs["coffee"])
    fresh = DecodeProcesses(workers.recipe, 2)
    fresh.start()
    try:
        signalled = before + fresh.pids  # fresh ones signalled at once, not yet in their loop
        signal_all(signalled, signal.SIGINT, signal.SIGTERM)
        time.sleep(0.5)  # a worker that heeded them would be gone by now
        assert all(process_running(pid) for pid in signalled)
        for classifier_workers in (with_processes.workers, fresh):
            assert classifier_workers is not None
            for _ in range(2):
                classifier_workers.prepare(jpegs["coffee"], 4_000_000)
        assert workers.pids == before and fresh.pids == signalled[len(before) :]
    finally:
        fresh.close()


def test_a_worker_killed_holding_an_object_is_replaced_and_the_object_tried_again(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    """As when the kernel's OOM killer picks a worker: the object is not to blame."""
    workers, before = started(with_processes, jpegs["coffee"])
    [crop] = killed_while_holding(workers, lambda: with_processes.prepare(jpegs["chelsea"]))
    expected = with_processes.preprocess(with_processes.decode(jpegs["chelsea"]))
    assert isinstance(crop, torch.Tensor) and np.array_equal(crop.numpy(), expected.numpy())
    with_processes.prepare(jpegs["coffee"])  # every worker usable again
    with_processes.prepare(jpegs["coffee"])
    assert len(workers.pids) == 2 and not set(workers.pids) & set(before)


def test_an_object_whose_workers_all_die_becomes_an_error_row(
    with_processes: ImageClassifier, jpegs: dict[str, bytes]
) -> None:
    """An object that crashes the decoder each time: blamed once ``attempts`` workers died."""
    assert with_processes.workers is not None
    workers = DecodeProcesses(with_processes.workers.recipe, 1, attempts=1)
    try:
        workers.start()
        before = workers.pids
        [error] = killed_while_holding(workers, lambda: workers.prepare(jpegs["chelsea"], 10**8))
        assert isinstance(error, ImageError) and error.kind == "decoder_crashed"
        assert str(error) == (
            "the decode process died on this object: its worker (exit code -9); the others go on"
        )
        assert workers.prepare(jpegs["coffee"], 10**8).shape == (3, 32, 32)  # a new one
        assert workers.pids != before
    finally:
        workers.close()


def test_a_worker_that_cannot_be_replaced_fails_the_objects_waiting_and_hangs_none(
    with_processes: ImageClassifier, jpegs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert with_processes.workers is not None
    workers = DecodeProcesses(with_processes.workers.recipe, 1)
    try:
        workers.start()
        [pid] = workers.pids

        def cannot_start(*args: object) -> None:
            raise OSError("the fork server is gone")

        monkeypatch.setattr(worker_processes._Worker, "__init__", cannot_start)
        os.kill(pid, signal.SIGSTOP)
        waiting = workers.submit(jpegs["coffee"], 10**8, workers.lease(1, torch.uint8), 0)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"(?s)collector failed.*the fork server is gone"):
            waiting.result(timeout=30)
        with pytest.raises(RuntimeError, match="collector failed"):
            workers.prepare(jpegs["coffee"], 10**8)
    finally:
        monkeypatch.undo()
        workers.close()


def test_a_bug_in_a_worker_fails_the_run_with_its_traceback(jpegs: dict[str, bytes]) -> None:
    nearest = Geometry(Image.Resampling.NEAREST, size=(32, 32))
    preprocessor = FastPreprocessor(nearest, np.ones(3), np.zeros(3), "pillow")
    preprocessor.resize = "torch"  # which has no such resize
    workers = DecodeProcesses(Recipe(preprocessor, 0), 1)
    try:
        with pytest.raises(
            RuntimeError, match=r"(?s)a decode process failed:.*AssertionError: a filter torch"
        ):
            workers.prepare(jpegs["coffee"], 10**8)
        # an image's own fault stays an ImageError, from the same worker
        with pytest.raises(ImageError, match="not a recognised image format"):
            workers.prepare(b"not an image", 10**8)
    finally:
        workers.close()


def test_a_model_whose_processor_runs_as_it_is_keeps_the_threads(
    tiny_model_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Geometry, "of", classmethod(lambda cls, processor: None))
    classifier = ImageClassifier(tiny_model_dir, "cpu", decode_processes=2)
    assert isinstance(classifier.preprocessor, ProcessorPreprocessor)
    assert classifier.workers is None
    assert classifier.decode_concurrency == DEFAULT_DECODE_CONCURRENCY
    bilinear = Geometry(Image.Resampling.BILINEAR, size=(8, 8))
    recipe = Recipe(FastPreprocessor(bilinear, np.ones(3), np.zeros(3)), 0)
    with pytest.raises(ValueError, match="at least 1"):
        DecodeProcesses(recipe, 0)


def killed_while_holding(workers: DecodeProcesses, prepare: Callable[[], object]) -> list[object]:
    """What ``prepare`` returned or raised when the worker it handed its object to was killed
    holding it (every worker stopped first, so that the object is still being held)."""
    pids = workers.pids
    signal_all(pids, signal.SIGSTOP)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(prepare())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for("the hand-over", lambda: held(workers) == 1, 30, 0.01)  # the worker's now
    signal_all(pids, signal.SIGKILL)
    thread.join(60)
    return outcome


def started(classifier: ImageClassifier, jpeg: bytes) -> tuple[DecodeProcesses, list[int]]:
    """The classifier's workers, started by an object, and their process ids."""
    workers = classifier.workers
    assert workers is not None
    classifier.prepare(jpeg)
    return workers, workers.pids


def signal_all(pids: list[int], *signals: signal.Signals) -> None:
    for pid in pids:
        for sent in signals:
            os.kill(pid, sent)


def held(workers: DecodeProcesses) -> int:
    """Objects handed to the workers and not answered yet."""
    return sum(len(worker.queued) for worker in list(workers._pool.workers))
