"""Decoding in worker processes: fetch threads hand objects' bytes to worker processes, which
decode and crop them straight into the batch's slots in shared memory, so the run's GIL holds
only the hand-over.

On many cores the fetch threads' own Python (Pillow's header parse, torch's dispatch, the
futures) shares one GIL: on an H200 machine's 16 cores the run's loop did 2,308 images/s with 4
decoding threads and 1,547 with 16, against 16,700 for the model (docs/scaling.md). No thread
waits on a worker per object: a hand-over queues the object to the worker with the fewest in
hand and returns a future, several objects queue per worker so that it never sleeps between
them, and one thread collects every worker's answers. Waking a blocked thread costs tens of
microseconds on a VM, and each object used to cost two.

A worker that dies is replaced at once. The object it held is tried again on another, and the
objects queued behind it are handed on: a worker killed from outside (the kernel's OOM killer)
costs no row, and an object that kills ``attempts`` workers in a row (a decoder's crash)
becomes an error row.

Pure logic: no Dagster. Workers fork from a server that imported torch and the decoders once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import mmap
import multiprocessing
import multiprocessing.forkserver
import os
import tempfile
import threading
import traceback
import weakref
from concurrent.futures import Future
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from ai_assets.vision.decode import ImageError, decode_image
from ai_assets.vision.threads import yield_to_inference

if TYPE_CHECKING:
    import torch

    from ai_assets.vision.preprocess import FastPreprocessor

log = logging.getLogger(__name__)

#: Seconds a worker gets to exit when asked before it is killed.
_EXIT_SECONDS = 5.0
#: Answers a busy worker sends at once at most.
_REPLIES = 4
#: Workers an object may see die before it is blamed for their deaths.
DEFAULT_ATTEMPTS = 2
#: cudaHostRegisterPortable: page-locked for every CUDA context, as torch's pinned memory is.
_PORTABLE = 1
#: What the forkserver imports once, so each worker forks ready (torch: the resize) and deaf to
#: the process group's signals (_fork_server).
_PRELOAD = ["torch", __name__, "ai_assets.vision._fork_server"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a worker needs to prepare an image into a slot as the run's threads would."""

    preprocessor: FastPreprocessor
    min_decode_side: int

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """One slot's crop: (height, width, 3), channels innermost."""
        width, height = self.preprocessor.geometry.output
        return height, width, 3


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A batch's slots as a worker maps them: which, how many, of what dtype."""

    key: int
    count: int
    dtype: torch.dtype

    def size(self, crop_shape: tuple[int, int, int]) -> int:
        """Bytes the slots take."""
        return self.count * math.prod(crop_shape) * self.dtype.itemsize


