"""Process tuning for CPU inference (Linux): the allocator, and threads that yield to torch."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys


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


def yield_to_inference() -> None:
    """Let the calling thread run only on CPU time that inference leaves idle (Linux).

    A fetch/decode thread that preempts one of torch's OpenMP threads mid-batch stalls the
    whole batch while the other OpenMP thread spins at the barrier; on 2 cores with 8 such
    threads that cost 15 % of throughput (62.5 vs 52.9 images/s). As SCHED_IDLE the thread
    still uses any core torch leaves free, and every core while a batch waits for its images.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
