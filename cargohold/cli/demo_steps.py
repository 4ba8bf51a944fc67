"""The steps ``cargohold demo`` narrates, shared by its two jobs (``demo_cmd.py``: the data
plane alone; ``demo_cluster.py``: the main job on a local cluster): narration on the
console, running a tool, writing files with known checksums, and the engine's NBD export
as a block device (nbdfuse + loop + mount) where this machine allows it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import random
import shutil
import subprocess
import time

from rich.console import Console

from cargohold.cli.settings import CliSettings

console = Console(highlight=False)


def say(step: str, text: str) -> None:
    console.print(f"[bold cyan]{step}[/bold cyan] {text}")


def note(text: str) -> None:
    console.print(f"      {text}")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stdout}{p.stderr}")
    return p


def write_files(root: str, seed: int, count: int) -> dict[str, str]:
    rng = random.Random(seed)
    sums = {}
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        data = rng.randbytes(rng.choice([3, 17, 64, 300, 1024]) * 1024)
        name = f"file-{seed}-{i:03d}.bin"
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
_own_namespace = [False]


def own_mount_namespace() -> None:
    """Move this process (and the tools it runs from now on) into a mount namespace of its
    own, private, once. The demo mounts ext4, unmounts it and mounts it again read-only to
    check every file through a fresh mount. Where mounts are private (no systemd), any
    process that copies the machine's mount namespace meanwhile (``ip netns exec``,
    ``unshare -m``, a container runtime: other tests on a busy machine) keeps its own copy
    of the demo's mount, and with it the read-write superblock, after the demo's umount:
    the read-only mount then fails with EBUSY ("already mounted or mount point busy") and
    the loop device and nbdfuse cannot be released. Mounted in a namespace nobody else
    copies, the demo's filesystem is the demo's alone."""
    if _own_namespace[0]:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"unshare(CLONE_NEWNS) failed: {os.strerror(err)}")
    # nothing mounted from here on propagates back to the machine's namespace
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise RuntimeError(f"making / private in the demo's namespace failed: {os.strerror(err)}")
    _own_namespace[0] = True


class BlockDevice:
    """The engine's NBD export as a block device: nbdfuse + loop (this kernel has no nbd),
    mounted in the demo's own mount namespace (``own_mount_namespace``)."""

    def __init__(self, uri: str, work: str) -> None:
        self.uri, self.work = uri, work
        self.fuse_dir = os.path.join(work, "fuse")
        self.mnt = os.path.join(work, "mnt")
        self.fuse: subprocess.Popen[bytes] | None = None
        self.loop = ""
        self.mounted = False

    def attach(self) -> str:
        own_mount_namespace()
        os.makedirs(self.fuse_dir, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        pidfile = os.path.join(self.work, "nbdfuse.pid")
        self.fuse = subprocess.Popen(
            ["nbdfuse", "-P", pidfile, f"{self.fuse_dir}/disk", self.uri],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
            if self.fuse.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nbdfuse did not start")
            time.sleep(0.05)
        self.loop = run(
            "losetup",
            "--sector-size=4096",
            "--direct-io=on",
            "-f",
            "--show",
            f"{self.fuse_dir}/disk",
        ).stdout.strip()
        return self.loop

    def mount(self, ro: bool = False) -> None:
        run("mount", *(["-o", "ro"] if ro else []), self.loop, self.mnt)
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            run("umount", self.mnt)
            self.mounted = False

    def detach(self) -> None:
        with contextlib.suppress(Exception):
            if self.mounted:
                run("umount", "-l", self.mnt, check=False)
        if self.loop:
            run("losetup", "-d", self.loop, check=False)
            self.loop = ""
        if self.fuse is not None:
            run("fusermount3", "-u", self.fuse_dir, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.fuse.wait(timeout=15)
            self.fuse = None


def cannot_mount() -> list[str]:
    """Why this machine cannot put a filesystem on a volume (nbdfuse + loop + mount):
    empty when it can."""
    if os.environ.get(CliSettings.variable("demo_no_mount")):  # the path taken without root
        return ["CARGOHOLD_DEMO_NO_MOUNT is set"]
    why = [] if os.geteuid() == 0 else ["not root"]
    why += [
        f"no {t}" for t in ("nbdfuse", "losetup", "mount", "fusermount3") if not shutil.which(t)
    ]
    why += [f"no {dev}" for dev in ("/dev/fuse", "/dev/loop-control") if not os.path.exists(dev)]
    return why


def can_mount() -> bool:
    return not cannot_mount()
