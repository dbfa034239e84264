"""The configuration contract's readers, directly: the model service's settings and the helpers."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ai_assets.common import Counters, as_utc, chunked
from ai_assets.settings import (
    CONTRACT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PRECISION,
    DEFAULT_QUEUE_LIMIT,
    ServiceSettings,
    cgroup_cpu_limit,
    cpu_cgroups,
    declared,
    problems,
    service_settings,
)

#: Every variable of ours the readers below look at (AWS_MAX_ATTEMPTS is read as a run integer).
OUR_VARIABLES = [
    v.name for v in CONTRACT if v.name.startswith("AI_ASSETS_") or v.name == "AWS_MAX_ATTEMPTS"
]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OUR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_service_takes_the_contracts_defaults_when_nothing_is_set(clean) -> None:
    settings = service_settings()
    assert settings == ServiceSettings()
    assert (settings.batch_size, settings.precision) == (DEFAULT_BATCH_SIZE, DEFAULT_PRECISION)
    assert settings.queue_limit == DEFAULT_QUEUE_LIMIT and settings.model == ""


def test_the_service_reads_every_variable_it_documents(clean) -> None:
    for name, value in {
        "AI_ASSETS_MODEL": " /models/vit ", "AI_ASSETS_PRECISION": "bf16",
        "AI_ASSETS_BATCH_SIZE": "64", "AI_ASSETS_TOP_K": "3",
        "AI_ASSETS_MAX_IMAGE_BYTES": "1000", "AI_ASSETS_MAX_IMAGE_PIXELS": "2000",
        "AI_ASSETS_BATCH_WAIT_MS": "2.5", "AI_ASSETS_QUEUE_LIMIT": "8",
        "AI_ASSETS_DECODE_PROCESSES": "6",
    }.items():  # fmt: skip
        clean.setenv(name, value)
    assert service_settings() == ServiceSettings(
        model="/models/vit", precision="bf16", batch_size=64, top_k=3, max_image_bytes=1000,
        max_image_pixels=2000, batch_wait_ms=2.5, queue_limit=8, decode_processes=6,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AI_ASSETS_BATCH_SIZE", "many", "AI_ASSETS_BATCH_SIZE must be a whole number, got 'many'"),
        ("AI_ASSETS_TOP_K", "0", "AI_ASSETS_TOP_K must be at least 1, got '0'"),
        ("AI_ASSETS_BATCH_WAIT_MS", "-1", "AI_ASSETS_BATCH_WAIT_MS must be at least 0"),
    ],
)
def test_a_bad_value_names_its_variable(clean, name: str, value: str, message: str) -> None:
    clean.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        service_settings()


def test_only_declared_variables_can_be_read() -> None:
    assert declared("AI_ASSETS_BATCH_SIZE") == "AI_ASSETS_BATCH_SIZE"
    with pytest.raises(KeyError, match="not in the configuration contract"):
        declared("AI_ASSETS_TYPO")


def test_the_shared_helpers() -> None:
    assert [list(c) for c in chunked(range(7), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    naive = dt.datetime(2026, 12, 1, 12)
    assert as_utc(naive) == dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    paris = dt.datetime(2026, 12, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert as_utc(paris) == as_utc(naive) and as_utc(paris).tzinfo == dt.UTC

    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Pair(Counters):
        a: int = 0
        b: int = 0

    assert Pair(1, 2) + Pair(3, 4) == Pair(4, 6)


def test_every_bad_setting_is_found_up_front_one_message_each(clean) -> None:
    assert problems() == []
    clean.setenv("AI_ASSETS_START_DATE", "yesterday")
    clean.setenv("AI_ASSETS_BATCH_SIZE", "lots")  # read by the service and by runs: said once
    clean.setenv("AWS_MAX_ATTEMPTS", "0")
    clean.setenv("AI_ASSETS_RECONCILE_MINUTES", "soon")
    assert problems() == [
        "AI_ASSETS_START_DATE must be an ISO date (YYYY-MM-DD), got 'yesterday'",
        "AI_ASSETS_RECONCILE_MINUTES must be a number, got 'soon'",
        "AI_ASSETS_BATCH_SIZE must be a whole number, got 'lots'",
        "AWS_MAX_ATTEMPTS must be at least 1, got '0'",
    ]


# a pod's CPU limit: the cgroup quota that available_cores() honours and torch does not


def fake_cgroups(base: Path, mounts: list[str], groups: list[str], files: dict[str, str]) -> Path:
    """A /proc/self and a /sys/fs/cgroup as a container runtime lays them out, under ``base``."""
    proc = base / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("".join(f"{i} 1 0:{i} {m}\n" for i, m in enumerate(mounts)))
    (proc / "cgroup").write_text("\n".join(groups) + "\n")
    for name, text in files.items():
        path = base / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc


V2_MOUNT = "/ /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"


@pytest.mark.parametrize(
    ("mounts", "groups", "files", "limit"),
    [
        # cgroup v2 in its own namespace (containerd, Docker 20+): the mount is the pod's cgroup
        ([V2_MOUNT], ["0::/"], {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5),
        ([V2_MOUNT], ["0::/"], {"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
        # v2 seen from the host's namespace: the container's folder, then the pod's above it
        (
            [V2_MOUNT],
            ["0::/kubepods/pod1/c1"],
            {
                "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000\n",
                "/sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n",
                "/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
                "/sys/fs/cgroup/kubepods/pod2/cpu.max": "50000 100000\n",  # another pod's
            },
            3.0,
        ),
        # v1 without a cgroup namespace: the runtime mounts the container's own folder
        (
            ["/docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct"],
            ["12:pids:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"],
            {
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            2.0,
        ),
        # v1 and a v2 hierarchy without the cpu controller (hybrid): the tighter of pod and
        # container
        (
            [
                "/ /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
                "/ /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu",
                "/ /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct",
            ],
            ["3:cpuacct:/pod/c", "2:cpu:/pod/c", "0::/pod/c"],
            {
                "/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us": "400000\n",
                "/sys/fs/cgroup/cpu/pod/cpu.cfs_period_us": "100000\n",
                "/sys/fs/cgroup/cpu/pod/c/cpu.cfs_quota_us": "250000\n",
                "/sys/fs/cgroup/cpu/pod/c/cpu.cfs_period_us": "100000\n",
            },
            2.5,
        ),
        (
            ["/ /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu"],
            ["2:cpu:/"],
            {
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            },
            None,
        ),
        (["/ /proc rw - proc proc rw"], ["0::/"], {}, None),  # no cgroup file system
    ],
)
def test_the_cpu_quota_is_read_as_container_runtimes_lay_cgroups_out(
    tmp_path: Path, mounts: list[str], groups: list[str], files: dict[str, str], limit: float | None
) -> None:
    proc = fake_cgroups(tmp_path, mounts, groups, files)
    assert cgroup_cpu_limit(proc, tmp_path) == limit


LIMITED = """
import json, os, sys
if sys.argv[1]:  # joined before anything reads the cores
    open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write(str(os.getpid()))
