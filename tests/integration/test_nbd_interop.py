"""The NBD server against real third-party clients we did not write: qemu-io, qemu-img,
nbdinfo, nbdcopy, fio's nbd engine, libnbd's Python bindings (Debian's interpreter), and
nbdfuse + loop + ext4 through the kernel. Each against ``cargohold nbd-serve`` as a real
process. Every test compares bytes or checksums, so each can fail."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import textwrap
import time

import pytest

from cargohold.protocol import nbd
from cargohold.replica.client import ReplicaClient
from tests.support.engine import EngineProc
from tests.support.nbd_clients import nbd_handshake, need, recv_exactly
from tests.support.nbd_server import NBDProc
from tests.support.processes import ServerProc

MIB = 1 << 20
DEBIAN_PY = "/usr/bin/python3"


def run(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


class EngineTarget:
    """The same clients against a replicated volume: three real replica servers and
    ``cargohold engine`` in front of them, with the attributes the tests use of NBDProc."""

    name = ""

    def __init__(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        self.servers = []
        for i in range(3):
            (tmp_path / f"node-{i}").mkdir()
            self.servers.append(ServerProc([str(tmp_path / f"node-{i}")]).start())

        async def create() -> None:
            for i, s in enumerate(self.servers):
                c = await ReplicaClient.connect("127.0.0.1", s.port)
                await c.create(f"r{i}", 64 * MIB)
                await c.close()

        asyncio.run(create())
        self.unix = str(tmp_path / "engine.nbd")
        specs = [f"r{i}@127.0.0.1:{s.port}" for i, s in enumerate(self.servers)]
        self.engine = EngineProc(
            "vol", specs, 1, str(tmp_path), local="r0", extra=["--unix", self.unix]
        ).start()
        self.port = self.engine.port

    uri = property(lambda self: f"nbd://127.0.0.1:{self.port}/")
    unix_uri = property(lambda self: f"nbd+unix:///?socket={self.unix}")

    def alive(self) -> bool:
        return self.engine.proc is not None and self.engine.proc.poll() is None

    def output(self) -> str:
        return self.engine.output()

    def stop(self) -> int | None:
        self.engine.stop()
        for s in self.servers:
            s.stop()
        return self.engine.proc.returncode if self.engine.proc else None


@pytest.fixture(params=["local", "engine-3-replicas"])
def srv(request, tmp_path):
    """Every client test runs against ``nbd-serve`` (one local replica: the NBD layer alone)
    and against the volume engine with three replicas."""
    if request.param == "local":
        s = NBDProc(str(tmp_path / "replica"), size="64MiB", unix=str(tmp_path / "nbd.sock"))
        s.start()
    else:
        s = EngineTarget(tmp_path)
    yield s
    rc = s.stop()
    assert rc == 0, s.output()  # drained, flushed and closed cleanly
    assert "Traceback" not in s.output(), s.output()


def libnbd(script: str, **args) -> dict:
    """Run a libnbd script under Debian's Python (the bindings do not load in the venv)."""
    if not os.path.exists(DEBIAN_PY) or run(DEBIAN_PY, "-c", "import nbd", check=False).returncode:
        pytest.skip("python3-libnbd is not installed (scripts/setup.sh installs it)")
    prog = "import json, sys, nbd\nARGS = json.loads(sys.argv[1])\n" + textwrap.dedent(script)
    p = run(DEBIAN_PY, "-c", prog, json.dumps(args))
    return json.loads(p.stdout.strip().splitlines()[-1])


