"""Block devices, filesystems and mounts on a node: the NBD export of a volume's engine
becomes a block device, gets a filesystem on first use, and is mounted.

Block device: the kernel's NBD client when ``/dev/nbd*`` exists and ``nbd-client`` is
installed, else nbdfuse (the export as a file on a FUSE mount) + a loop device
(``losetup --direct-io=on --sector-size=4096``).

Online growth. nbdfuse fixes its file's size when it connects, so it connects to the
engine's growable export (``NAME+growable``, ``protocol.nbd.GROWABLE_SUFFIX``): the same
volume announced at a 256 TiB ceiling, with every request still checked against the
volume's live size. The loop device is limited to the real size (``--sizelimit``, what
``nbdinfo --size`` of the plain export says); ``Attachment.grow`` raises the limit
(LOOP_SET_STATUS64) once the engine serves more, while the device is mounted and in use,
so nothing past the real end is ever reachable through the device. A kernel NBD device
is grown with NBD_SET_SIZE or netlink (``nbd_kernel.resize``; untested here: no module).

Read-only: a read-only attachment (ROX, reader-only modes) opens nbdfuse and the loop
device read-only; a read-only raw block publish gets a read-only loop device of its own
over the staged one (``ro_loops``), so the pod's device refuses writes.

Each attachment is recorded in ``STATE_DIR/<volume>.json`` so that a restarted node plugin
can still tear it down. Called by node.py; every command is run through ``run`` and fails
with MountError naming the command and its output.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cargohold.csi import nbd_kernel
from cargohold.csi.settings import CsiSettings
from cargohold.errors import CargoholdError
from cargohold.protocol.nbd import GROWABLE_SUFFIX
from cargohold.settings import ProcessSettings


class MountError(CargoholdError):
    """A command on the node (losetup, mkfs, mount, ...) failed."""


def run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise MountError(f"{cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise MountError(f"{' '.join(cmd)} did not finish in {timeout:g}s") from None
    if check and p.returncode != 0:
        out = (p.stderr or p.stdout).strip()
        raise MountError(f"{' '.join(cmd)} failed (exit {p.returncode}): {out}")
    return p


# --- mounts ------------------------------------------------------------------------------


def mount_source(path: str) -> str | None:
    """What is mounted at ``path`` (its source), or None when it is not a mount point."""
    p = run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", os.path.realpath(path), check=False)
    lines = p.stdout.strip().splitlines()
    return lines[-1].strip() if p.returncode == 0 and lines else None


def is_mounted(path: str) -> bool:
    return mount_source(path) is not None


def mount_options(path: str) -> list[str]:
    p = run("findmnt", "-n", "-o", "OPTIONS", "--mountpoint", os.path.realpath(path), check=False)
    return p.stdout.strip().splitlines()[-1].split(",") if p.stdout.strip() else []


def umount(path: str) -> None:
    """Unmount everything stacked at ``path``; nothing to do when it is not mounted."""
    for _ in range(8):
        if not is_mounted(path):
            return
        run("umount", path)
    raise MountError(f"{path} is still mounted after 8 umounts")


def fs_type_of(device: str) -> str:
    """The filesystem on ``device``: "" when there is none (blkid exit 2)."""
    p = run("blkid", "-p", "-o", "value", "-s", "TYPE", device, check=False)
    if p.returncode == 2:
        return ""
    if p.returncode != 0:
        raise MountError(f"blkid -p {device} failed (exit {p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


def mkfs(device: str, fs_type: str) -> None:
    if fs_type == "ext4":
        run("mkfs.ext4", "-F", "-q", "-E", "nodiscard,lazy_itable_init=1", device, timeout=600)
    elif fs_type == "xfs":
        run("mkfs.xfs", "-f", "-q", "-K", device, timeout=600)
    else:
        raise MountError(f"cannot make a {fs_type!r} filesystem: use ext4 or xfs")


def grow_fs(device: str, mount_point: str, fs_type: str) -> None:
    if fs_type == "ext4":
        run("resize2fs", device, timeout=600)
    elif fs_type == "xfs":
        run("xfs_growfs", mount_point, timeout=600)
    else:
        raise MountError(f"cannot grow a {fs_type!r} filesystem")


def ext4_size(device: str) -> int:
    """Bytes the ext4 filesystem on ``device`` spans (block count times block size)."""
    info = {}
    for line in run("dumpe2fs", "-h", device).stdout.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return int(info["Block count"]) * int(info["Block size"])


def grow_ext4_offline(device: str) -> None:
    """Grow an unmounted ext4 to its device (the kernel refuses some online resizes)."""
    if ext4_size(device) < device_size(device):
        p = run("e2fsck", "-f", "-p", device, check=False, timeout=600)
        if p.returncode >= 4:
            raise MountError(f"e2fsck -f -p {device} found errors it cannot fix: {p.stdout}")
        run("resize2fs", device, timeout=600)


def device_size(device: str) -> int:
    return int(run("blockdev", "--getsize64", device).stdout.strip())


def export_size(uri: str) -> int:
    """The size an NBD export serves now (a handshake with ``nbdinfo --size``)."""
    out = run("nbdinfo", "--size", uri, timeout=30).stdout.strip()
    if not out.isdigit():
        raise MountError(f"nbdinfo --size {uri} said {out!r}, not a size")
    return int(out)


# ioctls (linux/loop.h, linux/nbd.h)
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_SET_CAPACITY = 0x4C07
LOOP_INFO64_SIZE = 232  # struct loop_info64
LOOP_SIZELIMIT_AT = 32  # offset of lo_sizelimit (__u64) in it


def set_loop_sizelimit(device: str, size: int) -> None:
    """Change a bound loop device's size limit in place (it may be mounted and in use)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = bytearray(LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        struct.pack_into("=Q", info, LOOP_SIZELIMIT_AT, size)
        fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(info))
    except OSError as e:
        raise MountError(f"cannot set the size limit of {device} to {size}: {e}") from None
    finally:
        os.close(fd)


