"""One engine over three replica servers on loopback, started fresh for a measured run, and
fio against it: what benchmarks/tls.py (TLS against plain) and benchmarks/encryption.py
(an encrypted volume against a plain one) compare. The engine's local replica is the first.

Every process is started here and stopped by its PID (``stop``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time

import method  # benchmarks/method.py

from cargohold.cli.units import parse_size
from cargohold.encryption import layout
from cargohold.replica.client import ReplicaClient
from tests.support.engine import EngineProc
from tests.support.processes import ServerProc
from tests.support.tls import PKI


def fio(
    uri: str, rw: str, bs: str, qd: int, size: int, seconds: float, ramp: float = 0.0
) -> dict[str, float]:
    """One fio run (nbd engine) of ``seconds`` after ``ramp`` (0 seconds: one pass over
    ``size``): IOPS, MB/s and the operations fio completed, of the side ``rw`` names."""
    cmd = ["fio", "--name=bench", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", f"--size={size}"]
    cmd += ["--ioengine=nbd", f"--uri={uri}", "--output-format=json", "--randrepeat=0"]
    cmd += ["--norandommap"]
    if seconds:
        cmd += ["--time_based", f"--runtime={seconds}", f"--ramp_time={ramp:g}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=(seconds or 600) + ramp + 120)
    if p.returncode != 0 or "{" not in p.stdout:
        raise RuntimeError(f"fio failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    job = json.loads(p.stdout[p.stdout.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"iops": side["iops"], "mb_per_s": side["bw_bytes"] / 1e6, "ios": side["total_ios"]}


class EngineLab:
    """Three replica servers and one engine: over mutual TLS with ``pki`` (plain without),
    serving an encrypted volume with ``key`` and ``vid`` (a plain one without). With
    ``local_unix`` the first server (the engine's local replica) also listens on a unix
    socket and the engine reaches it there (``--local-unix``), as the node agent runs them."""

    def __init__(
        self,
        work: str,
        size: int,
        name: str,
        pki: PKI | None = None,
        key: bytes | None = None,
        vid: bytes | None = None,
        local_unix: bool = False,
    ) -> None:
        self.size, self.pki, self.key, self.vid = size, pki, key, vid
        self.local_unix = local_unix
        self.root = os.path.join(work, name)
        os.makedirs(self.root)
        self.servers: list[ServerProc] = []
        self.engine: EngineProc | None = None
        self.start_seconds = 0.0
        self.settled: dict[str, float] = {}

    def start(self) -> None:
        pki = self.pki
        for i in range(3):
            disk = os.path.join(self.root, f"node-{i}")
            os.makedirs(disk)
            tls_dir = pki.dir("replica", f"node-{i}") if pki else None
            unix = os.path.join(self.root, "rs.sock") if self.local_unix and i == 0 else None
            s = ServerProc([disk], unix=unix, tls_dir=tls_dir, log_dir=self.root)
            self.servers.append(s)
            s.start()
        stored = layout.physical_size(self.size) if self.key else self.size

        async def create() -> None:
            agent = pki.creds("agent", "bench") if pki else None
            for i, s in enumerate(self.servers):
                c = await ReplicaClient.connect("127.0.0.1", s.port, tls=agent, replica=f"b-r{i}")
                await c.create(f"b-r{i}", stored, volume="b")
                await c.close()

        asyncio.run(create())
        specs = [f"b-r{i}@127.0.0.1:{s.port}" for i, s in enumerate(self.servers)]
        tls_dir = pki.dir("engine", "b") if pki else None
        extra: list[str] = []
        r = -1
        if self.key:
            assert self.vid is not None
            r, w = os.pipe()
            os.write(w, self.key)
            os.close(w)
            extra = ["--data-key-fd", str(r), "--encryption-key-id", self.vid.hex()]
        if self.local_unix:
            extra += ["--local-unix", os.path.join(self.root, "rs.sock")]
        self.engine = EngineProc(
            "b", specs, 1, self.root, local="b-r0", tls_dir=tls_dir, extra=extra
        )
        if r >= 0:
            self.engine.pass_fds = (r,)
        t0 = time.perf_counter()
        try:
            self.engine.start()
        finally:
            if r >= 0:
                os.close(r)
        self.start_seconds = time.perf_counter() - t0
        st = self.engine.ctl(op="status")
        assert [x["mode"] for x in st["replicas"]] == ["RW"] * 3, st
        if self.local_unix:
            assert st["replicas"][0].get("transport") == "unix", st

    @property
    def pids(self) -> list[int]:
        """The engine's and the replica servers' processes: whose CPU an operation costs."""
        procs = [self.engine, *self.servers]
        return [p.proc.pid for p in procs if p is not None and p.proc is not None]

    def written(self) -> int:
        """Bytes the engine has written since it started (its counters)."""
        assert self.engine is not None
        return int(self.engine.ctl(op="status").get("counters", {}).get("written_bytes", 0))

    def fill(self) -> None:
        """Write the whole volume once (1 MiB sequential, QD8)."""
        assert self.engine is not None
        fio(self.engine.uri, "write", "1M", 8, self.size, 0)

    def measure(
        self, rw: str, bs: str, qd: int, seconds: float, ramp: float = 0.0
    ) -> dict[str, float]:
        """One fio run, and the CPU it cost: µs of CPU of the engine and the three replica
        servers together per operation. With a ramp, writes are counted by the engine (its
        bytes written over the CPU of the same interval, ramp included on both sides);
        without, the operations fio completed."""
        assert self.engine is not None
        self.settled = method.settle_writeback()
        w0, cpu0 = self.written(), method.cpu_ticks(self.pids)
        r = fio(self.engine.uri, rw, bs, qd, self.size, seconds, ramp)
        cpu1, w1 = method.cpu_ticks(self.pids), self.written()
        ops = r["ios"]
        if ramp and "write" in rw:
            ops = (w1 - w0) / parse_size(bs.replace("k", "Ki").replace("M", "Mi"))
        r["cpu_us_per_op"] = method.cpu_us_per_op(cpu0, cpu1, ops)
        r["cpu_us_per_op_engine"] = method.cpu_us_per_op(
            {self.pids[0]: cpu0[self.pids[0]]}, cpu1, ops
        )
        # the replica server of the engine's local replica (the first) alone
        r["cpu_us_per_op_local"] = method.cpu_us_per_op(
            {self.pids[1]: cpu0[self.pids[1]]}, cpu1, ops
        )
        return r

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)
