"""Decoding in worker processes: a fetch thread hands an object's bytes to an idle worker, which
decodes and crops it into shared memory, so the run's GIL holds only the hand-over.

On many cores the fetch threads' own Python (Pillow's header parse, torch's dispatch, the
futures) shares one GIL: on an H200 machine's 16 cores the run's loop did 2,308 images/s with 4
decoding threads and 1,547 with 16, against 16,700 for the model (docs/scaling.md). Each worker
has its own interpreter and its own crop in shared memory; the fetch thread copies the crop into
its batch slot before the worker takes the next object. A worker that dies holding an object is
replaced and the object tried again on the new one: a worker killed from outside (the kernel's
OOM killer) costs no row, and an object that kills ``attempts`` workers in a row (a decoder's
crash) becomes an error row.

Pure logic: no Dagster. Workers fork from a server that imported torch and the decoders once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.forkserver
import queue
import threading
import traceback
import weakref
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_assets.vision.decode import ImageError, decode_image
from ai_assets.vision.preprocess import Geometry
from ai_assets.vision.threads import yield_to_inference

if TYPE_CHECKING:
    import torch

#: Seconds a worker gets to exit when asked before it is killed.
_EXIT_SECONDS = 5.0
#: Workers an object may see die before it is blamed for their deaths.
DEFAULT_ATTEMPTS = 2
#: What the forkserver imports once, so each worker forks ready (torch: the resize) and deaf to
#: the process group's signals (_fork_server).
_PRELOAD = ["torch", __name__, "ai_assets.vision._fork_server"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a worker needs to prepare an image as the run's preprocessor does."""

    geometry: Geometry
    resize: str  # "torch" or "pillow" (FastPreprocessor's)
    min_decode_side: int

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """The crop in shared memory: (height, width, 3) uint8."""
        width, height = self.geometry.output
        return height, width, 3