class SharedSlots:
    """A batch's slots in memory shared with the workers, who write their crops there; the
    model reads them there, as ``tensor``, (N, 3, H, W) channels_last.

    An anonymous memory file (memfd), handed to each worker once: it counts against the pod's
    memory, where /dev/shm, which containers cap at 64 MiB, would not hold even two batches of
    256 (38.5 MB each), and it leaves nothing behind when a process is killed. With
    ``page_locked`` (a model on CUDA) it is registered with CUDA as page-locked memory, as
    ``pin_memory`` buffers are: a batch then crosses to the device by DMA, asynchronously,
    instead of through the driver's staging copy in the calling thread (``page_locked`` says
    whether that worked).
    """

    _keys = itertools.count()

    def __init__(
        self,
        count: int,
        dtype: torch.dtype,
        crop_shape: tuple[int, int, int],
        page_locked: bool = False,
    ) -> None:
        self.layout = _Layout(next(self._keys), count, dtype)
        size = self.layout.size(crop_shape)
        self.fd = os.memfd_create("ai-assets-slots", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.memory = mmap.mmap(self.fd, size)
        self.tensor = _slots(self.memory, self.layout, crop_shape)
        self.page_locked = page_locked and _cuda_register(self.tensor.data_ptr(), size)

    def close(self) -> None:
        if self.page_locked:  # before the memory goes; at exit CUDA may have gone first
            _cuda_runtime().cudaHostUnregister(self.tensor.data_ptr())
        del self.tensor
        with contextlib.suppress(BufferError):  # a view still alive: unmapped when it goes
            self.memory.close()
        os.close(self.fd)


def _slots(memory: mmap.mmap, layout: _Layout, crop_shape: tuple[int, int, int]) -> Any:
    import torch

    count = layout.count * math.prod(crop_shape)
    flat = torch.frombuffer(memory, dtype=layout.dtype, count=count)
    return flat.view(layout.count, *crop_shape).permute(0, 3, 1, 2)


def _cuda_runtime() -> Any:
    import torch

    return torch.cuda.cudart()


def _cuda_register(address: int, size: int) -> bool:
    """Register host memory with CUDA as page-locked (portable: for every device); False, with
    a warning, where CUDA refuses or there is none.

    The call runs in a thread of its own: CUDA keeps a refusal as its thread's last error, which
    the check after the model's next kernel launch would raise as that launch's own.
    """
    answers: list[int | Exception] = []

    def register() -> None:
        try:
            runtime = _cuda_runtime()
            answers.append(int(runtime.cudaHostRegister(address, size, _PORTABLE)))
        except Exception as exc:  # no CUDA runtime in this torch
            answers.append(exc)

    call = threading.Thread(target=register, name="cuda-host-register")
    call.start()
    call.join()
    if answers == [0]:
        return True
    log.warning(
        "CUDA refused to page-lock %s bytes of decode slots (%s): batches cross to the device "
        "through the driver's staging copy",
        f"{size:,}",
        answers[0] if isinstance(answers[0], Exception) else f"cudaError {answers[0]}",
    )
    return False


class DecodeProcesses:
    """``count`` worker processes preparing objects into shared slots, and what hands objects
    to them.

    Started by ``start`` or at the first object. ``lease`` gives a batch its slots, ``submit``
    queues an object into one of them; ``prepare`` is one object's crop, waited for.
    """

    def __init__(self, recipe: Recipe, count: int, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if count < 1 or attempts < 1:
            raise ValueError(f"workers and attempts must be at least 1, not {count}, {attempts}")
        self.recipe = recipe
        self.count = count
        self.attempts = attempts
        #: page-lock the slots a model on CUDA reads (bench/model_ceiling.py measures without)
        self.page_lock = True
        self._pool = _Pool(recipe, count, attempts)
        self._closer = weakref.finalize(self, self._pool.close)

    def start(self, wait: bool = True) -> None:
        """Start the workers now, or with ``wait=False`` in the background: the fork server's
        imports (~1.5 s) then overlap the model's load instead of delaying the first batch."""
        if wait:
            self._pool.start()
        else:
            threading.Thread(target=self._pool.start, name="decode-start", daemon=True).start()

    def lease(self, count: int, dtype: torch.dtype, page_locked: bool = False) -> SharedSlots:
        """Slots for a batch, free ones reused (the workers map each once); ``page_locked``
        for a model on CUDA (``SharedSlots``)."""
        return self._pool.lease(count, dtype, page_locked)

    def release(self, slots: SharedSlots) -> None:
        """Slots whose batch the model has read."""
        self._pool.release(slots)

    def submit(self, data: bytes, max_pixels: int, slots: SharedSlots, slot: int) -> Future[None]:
        """Queue an object to be prepared into ``slots``' ``slot``.

        The future ends with None once the slot holds the object, or raises ImageError as
        ``decode_image`` does or when ``attempts`` workers in a row died holding the object, or
        RuntimeError for a bug in a worker.
        """
        self._pool.start()  # waits for a start under way
        return self._pool.submit(_Request(data, max_pixels, slots, slot))

    def prepare(self, data: bytes, max_pixels: int) -> torch.Tensor:
        """The object's crop, (3, h, w) uint8 in HWC memory, as ``FastPreprocessor`` gives it;
        raises as ``submit``'s future does."""
        import torch

        slots = self.lease(1, torch.uint8)
        try:
            self.submit(data, max_pixels, slots, 0).result()
            return slots.tensor[0].clone(memory_format=torch.preserve_format)
        finally:
            self.release(slots)

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (their CPU is not the run process's own)."""
        return self._pool.pids()

    def close(self) -> None:
        """Stop every worker and free the shared memory (also done when garbage-collected)."""
        self._closer()


@dataclasses.dataclass
class _Request:
    """One object for a worker, and what waits for it."""

    data: bytes
    max_pixels: int
    slots: SharedSlots
    slot: int
    future: Future[None] = dataclasses.field(default_factory=Future)
    deaths: int = 0  # workers that died holding it, in a row

    def message(self) -> tuple[bytes, int, _Layout, int]:
        return self.data, self.max_pixels, self.slots.layout, self.slot


class _Pool:
    """The workers, their slots, and the thread that collects their answers (it holds no
    reference to the ``DecodeProcesses``, whose collection closes it)."""

    def __init__(self, recipe: Recipe, count: int, attempts: int) -> None:
        self.recipe, self.count, self.attempts = recipe, count, attempts
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a worker replaced, or the pool closed
        # every set of slots, by the count, dtype and page-locking asked for; the free ones
        self.leased: dict[SharedSlots, tuple[int, Any, bool]] = {}
        self.free: dict[tuple[int, Any, bool], list[SharedSlots]] = collections.defaultdict(list)
        self.collector: threading.Thread | None = None
        self.stop_reader, self.stop_writer = multiprocessing.Pipe(duplex=False)
        self.failure: str | None = None  # why no object can be handed over any more

    def start(self) -> None:
        if self.collector is not None:
            return
        with self.lock:
            if self.collector is None and self.failure is None:
                for _ in range(self.count - len(self.workers)):  # after a start that failed
                    self.workers.append(_Worker(self.recipe))
                self.collector = threading.Thread(
                    target=self._collect, name="decode-answers", daemon=True
                )
                self.collector.start()

    def lease(self, count: int, dtype: Any, page_locked: bool) -> SharedSlots:
        with self.lock:
            kind = count, dtype, page_locked
            if self.free[kind]:
                return self.free[kind].pop()
            slots = SharedSlots(count, dtype, self.recipe.crop_shape, page_locked)
            self.leased[slots] = kind
            return slots

    def release(self, slots: SharedSlots) -> None:
        with self.lock:
            self.free[self.leased[slots]].append(slots)

    def submit(self, request: _Request) -> Future[None]:
        """Queue ``request`` on the worker with the fewest objects in hand."""
        with self.changed:
            while True:
                if self.failure is not None:
                    raise RuntimeError(self.failure)
                alive = [worker for worker in self.workers if worker.alive]
                if alive:
                    break
                self.changed.wait()  # every worker died at once: the collector replaces them
        for worker in sorted(alive, key=lambda worker: len(worker.queued)):
            if worker.hand(request):
                return request.future
        return self.submit(request)  # each died meanwhile

    def pids(self) -> list[int]:
        with self.lock:
            return [worker.process.pid for worker in self.workers if worker.process.pid]

    def _collect(self) -> None:
        """Answers in, futures ended; a worker's end replaces it (the collector thread)."""
        try:
            while True:
                with self.lock:
                    by_connection = {worker.connection: worker for worker in self.workers}
                ready = wait([*by_connection, self.stop_reader])
                if self.stop_reader in ready:
                    return
                for connection in ready:
                    self._answered(by_connection[connection])  # pyright: ignore[reportArgumentType]
        except BaseException:  # a bug here: every object waiting fails with it, none hangs
            self._fail(f"the decode processes' collector failed:\n{traceback.format_exc()}")

    def _answered(self, worker: _Worker) -> None:
        try:
            replies = worker.connection.recv()
        except (EOFError, OSError):
            self._replace(worker)
            return
        for reply in replies:
            _answer(worker.queued.popleft().future, reply)

    def _replace(self, dead: _Worker) -> None:
        """A new worker for one that ended, with its objects; the one it held blamed."""
        fresh = _Worker(self.recipe)  # first: if it cannot start, _fail finds the objects
        queued = dead.ended()
        dead.close()
        with self.changed:
            self.workers.remove(dead)
            self.workers.append(fresh)
            self.changed.notify_all()
        if queued:
            held = queued[0]
            held.deaths += 1
            if held.deaths >= self.attempts:
                queued.pop(0)
                tries = f"{held.deaths} workers in a row" if held.deaths > 1 else "its worker"
                exit_code = dead.process.exitcode
                held.future.set_exception(
                    ImageError(
                        f"the decode process died on this object: {tries} (exit code "
                        f"{exit_code}); the others go on",
                        "decoder_crashed",
                    )
                )
        for request in queued:  # to the new worker: another may be ending too, unseen yet
            if not fresh.hand(request):
                self.submit(request)

    def _fail(self, why: str) -> None:
        with self.changed:
            self.failure = why
            workers, self.workers = list(self.workers), []
            self.changed.notify_all()
        for worker in workers:
            for request in worker.ended():
                request.future.set_exception(RuntimeError(why))
            worker.close()

    def close(self) -> None:
        if self.collector is not None:
            self.stop_writer.send(None)
            self.collector.join()
        self._fail("the decode processes were closed")
        with self.lock:
            for slots in self.leased:
                slots.close()
            self.leased.clear()
            self.free.clear()
        self.stop_reader.close()
        self.stop_writer.close()


class _Worker:
    """One worker process, the pipe to it and the objects queued to it (parent side)."""

    def __init__(self, recipe: Recipe) -> None:
        context = _context()
        self.connection, theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(theirs, recipe), daemon=True, name="decode"
        )
        self.process.start()
        theirs.close()
        #: handed over and not answered yet, in the order the worker takes them
        self.queued: collections.deque[_Request] = collections.deque()
        self.alive = True
        self._sending = threading.Lock()
        self._mapped: set[int] = set()  # the slots whose memory it has

    def hand(self, request: _Request) -> bool:
        """Queue ``request`` here; False if this worker is known to have ended."""
        with self._sending:
            if not self.alive:
                return False
            self.queued.append(request)  # before it is sent: its answer may come at once
            with contextlib.suppress(OSError):  # it ended: the collector hands the object on
                self.connection.send(request.message())
                slots = request.slots
                if slots.layout.key not in self._mapped:  # its memory follows the first object
                    reduction.send_handle(self.connection, slots.fd, self.process.pid)
                    self._mapped.add(slots.layout.key)
            return True

    def ended(self) -> list[_Request]:
        """Mark the worker ended; the objects it had not answered."""
        with self._sending:
            self.alive = False
            queued = list(self.queued)
            self.queued.clear()
            return queued

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.connection.close()
        self.process.join(_EXIT_SECONDS)
        if self.process.is_alive():  # it ignores SIGTERM (see _fork_server)
            self.process.kill()
            self.process.join(_EXIT_SECONDS)


def _answer(future: Future[None], reply: tuple[str, str] | None) -> None:
    if reply is None:
        future.set_result(None)
        return
    message, kind = reply
    if kind == "failed":  # not the image's fault: the run fails, as in a thread
        future.set_exception(RuntimeError(f"a decode process failed:\n{message}"))
    else:
        future.set_exception(ImageError(message, kind))


def start_fork_server() -> None:
    """Start the fork server now, without waiting: it imports torch and the decoders while the
    caller goes on (loading the model), and the workers fork from it later in milliseconds.

    Its listening socket goes into a new folder under TMPDIR, whose path AF_UNIX caps at 107
    bytes: a deep TMPDIR fails here, said in terms a user can act on.
    """
    _context()
    try:
        multiprocessing.forkserver.ensure_running()
    except OSError as exc:
        raise RuntimeError(
            f"decode processes cannot start: their fork server's socket in TMPDIR "
            f"({tempfile.gettempdir()}) failed: {exc}. Set TMPDIR to a short, writable folder, "
            "or AI_ASSETS_DECODE_PROCESSES=0 to decode in threads"
        ) from exc


def _context() -> Any:
    """Workers fork from a server process that imported torch and the decoders once (~1.5 s
    of CPU, not one import per worker), never from the run's process and its threads."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _serve(connection: Connection, recipe: Recipe) -> None:
    """A worker's loop: (bytes, max pixels, slots, slot) in, the crop into the slot, and a list
    of None or (message, kind) out: one answer per object, sent once nothing more waits."""
    yield_to_inference()  # as a fetch thread: idle CPU only, torch's ops on one thread
    preprocessor = recipe.preprocessor
    mapped: dict[int, Any] = {}  # each batch's slots, by key
    replies = []
    while (message := _receive(connection)) is not None:
        data, max_pixels, layout, slot = message
        if layout.key not in mapped:  # their memory follows the first object for them
            mapped[layout.key] = _mapped(connection, layout, recipe.crop_shape)
        try:
            pixels = decode_image(data, max_pixels, recipe.min_decode_side)
            preprocessor.put(mapped[layout.key], slot, preprocessor(pixels))
            replies.append(None)
        except ImageError as exc:
            replies.append((str(exc), exc.kind))
        except Exception:  # a bug, not a bad image: the run fails with it
            replies.append((traceback.format_exc(), "failed"))
        if len(replies) < _REPLIES and connection.poll():
            continue
        try:
            connection.send(replies)
        except OSError:  # the run's process ended while this one decoded
            return
        replies = []


def _mapped(connection: Connection, layout: _Layout, crop_shape: tuple[int, int, int]) -> Any:
    """The slots whose memory the run's process sends next, mapped in this worker."""
    fd = reduction.recv_handle(connection)
    try:
        return _slots(mmap.mmap(fd, layout.size(crop_shape)), layout, crop_shape)
    finally:
        os.close(fd)  # the mapping holds the memory


def _receive(connection: Connection) -> Any:
    try:
        return connection.recv()
    except (EOFError, OSError):  # the run's process is gone: so is this worker's reason to be
        return None
