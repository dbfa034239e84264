"""Where a run's CPU goes (Linux ``/proc``): its process and its decode processes, and the
model's part of it, so that a run can say what its pipeline costs besides the model."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

#: obstore's runtime names its threads so: they GET objects, the feed's work, not the model's
_FEED_THREAD_PREFIXES = ("tokio-",)


@dataclasses.dataclass(frozen=True)
class ProcStat:
    """One process's or thread's ``/proc/.../stat`` (Linux): its command name, then the fields
    after it (``fields[0]`` is the state, ``[2]`` the process group, ``[11:15]`` its CPU ticks)."""

    pid: int
    command: str
    fields: list[str]

    @classmethod
    def of(cls, pid: int, thread: int | None = None) -> ProcStat | None:
        """Process ``pid``'s, or its thread ``thread``'s; None once it is gone."""
        path = Path("/proc") / str(pid)
        try:
            text = (path / "task" / str(thread) if thread else path).joinpath("stat").read_text()
        except OSError:
            return None
        head, _, rest = text.rpartition(")")  # the command name may hold spaces and ")"
        return cls(thread or pid, head.split("(", 1)[1], rest.split())

    @property
    def running(self) -> bool:
        """False for a zombie: it has ended, and its parent has not reaped it yet."""
        return self.fields[0] != "Z"

    def cpu_seconds(self, reaped_children: bool = False) -> float:
        """User + system CPU, with that of the children it has waited for if asked."""
        ticks = self.fields[11:15] if reaped_children else self.fields[11:13]
        return sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")


def thread_stats() -> list[ProcStat]:
    """The stat of each thread of this process still there when read (none off Linux)."""
    try:
        tasks = [int(task.name) for task in Path("/proc/self/task").iterdir()]
    except OSError:
        return []
    return [stat for tid in tasks if (stat := ProcStat.of(os.getpid(), tid)) is not None]


def native_threads_cpu() -> dict[int, float]:
    """CPU seconds of each thread of this process that Python did not start, obstore's runtime
    aside: torch's OpenMP team and CUDA's threads, which work for the model."""
    python = {thread.native_id for thread in threading.enumerate()}
    return {
        stat.pid: stat.cpu_seconds()
        for stat in thread_stats()
        if stat.pid not in python and not stat.command.startswith(_FEED_THREAD_PREFIXES)
    }


def processes_cpu(pids: Iterable[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` that is still there."""
    stats = (ProcStat.of(pid) for pid in pids)
    return {stat.pid: stat.cpu_seconds() for stat in stats if stat is not None}


class Metered(Protocol):
    """What a model tells a ``Meter``: its decode processes, and its own calls' CPU."""

    def decode_pids(self) -> list[int]:
        """The processes that decode for it (none where its run's threads do)."""
        ...

    @property
    def call_cpu_seconds(self) -> float:
        """CPU its callers' threads have spent inside its forward passes, so far."""
        ...


class _NoModel:
    """A Meter's model where there is none to tell apart: no decode processes, no calls."""

    call_cpu_seconds = 0.0

    def decode_pids(self) -> list[int]:
        return []


@dataclasses.dataclass(frozen=True)
class Spent:
    """CPU seconds of a stretch of a run, in all (the run process and its decode processes) and
    the model's part: its callers' threads inside its forward passes and its own threads."""

    total: float
    model: float
    decode_processes: float

    @property
    def feed(self) -> float:
        """What the pipeline spent besides the model: GETs, decoding, resizing, rows, upserts."""
        return max(self.total - self.model, 0.0)


class Meter:
    """The CPU a run spends from now on, and the model's part of it (without a model, this
    process's CPU alone).

    A decode process counts from the meter's start, or from its own start if it replaced one
    meanwhile; one that died meanwhile is left out (its pid is gone from ``/proc``). A thread
    Python did not start counts as the model's: torch's OpenMP team spins after each batch,
    and that is the model's too.
    """

    def __init__(self, model: Metered | None = None) -> None:
        self.model: Metered = model or _NoModel()
        self._process = time.process_time()
        self._calls = self.model.call_cpu_seconds
        self._decoders = processes_cpu(self.model.decode_pids())
        self._native = native_threads_cpu()

    def spent(self) -> Spent:
        process = time.process_time() - self._process  # before this reading's own reads
        decoders = processes_cpu(self.model.decode_pids())
        decoding = sum(cpu - self._decoders.get(pid, 0.0) for pid, cpu in decoders.items())
        native = native_threads_cpu()
        threads = sum(cpu - self._native.get(tid, 0.0) for tid, cpu in native.items())
        calls = self.model.call_cpu_seconds - self._calls
        total = process + decoding
        return Spent(total=total, model=calls + threads, decode_processes=decoding)
