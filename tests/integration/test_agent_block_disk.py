"""A block device given to the agent as a disk: ext4 on first use, mounted under the node,
its size as the capacity; a device holding something else is refused, never formatted."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from cargohold.agent.agent import Agent, AgentConfig
from cargohold.agent.disks import prepare_device
from cargohold.errors import ConfigError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or not shutil.which("mkswap"),
        reason="needs root, loop devices and mkswap",
    ),
]
MiB = 1 << 20


@pytest.fixture
def loopdev(tmp_path):
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(96 * MiB)
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True
    ).stdout.strip()
    mounts: list[str] = []
    try:
        yield dev, mounts
    finally:
        for m in mounts:
            subprocess.run(["umount", m], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_an_empty_device_becomes_a_mounted_ext4_disk(tmp_path, loopdev):
    dev, mounts = loopdev
    node = tmp_path / "node"
    agent = Agent(
        AgentConfig(
            node="n1",
            api=["unix:/nowhere"],
            address="127.0.0.1",
            dir=str(node),
            disks=[(dev, None)],
        )
    )
    agent._state = {}
    disks = agent._disks()
    mnt = str(node / "disks" / "disk-0")
    mounts.append(mnt)
    assert [(d.name, d.path, d.capacity_bytes) for d in disks] == [("disk-0", mnt, 96 * MiB)]
    fstype = subprocess.run(["findmnt", "-no", "FSTYPE", mnt], capture_output=True, text=True)
    assert fstype.stdout.strip() == "ext4"
    with open(os.path.join(mnt, "probe"), "w") as f:
        f.write("kept")
    # a second start finds it mounted: nothing is formatted again
    assert prepare_device(dev, mnt) == mnt
    subprocess.run(["umount", mnt], check=True)
    assert prepare_device(dev, mnt) == mnt  # mounted again, same filesystem
    with open(os.path.join(mnt, "probe")) as f:
        assert f.read() == "kept"


def test_a_device_with_something_else_on_it_is_refused(tmp_path, loopdev):
    dev, _ = loopdev
    subprocess.run(["mkswap", dev], capture_output=True, check=True)
    with pytest.raises(ConfigError, match=r"holds 'swap'.*wipefs"):
        prepare_device(dev, str(tmp_path / "m"))
    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True
    )
    assert probe.stdout.strip() == "swap"  # untouched
