"""Process tuning for inference (Linux): the allocator, the cyclic collector, and threads that
yield to torch."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def tune_allocator() -> None:
    """Keep freed memory in the process instead of returning it to the OS after every batch.

    glibc's default mmap/trim thresholds make each forward pass re-fault its activation
    buffers; on CPU that halves throughput (bench/throughput.py measures it). Same effect as
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 1 GiB, applied wherever a model loads.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Load a model with the cyclic collector paused, then keep what is alive out of its passes.

    Importing torch and transformers and loading a model leaves ~385k tracked objects; while
    they pile up, the collector walks all of them each time they grow by a quarter: ~1.2 s of
    CPU per run process on 2 cores (7.4 -> 6.2 s to load, side by side). ``gc.freeze()`` keeps them
    out of every later pass, the interpreter's exit included (1.1-1.4 s of CPU per run process
    here, against ~0.2 frozen). The loading's own garbage cycles are frozen with them, never
    collected: ~13k objects, no measurable memory (a collection first would cost 0.6 s).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def yield_to_inference() -> None:
    """Let the calling thread run only on CPU time that inference leaves idle (Linux), and run
    its own torch ops alone.

    A fetch/decode thread that preempts one of torch's OpenMP threads mid-batch stalls the
    whole batch while the other OpenMP thread spins at the barrier; on 2 cores with 8 such
    threads that cost 15 % of throughput (62.5 vs 52.9 images/s). As SCHED_IDLE the thread
    still uses any core torch leaves free, and every core while a batch waits for its images.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # these threads already run side by side; a torch op on one image above torch's grain
    # (32,768 elements) would open an OpenMP team of its own, whose threads spin after it:
    # 0.2-0.3 ms per image on 2 cores
    set_torch_threads(1)


def set_torch_threads(count: int) -> int | None:
    """Run torch's ops in the calling thread on ``count`` OpenMP threads, where torch uses GNU
    OpenMP; the thread's count before (None elsewhere).

    OpenMP's thread count is per thread, where torch.set_num_threads would also change the
    default of every thread that starts torch later (the model's, for a fetch thread's call).
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.__file__:
        return None  # not imported: this process runs no torch op
    gomp = _torch_openmp(torch.__file__)
    if gomp is None:
        return None
    before = torch.get_num_threads()  # torch's per-thread set-up first: it would undo this
    gomp.omp_set_num_threads(count)
    return before


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's ops in the calling thread on ``count`` OpenMP threads meanwhile."""
    before = set_torch_threads(count)
    try:
        yield
    finally:
        if before is not None:
            set_torch_threads(before)


@functools.cache
def _torch_openmp(torch_init: str) -> ctypes.CDLL | None:
    """The GNU OpenMP runtime torch's wheel ships and has loaded, if it is that build."""
    library = Path(torch_init).parent / "lib" / "libgomp.so.1"
    if not library.exists():
        return None
    try:
        return ctypes.CDLL(str(library))  # the copy torch loaded: dlopen returns its handle
    except OSError:
        return None
