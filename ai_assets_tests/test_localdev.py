"""The local servers of the demo, the tests and the benches leave nothing in the machine's /tmp,
nor pile anything up in a data folder they reuse."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ai_assets_dev.localdev import s3_client_at, seaweedfs
from ai_assets_tests.support.util import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.integration


def weed_serving(data_dir: Path) -> tuple[int, list[Path]]:
    """The pid of the weed serving ``data_dir``, and the gRPC sockets it listens on in /tmp."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):  # not a process, or gone
            continue
        if f"-dir={data_dir}" in argv:
            ports = [arg.rsplit("=", 1)[1] for arg in argv if ".port.grpc=" in arg]
            names = [f"seaweedfs-*-{port}.sock" for port in ports]
            return int(entry.name), [path for name in names for path in Path("/tmp").glob(name)]
    raise AssertionError(f"no weed serves {data_dir}")


def test_seaweedfs_leaves_no_socket_in_tmp_even_when_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3"
    with seaweedfs(data_dir, ACCESS_KEY, SECRET_KEY):
        pid, sockets = weed_serving(data_dir)
        assert sockets, "weed listens on no gRPC socket in /tmp: this test no longer sees them"
        os.kill(pid, signal.SIGKILL)  # nothing of weed's own shutdown runs
    assert [path for path in sockets if path.exists()] == []


def test_seaweedfs_restarted_on_its_folder_keeps_the_data_and_one_master_folder(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "s3"
    for start in range(3):  # as the demo restarts: the same folder, new ports each time
        with seaweedfs(data_dir, ACCESS_KEY, SECRET_KEY) as endpoint:
            s3 = s3_client_at(endpoint, ACCESS_KEY, SECRET_KEY)
            if start == 0:
                s3.create_bucket(Bucket="kept")
            s3.put_object(Bucket="kept", Key=f"photo-{start}.jpg", Body=b"x" * (start + 1))
            kept = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="kept")["Contents"]}
            assert kept == {f"photo-{n}.jpg": n + 1 for n in range(start + 1)}
    assert len([folder for folder in data_dir.glob("m[0-9]*") if folder.is_dir()]) == 1
