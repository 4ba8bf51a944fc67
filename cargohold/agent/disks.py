"""A node's disks as the replica server needs them: directories.

``cargohold agent --disk PATH`` takes a directory, or a block device. A device is given an
ext4 filesystem on first use (only when it has no filesystem or partition table at all:
``blkid`` finds nothing) and mounted at ``NODEDIR/disks/<name>``; its capacity is the
device's size. Called by the agent at start-up, before the replica server starts.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess

from cargohold.errors import ConfigError

log = logging.getLogger("cargohold.agent")


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _mounted_at(target: str) -> str | None:
    """The source mounted at ``target``, if any."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1] == target:
                return parts[0]
    return None


def prepare_device(device: str, mountpoint: str) -> str:
    """Make ``device`` a directory for replicas at ``mountpoint``; return that directory.
    Never formats a device that holds anything ``blkid`` recognises."""
    device = os.path.realpath(device)
    current = _mounted_at(mountpoint)
    if current is not None:
        if os.path.realpath(current) != device:
            raise ConfigError(f"{mountpoint} already has {current} mounted, not {device}")
        return mountpoint
    probe = _run("blkid", "-p", "-o", "value", "-s", "TYPE", device)
    fstype = probe.stdout.strip()
    if probe.returncode == 2 and not fstype:  # nothing on it: a new disk
        log.info("disk %s is empty: making an ext4 filesystem on it", device)
        mk = _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1", "-L", "cargohold", device)
        if mk.returncode != 0:
            raise ConfigError(f"mkfs.ext4 {device} failed: {mk.stderr.strip()}")
    elif probe.returncode != 0 and not fstype:
        raise ConfigError(f"cannot probe {device}: {probe.stderr.strip() or probe.returncode}")
    elif fstype not in ("ext4", "xfs"):
        raise ConfigError(
            f"{device} holds {fstype!r}; cargohold uses empty devices (it makes ext4) or ext4/xfs "
            "ones — wipe it (wipefs -a) if its data is not needed"
        )
    os.makedirs(mountpoint, exist_ok=True)
    mnt = _run("mount", "-o", "noatime", device, mountpoint)
    if mnt.returncode != 0:
        raise ConfigError(f"mount {device} {mountpoint} failed: {mnt.stderr.strip()}")
    log.info("disk %s mounted at %s", device, mountpoint)
    return mountpoint


def device_size(device: str) -> int:
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)