def pattern_file(path: str, size: int, seed: int) -> str:
    """Random data with zero and repeated regions (so sparse-aware copies are exercised)."""
    data = bytearray(os.urandom(size))
    data[size // 4 : size // 2] = bytes(size // 4)
    data[size - MIB :] = bytes([seed]) * MIB
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- qemu ----------------------------------------------------------------------------------


def test_qemu_io_patterns_aligned_and_unaligned_over_tcp_and_unix(srv):
    need("qemu-io")
    cmds = [
        "write -P 0xa5 0 1M",
        "write -P 0x3c 4096 8192",
        "write -P 0x11 100 333",  # qemu read-modify-writes: our minimum block is 4 KiB
        "write -P 0x77 1048575 2",
        "write -z -u 2M 1M",
        "discard 3M 64k",
    ]
    args = [a for c in cmds for a in ("-c", c)]
    out = run("qemu-io", "-f", "raw", *args, srv.uri).stdout
    assert out.count("wrote") == 5 and "discard" in out
    checks = [
        "read -P 0xa5 0 100",
        "read -P 0x11 100 333",
        "read -P 0xa5 433 3663",
        "read -P 0x3c 4096 8192",
        "read -P 0xa5 12288 1036287",
        "read -P 0x77 1048575 2",
        "read -P 0 2M 1M",
    ]
    args = [a for c in checks for a in ("-c", c)]
    for uri in (srv.uri, srv.unix_uri):
        p = run("qemu-io", "-f", "raw", "-r", *args, uri, check=False)
        assert p.returncode == 0 and "Pattern verification failed" not in p.stdout + p.stderr, p
        assert p.stdout.count("read ") == len(checks)
    # -P verification can fail: a wrong pattern is reported
    p = run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x3d 4096 4096", srv.uri, check=False)
    assert "Pattern verification failed" in p.stdout + p.stderr


def test_qemu_img_convert_in_and_out_and_compare(srv, tmp_path):
    need("qemu-img")
    src, back = str(tmp_path / "src.raw"), str(tmp_path / "back.raw")
    digest = pattern_file(src, 16 * MIB, 7)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.uri)
    # the export is 64 MiB, the source 16: compare the prefix, then the tail as zeros
    p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri, check=False)
    assert p.returncode == 0 and "Images are identical" in p.stdout, p
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri, back)
    assert os.path.getsize(back) == 64 * MIB
    with open(back, "rb") as f:
        head = f.read(16 * MIB)
        assert hashlib.sha256(head).hexdigest() == digest
        assert f.read() == bytes(48 * MIB)
    with open(src, "r+b") as f:  # compare can fail
        f.seek(5 * MIB)
        f.write(b"different")
    p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.uri, check=False)
    assert p.returncode == 1 and "Content mismatch at offset 5242880" in p.stdout


# --- libnbd tools ---------------------------------------------------------------------------


def test_nbdinfo_size_block_sizes_and_allocation_map(srv):
    need("nbdinfo", "qemu-io")
    info = json.loads(run("nbdinfo", "--json", srv.uri).stdout)
    (export,) = info["exports"]
    assert export["export-size"] == 64 * MIB
    assert export["block_size_minimum"] == 4096
    assert export["block_size_preferred"] == 4096
    assert export["block_size_maximum"] == 32 * MIB
    assert info["protocol"] == "newstyle-fixed" and export["contexts"] == ["base:allocation"]
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn"):
        assert export[flag] is True, flag
    assert export["is_read_only"] is False and export["is_rotational"] is False

    def allocation():
        m = json.loads(run("nbdinfo", "--map", "--json", srv.uri).stdout)
        return [(e["offset"], e["length"], e["type"]) for e in m]

    assert allocation() == [(0, 64 * MIB, 3)]
    run("qemu-io", "-f", "raw", "-c", "write -P 1 1M 2M", "-c", "write -P 2 8M 4k", srv.uri)
    assert allocation() == [
        (0, MIB, 3),
        (MIB, 2 * MIB, 0),
        (3 * MIB, 5 * MIB, 3),
        (8 * MIB, 4096, 0),
        (8 * MIB + 4096, 56 * MIB - 4096, 3),
    ]
    run("qemu-io", "-f", "raw", "-c", "discard 1M 1M", "-c", "write -z -u 8M 4k", srv.uri)
    assert allocation() == [(0, 2 * MIB, 3), (2 * MIB, MIB, 0), (3 * MIB, 61 * MIB, 3)]


def test_nbdcopy_both_ways(srv, tmp_path):
    need("nbdcopy")
    src, back = str(tmp_path / "src.raw"), str(tmp_path / "back.raw")
    digest = pattern_file(src, 64 * MIB, 9)
    run("nbdcopy", "--requests=16", "--connections=4", src, srv.uri)
    run("nbdcopy", "--requests=16", srv.unix_uri, back)
    assert sha(back) == digest


