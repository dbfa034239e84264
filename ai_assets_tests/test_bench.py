"""The benches this project is measured by still run, at their smallest, and print what the
docs quote: a bench that rots is found here, not on a lent GPU whose minutes are counted."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ai_assets_dev.localdev import process_running, wait_group_gone
from ai_assets_tests.support.util import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run_bench(
    command: list[str], timeout: float = 300, grace: float = 10, **env: str
) -> dict[str, str]:
    """The ``RESULT`` line of a bench run in its own process group, as ``key: value``.

    Whatever of the group outlives the bench by ``grace`` s (a server it failed to stop) fails
    the test and is killed, as is everything after ``timeout``. The output goes to a file, which
    a process left behind cannot hold open as it would a pipe.
    """
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"{command[1]} ran past {timeout} s")
        left = not wait_group_gone(process.pid, grace)  # the fork server takes a moment
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        log.seek(0)
        output = log.read()
    assert process.returncode == 0, f"{command[1]} (exit {process.returncode}):\n{output[-3000:]}"
    assert not left, f"{command[1]} left processes of its group running"
    [result] = [line for line in output.splitlines() if line.startswith("RESULT ")][-1:]
    return dict(field.split("=", 1) for field in result.split()[1:])


def figures(result: dict[str, str], *keys: str) -> dict[str, float]:
    """``keys``' values, each a finite number that is not negative."""
    values = {key: float(result[key]) for key in keys}
    assert all(math.isfinite(v) and v >= 0 for v in values.values()), values
    return values


def test_a_bench_that_leaves_a_process_behind_fails_and_the_process_is_stopped(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 600 & echo $! > {pid_file}; echo RESULT done=1"
    with pytest.raises(AssertionError, match="left processes"):
        run_bench(["bash", "-c", script], grace=0.5)
    pid = int(pid_file.read_text())
    assert wait_for("the process left behind to die", lambda: not process_running(pid), 10, 0.1)


def test_the_feed_bench_prints_the_loop_before_and_after_by_stage() -> None:
    result = run_bench(
        [sys.executable, "bench/feed.py", "--images", "48", "--rounds", "1",
         "--agreement-images", "16"]
    )  # fmt: skip
    stages = ("get", "decode", "preprocess", "collate", "rows", "upsert", "other")
    numbers = figures(
        result, "cpu_ms_per_image", "run_reported_feed_cpu_ms", "run_fixed_cpu_s", "s3_cut",
        *(f"{variant}_{stage}_ms" for variant in ("run", "s3", "s3_before") for stage in stages),
    )  # fmt: skip
    # the levers undone really are undone: boto3 GETs and Pillow decodes cost CPU, ours less
    assert numbers["s3_before_get_ms"] > numbers["s3_get_ms"]
    assert numbers["s3_cut"] > 1
    for precision in ("fp32", "fp16", "bf16"):
        assert 0 < float(result[f"top1_agreement_{precision}"]) <= 1


@pytest.mark.parametrize("stage", ["memory", "s3"])
def test_the_gpu_script_runs_its_every_path_on_the_cpu(stage: str) -> None:
    """bench/gpu.sh as a device runs it, at its smallest, with nvJPEG's path stood in for."""
    result = run_bench(
        ["bash", "bench/gpu.sh", stage], PYTHON=sys.executable, PRECISIONS="fp32",
        BATCH_SIZES="8", IMAGES="32", SECONDS_EACH="1", DEVICE_DECODE="1", DECODE_PROCESSES="2",
    )  # fmt: skip
    assert result["device"] == "cpu"
    loops = ["loop", "device_loop", "processes_loop"]
    if stage == "s3":
        loops += ["processes_pageable_loop", "s3_loop", "s3_device_loop", "s3_processes_loop"]
    else:
        figures(result, "fp32_b8_ceiling_img_s", "fp32_top1_agreement")
        assert float(result["fp32_device_top1_agreement"]) > 0
    numbers = figures(result, *(f"fp32_b8_{loop}_img_s" for loop in loops))
    assert all(numbers.values()), numbers
