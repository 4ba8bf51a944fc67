"""Disk full: replicas on a tiny ext4 filesystem (a loop device) run out of space.

A 256 MiB thin replica lives on a 48 MiB filesystem. We write and flush until a write fails,
and check that the failure is a clean NoSpace (status 28) on a live connection of a live
server; that everything acknowledged before reads back exactly, over that connection and a
new one; that a replica on another disk of the same server keeps working; that the server
restarts (SIGKILL) on the full disk with nothing lost; that punching holes (WRITE_ZEROES, TRIM)
gives the space back so writes succeed again; and that all of it survives another SIGKILL.
Two smaller tests put metadata operations (CREATE, SNAPSHOT_CREATE, OPEN with a new epoch) on a
full disk: each must answer NoSpace (or succeed) and leave memory and disk in agreement.

The server also gets a second disk on the ordinary filesystem, so the test can check that a
full disk does not stop the replicas on the node's other disks.

Needs root (losetup, mkfs.ext4, mount); skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.errors import CargoholdError, Fenced, NoSpace
from cargohold.replica.client import ReplicaClient
from tests.probe.engine_support import loop_ext4, loop_ext4_unavailable
from tests.probe.support import BLOCK, ProbeServer, identify, patterns

pytestmark = pytest.mark.root

FS_BYTES = 48 << 20
VOL = "fullvol"
VOL_BYTES = 256 << 20  # thin: five times the filesystem
CHUNK = 64  # blocks per fill write (256 KiB)
READ_SPAN = 256  # blocks per verification read (1 MiB)
FAR = 50_000  # a block far beyond the fill region (its map page is not allocated yet)


# --- the filesystem ----------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A freshly made 48 MiB ext4 filesystem, mounted; unmounted and detached afterwards.
    1 KiB blocks (what mke2fs picks for so small a filesystem anyway, said explicitly so that
    every machine builds the same one): allocation is finer than our 4 KiB blocks."""
    why = loop_ext4_unavailable()
    if why:
        pytest.skip(why)
    try:
        cm = loop_ext4(tmp_path, FS_BYTES)
        mnt = cm.__enter__()
    except RuntimeError as e:  # no loop device free
        pytest.skip(str(e))
    try:
        yield mnt
    finally:
        cm.__exit__(None, None, None)