# --- fio --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rw", "bs", "depth"),
    [("randwrite", "4k", 1), ("randwrite", "4k", 16), ("write", "1M", 16), ("randrw", "16k", 16)],
)
def test_fio_nbd_engine_verify(srv, rw, bs, depth):
    need("fio")
    if "nbd" not in run("fio", "--enghelp", check=False).stdout:
        pytest.skip("this fio has no nbd engine")
    size = "8M" if depth == 1 else "32M"
    p = run(
        "fio",
        "--name=verify",
        "--ioengine=nbd",
        f"--uri={srv.uri}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--iodepth={depth}",
        f"--size={size}",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",  # fio would leave a state file in the working directory
        "--output-format=json",
        timeout=120,
    )
    job = json.loads(p.stdout[p.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] >= (8 if depth == 1 else 32) * MIB * (
        0.4 if rw == "randrw" else 1
    )
    assert job["read"]["io_bytes"] > 0  # the verify pass read everything back


# --- libnbd's Python bindings ---------------------------------------------------------------


def test_libnbd_structured_replies_block_status_and_errors(srv):
    r = libnbd(
        """
        h = nbd.NBD()
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        h.connect_uri(ARGS["uri"])
        out = {"structured": h.get_structured_replies_negotiated(),
               "meta": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
               "min": h.get_block_size(nbd.SIZE_MINIMUM)}
        h.pwrite(b"\\x5a" * 65536, 65536)
        h.pwrite(b"\\x6b" * 4096, 1 << 20, nbd.CMD_FLAG_FUA)
        h.trim(4096, 65536)
        h.zero(8192, 69632)
        h.flush()
        ext = []
        def cb(ctx, off, entries, err):
            ext.append((ctx, off, list(entries)))
        h.block_status(4 << 20, 0, cb)
        out["extents"] = ext
        one = []
        h.block_status(4 << 20, 0, lambda c, o, e, err: one.append(list(e)), nbd.CMD_FLAG_REQ_ONE)
        out["one"] = one
        out["read"] = h.pread(65536, 65536).hex()
        h.set_strict_mode(0)  # let libnbd send what the server must refuse
        errs = {}
        for name, fn in [("unaligned", lambda: h.pread(100, 4096)),
                         ("beyond_read", lambda: h.pread(8192, (64 << 20) - 4096)),
                         ("beyond_write", lambda: h.pwrite(b"x" * 4096, 64 << 20)),
                         ("too_big", lambda: h.pread((32 << 20) + 4096, 0)),
                         ("bad_flag", lambda: h.pread(4096, 0, nbd.CMD_FLAG_REQ_ONE))]:
            try:
                fn()
                errs[name] = 0
            except nbd.Error as e:
                errs[name] = e.errno
        out["errs"] = errs
        out["still_reads"] = h.pread(4096, 1 << 20).hex() == "6b" * 4096
        h.shutdown()
        print(json.dumps(out))
        """,
        uri=srv.uri,
    )
    assert r["structured"] and r["meta"] and r["min"] == 4096
    ((ctx, off, entries),) = r["extents"]
    assert ctx == "base:allocation" and off == 0
    runs = list(zip(entries[::2], entries[1::2], strict=True))
    assert runs == [(77824, 3), (53248, 0), (917504, 3), (4096, 0), (4 * MIB - MIB - 4096, 3)]
    assert r["one"] == [[77824, 3]]
    assert bytes.fromhex(r["read"]) == bytes(12288) + b"\x5a" * 53248
    assert r["errs"] == {
        "unaligned": "EINVAL",
        "beyond_read": "EINVAL",
        "beyond_write": "ENOSPC",
        "too_big": "EOVERFLOW",
        "bad_flag": "EINVAL",
    }
    assert r["still_reads"]


def test_libnbd_unaligned_concurrent_writes_are_read_modify_written(srv):
    """A client that does not negotiate block sizes may send any offset; concurrent writes
    into different bytes of the same 4 KiB blocks must all survive (per-span locks)."""
    r = libnbd(
        """
        import random
        h = nbd.NBD()
        h.set_request_block_size(False)
        h.connect_uri(ARGS["uri"])
        rng = random.Random(5)
        model = bytearray(1 << 20)
        h.pwrite(bytes(model), 0)
        cookies = []
        # 64 concurrent writes of 1..600 bytes at odd offsets; disjoint, many share blocks
        pos = 17
        while pos < len(model) - 5000 and len(cookies) < 600:
            n = rng.randint(1, 600)
            data = bytes([rng.randint(1, 255)]) * n
            model[pos:pos + n] = data
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), pos))
            pos += n + rng.choice([0, 1, 7, 1000])
            while h.aio_in_flight() >= 64:
                h.poll(-1)
        while h.aio_in_flight():
            h.poll(-1)
        for c in cookies:
            assert h.aio_command_completed(c)
        # an unaligned zero and an unaligned trim (trim keeps partial blocks: a hint)
        h.zero(5000, 10)
        model[10:5010] = bytes(5000)
        h.pwrite(bytes(model[0:10]), 0)
        got = h.pread(len(model), 0)
        odd = h.pread(333, 4097)
        print(json.dumps({"min": h.get_block_size(nbd.SIZE_MINIMUM), "same": got == bytes(model),
                          "odd": odd == bytes(model[4097:4430]), "writes": len(cookies)}))
        """,
        uri=srv.uri,
    )
    assert r == {"min": 1, "same": True, "odd": True, "writes": r["writes"]}
    assert r["writes"] > 500


def test_read_only_export_refuses_writes(tmp_path):
    need("qemu-io")
    s = NBDProc(str(tmp_path / "replica"), size="16MiB", name="vol").start()
    s.stop()
    ro = NBDProc(str(tmp_path / "replica"), name="vol", size="16MiB", read_only=True).start()
    try:
        r = libnbd(
            """
            h = nbd.NBD()
            h.set_export_name("vol")
            h.connect_uri(ARGS["uri"])
            out = {"ro": h.is_read_only(), "trim": h.can_trim(), "size": h.get_size()}
            h.set_strict_mode(0)
            try:
                h.pwrite(b"x" * 4096, 0)
                out["err"] = 0
            except nbd.Error as e:
                out["err"] = e.errno
            out["read"] = h.pread(4096, 0) == bytes(4096)
            print(json.dumps(out))
            """,
            uri=ro.uri,
        )
        assert r == {"ro": True, "trim": False, "size": 16 * MIB, "err": "EPERM", "read": True}
        p = run("qemu-io", "-f", "raw", "-c", "write 0 4k", ro.uri, check=False)
        assert (
            p.returncode != 0
            or "Permission denied" in p.stderr + p.stdout
            or "read-only" in (p.stderr + p.stdout)
        )
    finally:
        assert ro.stop() == 0


# --- hostile clients --------------------------------------------------------------------------


def _handshake(port: int) -> socket.socket:
    s = nbd_handshake(port, timeout=5)
    assert s is not None, "the handshake was refused"
    return s


def _closed(s: socket.socket, deadline: float = 5.0) -> bool:
    s.settimeout(deadline)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_hostile_clients_lose_only_their_own_connection(srv):
    need("qemu-io")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", srv.uri)
    good = _handshake(srv.port)  # a bystander with a connection open throughout
    hostile = []
    # garbage instead of client flags, bad option magic, an oversized option
    for junk in (
        b"\xff" * 64,
        struct.pack(">I", 1) + b"GARBAGE!" * 4,
        struct.pack(">IQII", 1, nbd.IHAVEOPT, 7, 1 << 30),
    ):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(junk)
        hostile.append(s)
    # garbage and an oversized write during transmission
    for junk in (os.urandom(64), struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 1, 1, 0, 1 << 31)):
        s = _handshake(srv.port)
        s.sendall(junk)
        hostile.append(s)
    # a well-framed but invalid request gets an error and the connection goes on
    s = _handshake(srv.port)
    s.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 99, 5, 0, 0))
    assert struct.unpack(">IIQ", recv_exactly(s, 16)) == (nbd.SIMPLE_REPLY_MAGIC, nbd.EINVAL, 5)
    for h in hostile:
        assert _closed(h), "a hostile connection was left open"
        h.close()
    # the bystander and a new client still work, and the data is intact
    good.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_READ, 9, 0, 4096))
    reply = recv_exactly(good, 16 + 4096)
    assert reply[:16] == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, 9)
    assert reply[16:] == b"\x42" * 4096
    s.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_DISC, 0, 0, 0))
    assert _closed(s)
    good.close()
    run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x42 0 64k", srv.uri)
    assert srv.alive()