class DecodeProcesses:
    """``count`` worker processes, each preparing one object at a time into its shared crop.

    Started by ``start`` or at the first ``prepare``; at most ``count`` objects are prepared at
    once, and a caller beyond that waits for an idle worker.
    """

    def __init__(self, recipe: Recipe, count: int, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if count < 1 or attempts < 1:
            raise ValueError(f"workers and attempts must be at least 1, not {count}, {attempts}")
        self.recipe = recipe
        self.count = count
        self.attempts = attempts
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._started = False
        self._closer = weakref.finalize(self, _close_all, self._workers)

    def start(self, wait: bool = True) -> None:
        """Start the workers now, or with ``wait=False`` in the background: the fork server's
        imports (~1.5 s) then overlap the model's load instead of delaying the first batch."""
        if wait:
            self._start()
        else:
            threading.Thread(target=self._start, name="decode-start", daemon=True).start()

    def prepare(self, data: bytes, max_pixels: int) -> torch.Tensor:
        """The object's crop, (3, h, w) uint8 in HWC memory, as ``FastPreprocessor`` gives it;
        raises ImageError as ``decode_image`` does, or when ``attempts`` workers in a row died
        holding the object."""
        self._start()  # waits for a start under way
        worker = self._idle.get()
        died = None
        try:
            for _ in range(self.attempts):
                worker = self._handed(worker, data, max_pixels)
                try:
                    return worker.receive()
                except _WorkerDied as exc:
                    died, worker = exc, self._replace(worker)
        finally:
            self._idle.put(worker)
        tries = f"{self.attempts} workers in a row" if self.attempts > 1 else "its worker"
        raise ImageError(
            f"the decode process died on this object: {tries} ({died}); the others go on",
            "decoder_crashed",
        )

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (their CPU is not the run process's own)."""
        return [worker.process.pid for worker in self._workers if worker.process.pid]

    def close(self) -> None:
        """Stop every worker and free its shared memory (also done when garbage-collected)."""
        self._closer()

    def _start(self) -> None:
        if self._started:
            return
        with self._lock:
            if not self._started:
                for _ in range(self.count - len(self._workers)):  # after a start that failed
                    self._idle.put(self._spawn())
                self._started = True

    def _handed(self, worker: _Worker, data: bytes, max_pixels: int) -> _Worker:
        """The worker now holding the object: ``worker``, or if it ended while idle (not this
        object's doing) a new one."""
        try:
            worker.send(data, max_pixels)
        except _WorkerDied:
            worker = self._replace(worker)
            worker.send(data, max_pixels)
        return worker

    def _spawn(self) -> _Worker:
        worker = _Worker(self.recipe)
        self._workers.append(worker)
        return worker

    def _replace(self, dead: _Worker) -> _Worker:
        with self._lock:
            self._workers.remove(dead)
            dead.close()
            return self._spawn()


class _WorkerDied(Exception):
    """The worker process has ended."""


class _Worker:
    """One worker process, the pipe to it and its crop in shared memory (parent side)."""

    def __init__(self, recipe: Recipe) -> None:
        self.shape = recipe.crop_shape
        self.memory = SharedMemory(create=True, size=int(np.prod(self.shape)))
        context = _context()
        self.connection, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, recipe, self.memory.name), daemon=True, name="decode"
        )
        self.process.start()
        theirs.close()

    def send(self, data: bytes, max_pixels: int) -> None:
        """Hand the object over; raises _WorkerDied if the process has ended."""
        try:
            self.connection.send((data, max_pixels))
        except OSError:
            raise self._died() from None

    def receive(self) -> torch.Tensor:
        """The crop of the object handed over, or its ImageError; _WorkerDied if the process
        ended before it answered."""
        import torch

        try:
            reply = self.connection.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if reply is not None:
            message, kind = reply
            if kind == "failed":  # not the image's fault: the run fails, as in a thread
                raise RuntimeError(f"a decode process failed:\n{message}")
            raise ImageError(message, kind)
        crop = np.ndarray(self.shape, np.uint8, buffer=self.memory.buf).copy()
        return torch.from_numpy(crop).permute(2, 0, 1)

    def _died(self) -> _WorkerDied:
        self.process.join(_EXIT_SECONDS)
        return _WorkerDied(f"exit code {self.process.exitcode}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.connection.close()
        self.process.join(_EXIT_SECONDS)
        if self.process.is_alive():  # it ignores SIGTERM (see _fork_server)
            self.process.kill()
            self.process.join(_EXIT_SECONDS)
        self.memory.close()
        with contextlib.suppress(FileNotFoundError):
            self.memory.unlink()


def _close_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()
    workers.clear()


def start_fork_server() -> None:
    """Start the fork server now, without waiting: it imports torch and the decoders while the
    caller goes on (loading the model), and the workers fork from it later in milliseconds."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _context() -> Any:
    """Workers fork from a server process that imported torch and the decoders once (~1.5 s
    of CPU, not one import per worker), never from the run's process and its threads."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _serve(connection: Connection, recipe: Recipe, memory_name: str) -> None:
    """A worker's loop: (bytes, max pixels) in, None or (message, kind) out, the crop in memory."""
    import torch

    yield_to_inference()  # as a fetch thread: idle CPU only, torch's ops on one thread
    memory = SharedMemory(memory_name)  # the run's process owns and unlinks it
    out = torch.from_numpy(np.ndarray(recipe.crop_shape, np.uint8, buffer=memory.buf))
    while (message := _receive(connection)) is not None:
        data, max_pixels = message
        try:
            pixels = decode_image(data, max_pixels, recipe.min_decode_side)
            out.copy_(recipe.geometry.cropped(pixels, recipe.resize).permute(1, 2, 0))
            reply = None
        except ImageError as exc:
            reply = (str(exc), exc.kind)
        except Exception:  # a bug, not a bad image: the run fails with it
            reply = (traceback.format_exc(), "failed")
        try:
            connection.send(reply)
        except OSError:  # the run's process ended while this one decoded
            return


def _receive(connection: Connection) -> Any:
    try:
        return connection.recv()
    except (EOFError, OSError):  # the run's process is gone: so is this worker's reason to be
        return None