def fill_fs(path: Path) -> Path:
    """Fill the filesystem holding ``path`` with one file, to the last block."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 1024):
            buf = b"\xa5" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


# --- servers and what they must hold ----------------------------------------------------
class Servers:
    """The replica server of a test; every process it started is killed at the end."""

    def __init__(self, disks: list[Path]) -> None:
        self.disks = [str(d) for d in disks]
        self.all: list[ProbeServer] = []
        self.cur: ProbeServer | None = None

    def start(self) -> ProbeServer:
        self.cur = ProbeServer(list(self.disks)).start()
        self.all.append(self.cur)
        return self.cur

    def restart(self) -> ProbeServer:
        assert self.cur is not None
        self.cur.kill()  # SIGKILL
        return self.start()

    async def connect(self, replica: str, epoch: int = 1) -> ReplicaClient:
        assert self.cur is not None
        c = await ReplicaClient.connect(self.cur.host, self.cur.port)
        await c.open(replica, epoch)
        return c

    def alive(self) -> bool:
        return self.cur is not None and self.cur.alive()

    def close(self) -> None:
        for s in self.all:
            s.kill()

    def log(self) -> str:
        return self.cur.log_tail() if self.cur is not None else ""


class Volume:
    """What each block may read as: the last acknowledged value (0 = zeros), plus the values
    of writes that failed after it (a failed write may have landed in part)."""

    def __init__(self) -> None:
        self.seq = 0
        self.allowed: dict[int, set[int]] = {}

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def acked(self, lba: int, n: int, value: int) -> None:
        for b in range(lba, lba + n):
            self.allowed[b] = {value}

    def failed(self, lba: int, n: int, value: int) -> None:
        for b in range(lba, lba + n):
            self.allowed.setdefault(b, {0}).add(value)

    async def write(self, c: ReplicaClient, lba: int, n: int) -> None:
        """Write blocks; on success they must hold the new value, on failure either."""
        seq = self.next_seq()
        try:
            await c.write(lba * BLOCK, patterns(lba, n, seq))
        except CargoholdError:
            self.failed(lba, n, seq)
            raise
        self.acked(lba, n, seq)

    async def verify(self, c: ReplicaClient, what: str) -> int:
        """Read every 1 MiB span holding a block we touched; return the blocks checked."""
        spans = sorted({b // READ_SPAN for b in self.allowed})
        problems = []
        checked = 0
        for s in spans:
            lba = s * READ_SPAN
            try:
                data = await c.read(lba * BLOCK, READ_SPAN * BLOCK)
            except CargoholdError as e:
                problems.append(f"read of blocks {lba}+{READ_SPAN} failed: {type(e).__name__}: {e}")
                continue
            for k in range(READ_SPAN):
                b = lba + k
                got = identify(b, data[k * BLOCK : (k + 1) * BLOCK])
                want = self.allowed.get(b, {0})
                checked += 1
                if got not in want:
                    problems.append(
                        f"block {b}: read {_name(got)}, expected {' or '.join(map(_name, sorted(want)))}"
                    )
        assert not problems, f"{what}: {len(problems)} problem(s):\n" + "\n".join(problems[:30])
        return checked


def _name(v: int | str) -> str:
    return v if isinstance(v, str) else "zeros" if v == 0 else f"write #{v}"


async def _must_nospace(coro: Any, what: str, servers: Servers) -> NoSpace:
    try:
        await coro
    except NoSpace as e:
        assert e.status == 28
        return e
    except CargoholdError as e:
        raise AssertionError(
            f"{what}: expected NoSpace (status 28), got {type(e).__name__} "
            f"(status {getattr(e, 'status', '?')}): {e}; server alive: {servers.alive()}\n"
            f"{servers.log()}"
        ) from None
    raise AssertionError(f"{what}: succeeded on a full disk")


# --- the tests ----------------------------------------------------------------------------
async def test_fill_until_nospace_then_recover(small_fs: Path, tmp_path: Path) -> None:
    spare, data_disk = tmp_path / "spare", small_fs / "disk"
    spare.mkdir()
    data_disk.mkdir()
    servers = Servers([spare, data_disk])
    try:
        await _fill_and_recover(servers, data_disk, spare)
    finally:
        servers.close()


async def _fill_and_recover(servers: Servers, data_disk: Path, spare: Path) -> None:
    servers.start()
    vol, other = Volume(), Volume()
    admin = await ReplicaClient.connect(servers.cur.host, servers.cur.port)  # type: ignore[union-attr]
    await admin.create(VOL, VOL_BYTES, disk=str(data_disk))
    await admin.create("other", 16 << 20, disk=str(spare))
    await admin.close()
    c = await servers.connect(VOL)
    oc = await servers.connect("other")
    await other.write(oc, 0, 16)
    await oc.flush()

    # 1. write and flush until the disk is full: the failure is NoSpace, nothing else
    lba = 0
    nwrites = 0
    while True:
        assert lba + CHUNK <= VOL_BYTES // BLOCK, "wrote the whole volume without running out"
        try:
            await vol.write(c, lba, CHUNK)
        except NoSpace as e:
            # which disk of which node: what the engine, then the volume's error, shows
            assert f"no space left on disk {data_disk} of node local" in str(e), e
            await c.open(VOL, 1)  # a failed mutation stops the session's: opened again
            break
        except CargoholdError as e:
            raise AssertionError(
                f"write at block {lba} failed with {type(e).__name__} (status {e.status}) "
                f"instead of NoSpace: {e}; server alive: {servers.alive()}\n{servers.log()}"
            ) from None
        lba += CHUNK
        nwrites += 1
        if nwrites % 4 == 0:
            await c.flush()
    frontier = lba  # the write that failed started here
    assert lba * BLOCK >= 16 << 20, f"the disk filled after only {lba * BLOCK} bytes"
    # single blocks until the last allocatable one is gone: three NoSpace in a row
    in_a_row, k = 0, 0
    while in_a_row < 3:
        assert k < 4096, "single-block writes never ran out of space"
        try:
            await vol.write(c, frontier + k, 1)
            in_a_row = 0
        except NoSpace:
            in_a_row += 1
            await c.open(VOL, 1)
        k += 1
    await _must_nospace(vol.write(c, FAR, 1), "write to a fresh map page", servers)
    await c.open(VOL, 1)
    print(f"full after {frontier * BLOCK >> 20} MiB, free {free_bytes(data_disk)} bytes")

    # 2. the same connection (opened again after each refusal), the server and everyone
    # else go on
    assert servers.alive(), "the server died on a full disk"
    await c.flush()  # acknowledged data is made durable on a full disk too
    info = await c.info()
    assert info["replica"] == VOL
    await vol.write(c, 0, 4)  # in place: needs no new space
    await c.flush()
    c2 = await servers.connect(VOL)  # a second connection, same engine
    await vol.verify(c2, "while full, second connection")
    await vol.verify(c, "while full, first connection")
    await other.write(oc, 8, 8)  # a replica on another disk does not notice
    await oc.flush()
    await other.verify(oc, "other replica while the data disk is full")
    scrub = await c2.scrub()
    assert scrub["bad"] == [], scrub
    await c2.close()

    # 3. SIGKILL and restart on the full disk: it starts, nothing acknowledged is lost
    servers.restart()
    c = await servers.connect(VOL)
    await vol.verify(c, "after a restart on the full disk")
    assert (await c.scrub())["bad"] == []
    await _must_nospace(
        vol.write(c, FAR + 1, 1), "write after the restart, disk still full", servers
    )
    await c.open(VOL, 1)

    # 4. punch holes in the replica itself: the space comes back, writes succeed again
    before_fs = free_bytes(data_disk)
    before_alloc = (await c.stats())["allocated_bytes"]
    zeroed = 8 << 20
    await c.write_zeroes(0, zeroed)
    vol.acked(0, zeroed // BLOCK, 0)
    await c.trim(zeroed, zeroed)
    vol.acked(zeroed // BLOCK, zeroed // BLOCK, 0)
    await c.flush()
    freed_fs = free_bytes(data_disk) - before_fs
    freed_alloc = before_alloc - (await c.stats())["allocated_bytes"]
    assert freed_fs >= 12 << 20, f"punching 16 MiB freed only {freed_fs} bytes of the filesystem"
    assert freed_alloc >= 15 << 20, f"allocated_bytes went down by only {freed_alloc}"
    for i in range(8):  # fresh blocks far away, and blocks inside the punched range
        await vol.write(c, FAR + 256 + i * CHUNK, CHUNK)
        await vol.write(c, 1024 + i * CHUNK, CHUNK)
    await vol.write(c, frontier, CHUNK)  # where the first failure happened
    await c.flush()
    await vol.verify(c, "after freeing space")
    assert (await c.scrub())["bad"] == []

    # 5. SIGKILL and restart once more
    servers.restart()
    c = await servers.connect(VOL)
    await vol.verify(c, "after the second restart")
    oc = await servers.connect("other")
    await other.verify(oc, "other replica after the second restart")
    assert (await c.scrub())["bad"] == []
    await vol.write(c, FAR + 4096, CHUNK)
    await c.flush()
    await vol.verify(c, "after a write following the second restart")
    assert servers.alive()


async def test_create_and_snapshot_on_full_disk(small_fs: Path, tmp_path: Path) -> None:
    """CREATE and SNAPSHOT_CREATE on a full disk answer NoSpace (or succeed), leave nothing
    half-made behind, and the replica already there goes on serving."""
    spare, data_disk = tmp_path / "spare", small_fs / "disk"
    spare.mkdir()
    data_disk.mkdir()
    servers = Servers([spare, data_disk])
    try:
        servers.start()
        vol = Volume()
        admin = await ReplicaClient.connect(servers.cur.host, servers.cur.port)  # type: ignore[union-attr]
        await admin.create(VOL, VOL_BYTES, disk=str(data_disk))
        c = await servers.connect(VOL)
        await vol.write(c, 0, CHUNK)
        await c.flush()
        fill_fs(small_fs)

        problems = []
        try:
            await _must_nospace(
                admin.create("second", 1 << 20, disk=str(data_disk)), "CREATE", servers
            )
        except AssertionError as e:
            problems.append(str(e).splitlines()[0])
        leftovers = sorted(os.listdir(data_disk / "replicas"))
        if leftovers != [VOL]:
            problems.append(f"replicas directory after the failed CREATE: {leftovers}")
        listed = [r["id"] for r in await admin.list()]
        if listed != [VOL]:
            problems.append(f"LIST after the failed CREATE: {listed}")

        try:
            await c.snapshot_create("on-full-disk")
            made = True
        except NoSpace:
            made = False
        except CargoholdError as e:
            problems.append(f"SNAPSHOT_CREATE: {type(e).__name__} (status {e.status}): {e}")
            made = None
        names = [s["name"] for s in await c.snapshot_list()]
        if made is not None and names != (["on-full-disk"] if made else []):
            problems.append(f"snapshot list after SNAPSHOT_CREATE (made={made}): {names}")

        assert servers.alive(), "server died"
        await vol.write(c, 0, 4)  # in place: needs no new space
        await c.flush()
        await vol.verify(c, "after the metadata operations")
        servers.restart()
        c = await servers.connect(VOL)
        await vol.verify(c, "after a restart")
        assert not problems, "metadata operations on a full disk:\n" + "\n".join(problems)
    finally:
        servers.close()


async def test_new_epoch_on_full_disk(small_fs: Path, tmp_path: Path) -> None:
    """An engine taking over (OPEN with a newer epoch) while the disk is full: either it
    succeeds and the epoch is persisted, or it gets NoSpace and nothing changes: the current
    engine is not fenced, and a restart finds the same epoch. Never half of each."""
    spare, data_disk = tmp_path / "spare", small_fs / "disk"
    spare.mkdir()
    data_disk.mkdir()
    servers = Servers([spare, data_disk])
    try:
        servers.start()
        vol = Volume()
        admin = await ReplicaClient.connect(servers.cur.host, servers.cur.port)  # type: ignore[union-attr]
        await admin.create(VOL, VOL_BYTES, disk=str(data_disk))
        c1 = await servers.connect(VOL, epoch=1)
        await vol.write(c1, 0, CHUNK)
        await c1.flush()
        fill_fs(small_fs)

        c2 = await ReplicaClient.connect(servers.cur.host, servers.cur.port)  # type: ignore[union-attr]
        try:
            await c2.open(VOL, 2)
            taken_over = True
        except NoSpace:
            taken_over = False
        except CargoholdError as e:
            taken_over = None
            err = f"{type(e).__name__} (status {e.status}): {e}"
        problems = []
        if taken_over is None:
            problems.append(f"OPEN with epoch 2 on a full disk: {err}, expected NoSpace or OK")
        try:
            await vol.write(c1, 0, 4)  # the engine at epoch 1
            old_fenced = False
        except Fenced:
            old_fenced = True
        if not taken_over and old_fenced:
            problems.append("the OPEN with epoch 2 failed, yet the engine at epoch 1 is fenced")
        if taken_over and not old_fenced:
            problems.append("the OPEN with epoch 2 succeeded, yet epoch 1 can still write")

        servers.restart()
        c = await ReplicaClient.connect(servers.cur.host, servers.cur.port)  # type: ignore[union-attr]
        info_epoch = (await c.open(VOL, 2 if taken_over else 1))["epoch"]
        memory_epoch = 2 if (taken_over or old_fenced) else 1
        if info_epoch != memory_epoch:
            problems.append(
                f"before the restart the replica acted on epoch {memory_epoch}, after it on "
                f"epoch {info_epoch}: the epoch in memory was never persisted"
            )
        await vol.verify(c, "after the restart")
        assert not problems, "new epoch on a full disk:\n" + "\n".join(problems)
    finally:
        servers.close()


# --- a full disk in a cluster ---------------------------------------------------------------


@pytest.mark.long
def test_a_replica_on_a_full_disk_stays_failed_with_the_reason_and_back_off(
    small_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #14 item 6, on a local cluster of real processes: a 2-replica volume whose
    node-2 replica lives on a 48 MiB filesystem that fills up. Before, the replica cycled
    WO -> ERR every ~6 s for ever (the agent re-added it every 5 s, its rebuild failed on
    the full disk) while the volume read `degraded` with an empty error. Now the volume's
    error and the replica's name the full disk and node, and the re-adds back off (5 s,
    10 s, 20 s, ...): over 40 s at most 4 attempts instead of about 7."""
    import re
    import shutil
    import time

    from cargohold.launcher.cluster import LocalCluster
    from tests.support.cli import cli, js
    from tests.support.nbd_clients import qemu_io
    from tests.support.polling import wait_until

    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed")
    d = tmp_path / "cl"
    big, small = tmp_path / "big", small_fs / "disk"
    big.mkdir()
    small.mkdir()
    # disks added through the API must lie under allowed roots (issue 16): these two do
    roots = f"/var/lib/cargohold,{d},{tmp_path},{small_fs}"
    monkeypatch.setenv("CARGOHOLD_MANAGER_DISK_ROOTS", roots)
    monkeypatch.setenv("CARGOHOLD_AGENT_DISK_ROOTS", roots)
    c = LocalCluster.create(str(d), nodes=2).up(timeout=90)
    try:
        cli(
            d,
            "disk",
            "add",
            "node-1",
            str(big),
            "--capacity",
            "1GiB",
            "--tag",
            "t",
            "--name",
            "big",
        )
        cli(
            d,
            "disk",
            "add",
            "node-2",
            str(small),
            "--capacity",
            "1GiB",
            "--tag",
            "t",
            "--name",
            "small",
        )
        # a long stale timeout: the 40 s watched below must see the re-adds back off, not the
        # replica reconciler replace the failed replica (after 30 s by default)
        cli(
            d,
            "volume",
            "create",
            "full",
            "--size",
            "128MiB",
            "--replicas",
            "2",
            "--disk-tag",
            "t",
            "--stale-replica-timeout",
            "600",
        )
        vol = js(d, "volume", "get", "full")
        assert {r["disk"] for r in vol["replicas"]} == {"big", "small"}  # type: ignore[index]
        rid = next(r["id"] for r in vol["replicas"] if r["node"] == "node-2")  # type: ignore[index]
        uri = cli(d, "volume", "attach", "full", "--node", "node-1").stdout.strip()
        qemu_io(uri, "write -P 0x3c 0 96M")  # more than node-2's disk holds: acknowledged
        qemu_io(uri, "read -P 0x3c 0 96M")  # by node-1's replica alone once node-2's failed
        vol = wait_until(
            lambda: (
                (v := js(d, "volume", "get", "full"))["error"].startswith(  # type: ignore[index]
                    f"replica {rid} is failed"
                )
                and v
            ),
            60,
            "the volume's error",
            0.2,
        )
        assert f"no space left on disk {small} of node node-2" in vol["error"], vol  # type: ignore[index]
        assert vol["robustness"] == "degraded"  # type: ignore[index]
        rep = next(r for r in vol["replicas"] if r["id"] == rid)  # type: ignore[index]
        assert rep["state"] == "failed" and "no space left on disk" in rep["error"], rep

        log = d / "logs" / "node-1.log"
        start = len(log.read_text())
        time.sleep(40)
        tail = log.read_text()[start:]
        adds = re.findall(rf"added replica {rid}@", tail)
        assert 1 <= len(adds) <= 4, f"{len(adds)} re-adds in 40 s:\n{tail[-3000:]}"
        assert "the next one no sooner than in" in tail
        vol = js(d, "volume", "get", "full")
        assert "no space left on disk" in vol["error"], vol  # type: ignore[index]
    finally:
        c.down(purge=True)