# --- nbdfuse + loop + ext4 ----------------------------------------------------------------------


@pytest.mark.root
def test_nbdfuse_loop_ext4_files_survive_remount_and_fsck(srv, tmp_path):
    need("nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "fusermount3")
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts)")
    if not os.path.exists("/dev/fuse") or not os.path.exists("/dev/loop-control"):
        pytest.skip("this kernel has no FUSE or no loop devices")
    fuse_dir, mnt = tmp_path / "fuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    pidfile = tmp_path / "nbdfuse.pid"
    fuse_log = open(tmp_path / "nbdfuse.log", "w")
    fuse = subprocess.Popen(
        ["nbdfuse", "-P", str(pidfile), str(fuse_dir / "disk"), srv.uri],
        stdout=fuse_log,
        stderr=subprocess.STDOUT,
    )
    loop_dev = None
    mounted = False
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert fuse.poll() is None, (tmp_path / "nbdfuse.log").read_text()
            assert time.monotonic() < deadline, "nbdfuse did not become ready"
            time.sleep(0.02)
        assert os.path.getsize(fuse_dir / "disk") == 64 * MIB
        # 4 KiB logical blocks: the kernel then never sends I/O smaller than our minimum
        loop_dev = run(
            "losetup",
            "--sector-size=4096",
            "--direct-io=on",
            "-f",
            "--show",
            str(fuse_dir / "disk"),
        ).stdout.strip()
        run("mkfs.ext4", "-q", "-F", "-b", "4096", loop_dev)
        run("mount", loop_dev, str(mnt))
        mounted = True
        sums = {}
        for i in range(8):
            data = os.urandom(256 * 1024 * (i + 1)) + b"tail" * i
            (mnt / f"f{i}").write_bytes(data)
            sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
        (mnt / "dir").mkdir()
        (mnt / "dir" / "small").write_bytes(b"hello nbd\n")
        os.sync()
        run("umount", str(mnt))
        mounted = False
        fsck = run("e2fsck", "-fn", loop_dev, check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        run("blockdev", "--flushbufs", loop_dev, check=False)
        run("mount", "-o", "ro", loop_dev, str(mnt))
        mounted = True
        for name, digest in sums.items():
            assert sha(str(mnt / name)) == digest, name
        assert (mnt / "dir" / "small").read_bytes() == b"hello nbd\n"
        run("umount", str(mnt))
        mounted = False
        # past every cache on the way: copy the export out over NBD and check that image
        if shutil.which("nbdcopy") and shutil.which("debugfs"):
            image = str(tmp_path / "image.raw")
            run("nbdcopy", srv.uri, image)
            fsck = run("e2fsck", "-fn", image, check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            run("debugfs", "-R", f"dump /f7 {tmp_path / 'f7'}", image)
            assert sha(str(tmp_path / "f7")) == sums["f7"]
    finally:
        if mounted:
            run("umount", "-l", str(mnt), check=False)
        if loop_dev:
            run("losetup", "-d", loop_dev, check=False)
        run("fusermount3", "-u", str(fuse_dir), check=False)
        try:
            fuse.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fuse.kill()
            fuse.wait()
        fuse_log.close()
        with contextlib.suppress(OSError):
            os.rmdir(fuse_dir)


# --- the shell in-process, with a device that really suspends ---------------------------------


async def test_read_modify_write_is_serialised_on_a_device_that_suspends():
    """LocalDevice never yields inside read/write; the engine will. With a device that
    sleeps between the read and the write of a read-modify-write, 64 pipelined writes into
    different bytes of the same blocks must all survive: the span lock is what keeps them."""
    import asyncio

    from cargohold.frontend.local_device import LocalDevice
    from cargohold.frontend.nbd_server import NBDServer
    from cargohold.store.memory_store import MemoryStore

    class Slow(LocalDevice):
        async def read(self, offset, length):
            data = self.store.read(offset, length)
            await asyncio.sleep(0.001)
            return data

        async def write(self, offset, data, fua):
            await asyncio.sleep(0.001)
            self.store.write(offset, data)

    server = NBDServer(Slow(MemoryStore(1 << 20)))
    _, port = await server.listen_tcp("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readexactly(18)
        writer.write(struct.pack(">I", 3) + struct.pack(">QII", nbd.IHAVEOPT, 1, 0))
        await reader.readexactly(10)  # size and flags: no block sizes negotiated
        model = bytearray(8192)
        for i in range(64):
            off = 37 + i * 120
            data = bytes([i + 1]) * 100
            model[off : off + 100] = data
            writer.write(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 1, i, off, 100) + data)
        await writer.drain()
        for _ in range(64):
            magic, err, _ = struct.unpack(">IIQ", await reader.readexactly(16))
            assert (magic, err) == (nbd.SIMPLE_REPLY_MAGIC, 0)
        writer.write(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 0, 99, 0, 8192))
        assert struct.unpack(">IIQ", await reader.readexactly(16))[1] == 0
        assert await reader.readexactly(8192) == bytes(model)
        assert server.locks.held == 0
    finally:
        writer.close()
        await server.close()