from ai_assets.settings import DEFAULT_DOWNLOAD_CONCURRENCY, available_cores, cgroup_cpu_limit
from ai_assets.vision.model import ImageClassifier
import torch
print(json.dumps({
    "limit": cgroup_cpu_limit(), "cores": available_cores(),
    "fetch_threads": DEFAULT_DOWNLOAD_CONCURRENCY, "torch_default": torch.get_num_threads(),
    "model_threads": ImageClassifier(sys.argv[2], "cpu").threads,
}))
"""


@contextlib.contextmanager
def cpu_limited_cgroup(cpus: float) -> Iterator[Path]:
    """A real cgroup below this process's, its CPU quota ``cpus``; removed on exit."""
    groups = [group for group in cpu_cgroups() if group.folder.is_dir()]
    v1 = [group for group in groups if not group.v2]
    group = (v1 or groups or [None])[0]
    if group is None:
        pytest.skip("no cgroup file system here")
    folder = group.folder / f"ai-assets-test-{os.getpid()}"
    try:
        folder.mkdir()
        if group.v2:
            (folder / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
        else:
            (folder / "cpu.cfs_period_us").write_text("100000")
            (folder / "cpu.cfs_quota_us").write_text(str(int(cpus * 100_000)))
    except OSError as exc:  # not root, a read-only cgroup fs, v2 without the cpu controller
        with contextlib.suppress(OSError):
            folder.rmdir()
        pytest.skip(f"cannot create a cgroup with a CPU quota here: {exc}")
    try:
        yield folder
    finally:
        folder.rmdir()  # its one process has exited


def test_a_cpu_limit_caps_the_cores_the_fetch_threads_and_the_models_threads(
    tiny_model_dir: str,
) -> None:
    """In a real cgroup limited to 1 CPU on a machine of 2 or more: torch's default counts the
    node's cores; the model and the fetch threads count the limit's."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: a limit of 1 CPU changes nothing")

    def figures(folder: Path | str) -> dict[str, Any]:
        command = [sys.executable, "-c", LIMITED, str(folder), tiny_model_dir]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own count
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=True, env=env
        )
        return json.loads(done.stdout.splitlines()[-1])

    free = figures("")
    with cpu_limited_cgroup(1.0) as folder:
        limited = figures(folder)
    cores = len(os.sched_getaffinity(0))
    assert free["cores"] == cores and free["model_threads"] == min(free["torch_default"], cores)
    assert limited["torch_default"] == free["torch_default"] >= 2  # torch ignores the limit
    caps = (limited["limit"], limited["cores"], limited["fetch_threads"], limited["model_threads"])
    assert caps == (1.0, 1, 2, 1)
