"""The CSI node plugin is killed (kill -9) and restarted while a volume is staged, published
and in use; the volume's I/O does not stop (issue: upgrades that do not stop I/O).

The nbdfuse process behind the loop device runs in a session of its own and is recorded in
the plugin's state directory; the restarted plugin adopts it (PID + command line + FUSE
mount + loop + a read: csi/mounter.py ``adopt``), reports the volume healthy, and its
NodeUnpublish/NodeUnstage tear everything down (no nbdfuse, mount or loop device left).
Real components: a one-node local cluster, the ``cargohold csi`` process, nbdfuse, losetup,
ext4, O_DIRECT reads and writes through the mount (the page cache proves nothing here).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.launcher.cluster import LocalCluster
from tests.e2e.test_csi import (
    Driver,
    can_mount,
    leftovers,
    loops,
    mount_cap,
    pb,
    stage_and_publish,
    unpublish_and_unstage,
)

pytestmark = [pytest.mark.root, pytest.mark.long]  # ~70 s with its cluster: make test-long
MiB = 1 << 20


def direct_write(path: str, data: bytes) -> None:
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.write(fd, buf) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def direct_read(path: str, n: int) -> bytes:
    buf = mmap.mmap(-1, n)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.readv(fd, [buf]) == n
    finally:
        os.close(fd)
    return bytes(buf)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def one_node() -> Iterator[tuple[LocalCluster, Path]]:
    why = can_mount()
    if why:
        pytest.skip(why)
    d = Path(f"/tmp/chcsir-{os.getpid()}")
    cluster = LocalCluster.create(str(d), nodes=1).up(timeout=90)
    try:
        yield cluster, d
    finally:
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(d)):
                subprocess.run(["umount", "-l", mnt], check=False)
        for dev, back in loops().items():
            if str(d) in back:
                subprocess.run(["losetup", "-d", dev], check=False)
        cluster.down(purge=True)


def test_io_goes_on_across_a_kill_9_of_the_node_plugin(one_node) -> None:  # type: ignore[no-untyped-def]
    _, d = one_node
    work = d / "csi"
    drv = Driver(d, work, "node-1")
    cap = mount_cap()
    vid = drv.ctl.CreateVolume(pb.CreateVolumeRequest(
        name="pvc-restart", capacity_range=pb.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[cap], parameters={"numberOfReplicas": "1", "fsType": "ext4"},
    )).volume.volume_id  # fmt: skip
    staging, target = stage_and_publish(drv, work, vid, cap)
    before = {f"before-{i}": os.urandom(64 * 1024) for i in range(4)}
    for name, data in before.items():
        direct_write(os.path.join(target, name), data)
    rec = json.loads((drv.state / f"{vid}.json").read_text())
    fuse_pid, device = rec["fuse_pid"], rec["device"]
    assert rec["fuse_argv"][0] == "nbdfuse" and alive(fuse_pid)
    assert os.getsid(fuse_pid) == fuse_pid != os.getsid(drv.proc.pid)  # a session of its own

    drv.proc.send_signal(signal.SIGKILL)  # the plugin dies without a word
    drv.proc.wait(timeout=30)
    drv.channel.close()
    drv.log.close()
    # the data path does not need the plugin: I/O through the mount goes on meanwhile
    assert alive(fuse_pid)
    during = os.urandom(128 * 1024)
    direct_write(os.path.join(target, "during"), during)
    assert direct_read(os.path.join(target, "during"), len(during)) == during

    (work / "csi.sock").unlink()  # so that Driver waits for the new plugin's socket
    drv2 = Driver(d, work, "node-1")
    try:
        deadline = time.monotonic() + 30
        log = work / "csi.log"
        while f"volume {vid}: adopted" not in log.read_text():
            assert "is broken" not in log.read_text(), log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        stats = drv2.node.NodeGetVolumeStats(
            pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target)
        )
        assert not stats.volume_condition.abnormal, stats.volume_condition.message
        # the same nbdfuse and loop device, reads and writes through the mount
        after = os.urandom(256 * 1024)
        direct_write(os.path.join(target, "after"), after)
        for name, data in {**before, "during": during, "after": after}.items():
            assert direct_read(os.path.join(target, name), len(data)) == data, name
        rec2 = json.loads((drv2.state / f"{vid}.json").read_text())
        assert (rec2["fuse_pid"], rec2["device"]) == (fuse_pid, device)
        # stage again (kubelet does after a plugin restart): idempotent, nothing replaced
        drv2.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=staging, volume_capability=cap,
            publish_context={"endpoint": rec["endpoint"]}))  # fmt: skip
        assert json.loads((drv2.state / f"{vid}.json").read_text())["fuse_pid"] == fuse_pid
        # the restarted plugin tears it all down
        unpublish_and_unstage(drv2, vid, staging, target)
        deadline = time.monotonic() + 15
        while alive(fuse_pid):
            assert time.monotonic() < deadline, "nbdfuse outlived NodeUnstageVolume"
            time.sleep(0.1)
        assert device not in loops() or str(d) not in loops()[device]
        assert leftovers(drv2.state) == []
        drv2.ctl.DeleteVolume(pb.DeleteVolumeRequest(volume_id=vid))
    finally:
        drv2.close()