def refresh_loop_capacity(device: str) -> None:
    """LOOP_SET_CAPACITY: a loop device re-reads the size of what backs it."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
    except OSError as e:
        raise MountError(f"cannot refresh the capacity of {device}: {e}") from None
    finally:
        os.close(fd)


# --- attachments: NBD export -> block device --------------------------------------------


@dataclass
class Attachment:
    """One volume's block device on this node, and how it was made."""

    volume: str
    endpoint: str
    work: str  # this attachment's directory (FUSE mount point, pid file)
    kind: str = ""  # "nbdfuse" | "nbd"
    fuse_dev: str = ""  # MAJ:MIN of the FUSE mount (losetup shows the file as "/disk")
    device: str = ""
    fuse_pid: int = 0
    nbd_device: str = ""
    staging_path: str = ""
    mode: str = ""  # "mount" | "block"
    fs_type: str = ""
    targets: list[str] = field(default_factory=list)  # where NodePublish put it
    read_only: bool = False  # attached read-only (ROX, reader-only access modes)
    growable: bool = False  # nbdfuse on the growable export, the loop limited to the size
    ro_loops: dict[str, str] = field(default_factory=dict)  # read-only block target -> loop
    tls_dir: str = ""  # an nbds:// endpoint: client credentials in GnuTLS names (x509_dir)
    fuse_argv: list[str] = field(default_factory=list)  # nbdfuse's command line (adoption)

    @property
    def fuse_dir(self) -> str:
        return os.path.join(self.work, "fuse")

    @property
    def fuse_file(self) -> str:
        return os.path.join(self.fuse_dir, "disk")

    # -- records --
    @staticmethod
    def record_path(state_dir: str, volume: str) -> str:
        return os.path.join(state_dir, f"{volume}.json")

    def save(self, state_dir: str) -> None:
        path = self.record_path(state_dir, self.volume)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: str, volume: str) -> Attachment | None:
        try:
            with open(cls.record_path(state_dir, volume)) as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise MountError(f"the record of volume {volume} in {state_dir} is bad: {e}") from None

    def forget(self, state_dir: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(state_dir, self.volume))

    def client_uri(self, growable: bool = False) -> str:
        """The URI nbdinfo connects to: the endpoint (its growable export), and for NBD over
        TLS the credentials (``tls-certificates``)."""
        uri = growable_uri(self.endpoint) if growable else self.endpoint
        return f"{uri}?tls-certificates={self.tls_dir}" if self.tls_dir else uri

    def fuse_source(self, growable: bool = False) -> list[str]:
        """What nbdfuse connects to: the URI; for NBD over TLS, nbdkit's nbd plugin
        (socket activation) speaking TLS with the node's credentials, since nbdfuse does
        not read local files named in a URI (``tls-certificates``)."""
        if not self.tls_dir:
            return [self.client_uri(growable)]
        host, port, name = parse_nbd_uri(self.endpoint)
        return [
            "[", "nbdkit", "nbd", f"hostname={host}", f"port={port}",
            f"export={name + GROWABLE_SUFFIX if growable else name}", "tls=require",
            f"tls-certificates={self.tls_dir}", "]",
        ]  # fmt: skip

    # -- attach / detach --
    def alive(self) -> bool:
        """The block device is there and still backed as recorded."""
        if not self.device or not os.path.exists(self.device):
            return False
        if self.kind == "nbdfuse":
            return (
                self._backs(self.device)
                and _pid_alive(self.fuse_pid)
                and (not self.fuse_argv or _cmdline(self.fuse_pid) == self.fuse_argv)
            )
        return True

    def adoption_problem(self) -> str:
        """Why a restarted node plugin cannot take this attachment over as it is ("" when
        it can): its nbdfuse is the process recorded (PID and command line, so a reused
        PID is not mistaken for it), its FUSE mount is up, the loop device is still backed
        by it, and a read through the device answers. A kernel NBD device: still
        connected. Checked once per record at start (``adopt``)."""
        if not self.device:
            return "no block device was recorded (a stage that did not finish)"
        if not os.path.exists(self.device):
            return f"{self.device} is gone"
        if self.kind == "nbd":
            base = os.path.basename(self.device)
            if not os.path.exists(f"/sys/block/{base}/pid"):
                return f"{self.device} is no longer connected"
            return ""
        if not _pid_alive(self.fuse_pid):
            return f"nbdfuse (pid {self.fuse_pid}) is gone"
        argv = _cmdline(self.fuse_pid)
        if not argv or os.path.basename(argv[0]) != "nbdfuse":
            return f"pid {self.fuse_pid} is not nbdfuse now ({' '.join(argv)[:80]!r})"
        if self.fuse_argv and argv != self.fuse_argv:
            return f"pid {self.fuse_pid} is another nbdfuse ({' '.join(argv)[:120]!r})"
        if not is_mounted(self.fuse_dir):
            return f"the FUSE mount {self.fuse_dir} is gone"
        if not self._backs(self.device):
            return f"{self.device} is no longer backed by {self.fuse_file}"
        p = run(
            "dd", f"if={self.device}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct",
            check=False, timeout=30,
        )  # fmt: skip
        if p.returncode != 0:
            return f"a read of {self.device} failed: {p.stderr.strip()[-200:]}"
        return ""

    def _backs(self, device: str) -> bool:
        """Whether the loop ``device`` is backed by this attachment's FUSE file."""
        out = run("losetup", "-n", "-O", "BACK-MAJ:MIN", device, check=False).stdout.strip()
        return bool(self.fuse_dev) and out == self.fuse_dev

    def attach(self) -> str:
        if kernel_nbd_available() and not self.tls_dir:  # nbd-client: no TLS here
            return self._attach_kernel()
        return self._attach_fuse()

    def _attach_fuse(self) -> str:
        tools = (
            "nbdfuse",
            "nbdinfo",
            "losetup",
            "fusermount3",
            *(("nbdkit",) * bool(self.tls_dir)),
        )
        for tool in tools:
            if not shutil.which(tool):
                raise MountError(f"{tool} is not installed (needed for nbdfuse + loop)")
        self.kind = "nbdfuse"
        size = export_size(self.client_uri())
        try:
            self._start_fuse(self.fuse_source(growable=True))
            self.growable = True
        except MountError as e:  # an engine without the growable export: fixed size
            log_tail = str(e)
            self.growable = False
            self._start_fuse(self.fuse_source(), why=log_tail)
        st = os.stat(self.fuse_file)
        self.fuse_dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        try:
            self.device = run(
                "losetup",
                "--direct-io=on",
                "--sector-size=4096",
                *(["--sizelimit", str(size)] if self.growable else []),
                *(["--read-only"] if self.read_only else []),
                "-f",
                "--show",
                self.fuse_file,
            ).stdout.strip()
        except MountError:
            self._stop_fuse()
            raise
        return self.device

    def _start_fuse(self, source: list[str], why: str = "") -> None:
        os.makedirs(self.fuse_dir, exist_ok=True)
        pidfile = os.path.join(self.work, "nbdfuse.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        logfile = os.path.join(self.work, "nbdfuse.log")
        argv = ["nbdfuse", *(["--readonly"] if self.read_only else []), "-P", pidfile,
                self.fuse_file, *source]  # fmt: skip
        with open(logfile, "ab") as log:
            # a session (and process group) of its own: neither a signal to the node
            # plugin's group nor its death reaches nbdfuse; a restarted plugin adopts it
            proc = subprocess.Popen(
                [*shlex.split(ProcessSettings().spawn_prefix), *argv],  # docs/upgrades.md
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(ChildProcessError):
                    proc.wait(timeout=5)
                tail = open(logfile, errors="replace").read()[-400:]
                extra = f" (after: {why})" if why else ""
                what = " ".join(source)
                raise MountError(f"nbdfuse could not connect to {what}: {tail.strip()}{extra}")
            time.sleep(0.05)
        self.fuse_pid = int(open(pidfile).read().strip())
        self.fuse_argv = argv

    def _attach_kernel(self) -> str:
        host, port, name = parse_nbd_uri(self.endpoint)
        for dev in sorted(glob.glob("/dev/nbd[0-9]*"), key=lambda d: int(d[8:] or 0)):
            base = os.path.basename(dev)
            if os.path.exists(f"/sys/block/{base}/pid"):
                continue  # in use
            # netlink (nbd-client's default): the kernel holds the connection, so the
            # device outlives a restart of the node plugin's container
            ro = ["-readonly"] if self.read_only else []
            run("nbd-client", host, str(port), dev, "-N", name, "-b", "4096", "-persist", *ro)
            self.kind, self.device, self.nbd_device = "nbd", dev, dev
            return dev
        raise MountError("no free /dev/nbd device")

    def grow(self) -> int:
        """Make the block device as large as the engine's volume is now, in place (while
        mounted and in use); its size in bytes. MountError when this attachment cannot:
        nbdfuse on a fixed-size export (attached before the engine had a growable one)."""
        size = device_size(self.device)
        real = export_size(self.client_uri())
        if real > size:
            if self.kind == "nbd":
                try:
                    nbd_kernel.resize(self.device, real)
                except nbd_kernel.ResizeError as e:
                    raise MountError(str(e)) from None
            elif self.growable:
                set_loop_sizelimit(self.device, real)
            else:
                raise MountError(
                    f"{self.device} is nbdfuse + loop on a fixed-size export ({size} bytes, "
                    f"the volume is {real}): it gets the new size when it is next staged"
                )
            size = device_size(self.device)
        for loop in self.ro_loops.values():  # read-only block publishes over the device
            if os.path.exists(loop):
                refresh_loop_capacity(loop)
        return size

    def add_ro_loop(self, target: str) -> str:
        """A read-only loop device over this attachment's device, for ``target``."""
        loop = run(
            "losetup", "--read-only", "--direct-io=on", "--sector-size=4096", "-f", "--show",
            self.device,
        ).stdout.strip()  # fmt: skip
        self.ro_loops[target] = loop
        return loop

    def drop_ro_loop(self, target: str) -> None:
        loop = self.ro_loops.pop(target, "")
        if loop and os.path.exists(loop):
            back = run("losetup", "-n", "-O", "BACK-FILE", loop, check=False).stdout.strip()
            if back == self.device:
                run("losetup", "-d", loop)

    def detach(self) -> None:
        """Undo ``attach``; safe to repeat and after a partial attach."""
        for target in list(self.ro_loops):
            self.drop_ro_loop(target)
        if self.kind == "nbd" and self.nbd_device:
            run("nbd-client", "-d", self.nbd_device, check=False)
        else:
            if self.device and os.path.exists(self.device):
                back = run("losetup", "-n", "-O", "BACK-FILE", self.device, check=False)
                if back.stdout.strip() == self.fuse_file:
                    run("losetup", "-d", self.device)
            # a loop device over our file under another name (a half-finished attach)
            for line in run(
                "losetup", "-n", "-O", "NAME,BACK-FILE", check=False
            ).stdout.splitlines():
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[1].strip() == self.fuse_file:
                    run("losetup", "-d", parts[0], check=False)
            self._stop_fuse()
        self.device = ""

    def _stop_fuse(self) -> None:
        if is_mounted(self.fuse_dir):
            run("fusermount3", "-u", self.fuse_dir, check=False)
            if is_mounted(self.fuse_dir):
                run("umount", "-l", self.fuse_dir, check=False)
        if self.fuse_pid and _pid_alive(self.fuse_pid):
            deadline = time.monotonic() + 10
            while _pid_alive(self.fuse_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(self.fuse_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.fuse_pid, signal.SIGKILL)
        self.fuse_pid = 0

    def can_grow_in_place(self) -> bool:
        return self.kind == "nbd" or self.growable


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def kernel_nbd_available() -> bool:
    if os.environ.get(CsiSettings.variable("no_kernel_nbd")):
        return False
    return bool(glob.glob("/dev/nbd[0-9]*")) and shutil.which("nbd-client") is not None


def growable_uri(uri: str) -> str:
    """The engine's growable export of the same volume (``nbd://HOST:PORT/NAME+growable``)."""
    return uri + GROWABLE_SUFFIX


def parse_nbd_uri(uri: str) -> tuple[str, int, str]:
    """``nbd://HOST:PORT/NAME`` (or ``nbds://``) → (host, port, export name)."""
    scheme, sep, rest = uri.partition("://")
    if scheme not in ("nbd", "nbds") or not sep:
        raise MountError(f"{uri!r} is not an nbd:// URI")
    hostport, _, name = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MountError(f"{uri!r} has no HOST:PORT")
    return host.strip("[]"), int(port), name


def ensure_dir(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def ensure_file(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not os.path.exists(path):
        Path(path).touch()


# --- fsGroup (VOLUME_MOUNT_GROUP) ------------------------------------------------------


def apply_group(root: str, gid: int) -> bool:
    """Give the group ``gid`` the volume mounted at ``root``, the way kubelet applies a
    pod's fsGroup (SetVolumeOwnership) when the driver does not: every file and directory
    gets the group and group read-write, directories also group search and setgid, so new
    entries inherit the group. ext4 and xfs take no gid mount option; this is the
    ``volume_mount_group`` of the CSI spec for them. Skipped when the root already has the
    group and the bits (kubelet's OnRootMismatch): a remount does not walk a large tree.
    True when it walked. Never follows symlinks or crosses into other mounts."""
    st = os.lstat(root)
    if st.st_gid == gid and st.st_mode & 0o2070 == 0o2070:
        return False
    dev = st.st_dev

    def fix(path: str, is_dir: bool) -> None:
        s = os.lstat(path)
        if s.st_dev != dev:
            return
        if s.st_gid != gid:
            os.lchown(path, -1, gid)
        if os.path.islink(path):
            return
        want = s.st_mode | (0o2770 if is_dir else 0o660)
        if want != s.st_mode:
            os.chmod(path, want & 0o7777)

    for dirpath, dirnames, filenames in os.walk(root):
        fix(dirpath, True)
        for d in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            fix(os.path.join(dirpath, d), False)  # a symlink to a directory: its group only
        dirnames[:] = [
            d
            for d in dirnames
            if not os.path.islink(os.path.join(dirpath, d))
            and os.lstat(os.path.join(dirpath, d)).st_dev == dev
        ]
        for name in filenames:
            fix(os.path.join(dirpath, name), False)
    return True
