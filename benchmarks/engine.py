#!/usr/bin/env python3
"""Benchmark: the volume engine against the local disk and C NBD servers, in one run.

Every system serves a file or volume in the same directory (same disk), and fio drives it:
``--ioengine=nbd`` (libnbd) for every NBD target, ``--ioengine=libaio --direct=1`` for the
local file. Systems:

    local      fio on a local file, O_DIRECT: the physical limit
    nbdkit     nbdkit's file plugin (C): the NBD protocol's cost without replication
    qemu-nbd   qemu-nbd --cache=none (C, O_DIRECT underneath)
    nbd-serve  cargohold nbd-serve: one in-process replica, no replication (the NBD layer)
    engine-1   cargohold engine, 1 replica (a replica server on loopback)
    engine-3   cargohold engine, 3 replicas (three replica servers on loopback)
               In both the local replica (r0) is reached over its server's unix socket,
               as the node agent runs engines (``--local-unix``); ``--local-link tcp``
               puts it on loopback TCP like the others (the figures before 2026-12-07 13:00)
    engine-3-tls    the same with mutual TLS on every replica link, as users run it
    engine-3-netns  3 nodes: the three replica servers in three network namespaces, the
               engine (and fio, its consumer) in a fourth, joined by veth pairs and a bridge
               (the fault matrix's lab, cargohold/launcher/netns.py), TLS on: every byte
               crosses a veth link as it would cross a network; root only (skipped otherwise)

Workloads: 4 KiB random write and read at QD1 and QD16, 1 MiB sequential write and read at
QD4; each system is filled first (reads of holes measure nothing), so every system starts
from the same state: a fresh file, written whole once. The method (issue #22 Part 1,
``benchmarks/method.py``): the workloads are interleaved, for each workload every system
runs in turn, and the whole is repeated ``--repeats`` times (3) with the systems' order
rotated, so the ratios compare runs made within a minute of each other on this noisy
machine; before every run ``sync`` and a wait until Dirty + Writeback (/proc/meminfo) is
near 0, so no system pays for another's (or its own fill's) dirty pages. Reported: medians
of the runs and the spread of IOPS, MB/s, total latency (submission to completion: mean,
p50, p99, p99.9), the CPU the system's server processes used and fio's own CPU, CPU µs per
operation, the host's load per run, ratios to nbdkit (issue 6 sets its targets as ratios to
nbdkit's file plugin) and, for 4 KiB randwrite QD16, to Ceph RBD's recorded 1,380 IOPS.
The baselines are checked: the local file's and nbdkit's runs within ±15 % of their median
and nbdkit at least half the local file's figure in the same run; a workload whose
baselines are out of band is reported INVALID, and its targets are not judged. Every
process started here is stopped by its PID, on errors and Ctrl-C too.

    .venv/bin/python benchmarks/engine.py [--seconds 10] [--size 2GiB] \\
        [--json benchmarks/results/engine.json] [--systems nbdkit,engine-3] \\
        [--workloads randwrite-4k-qd16] [--repeats 3] [--profile DIR] [--markdown]

``--profile DIR`` runs the cargohold processes (engines, nbd-serve) under cProfile (or
``--profiler pyinstrument``) and prints their profiles; a profiled run's figures are not
comparable with anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import method  # noqa: E402  (benchmarks/method.py: the measuring method)

# the CLI package first: importing cargohold.cli.replica_cmd alone hits an import cycle
from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.launcher.netns import available as netns_available  # noqa: E402
from cargohold.replica.client import ReplicaClient  # noqa: E402
from tests.support.engine_control import engine_status  # noqa: E402
from tests.support.processes import Launched, ServerProc  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "engine.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    rw: str
    bs: str
    qd: int
    target: str  # what issue 6 measures: "iops", "mbps" or "p99"


WORKLOADS = [
    Workload("randwrite-4k-qd1", "4 KiB randwrite QD1", "randwrite", "4k", 1, "p99"),
    Workload("randwrite-4k-qd16", "4 KiB randwrite QD16", "randwrite", "4k", 16, "iops"),
    Workload("randread-4k-qd1", "4 KiB randread QD1", "randread", "4k", 1, "p99"),
    Workload("randread-4k-qd16", "4 KiB randread QD16", "randread", "4k", 16, "iops"),
    Workload("seqwrite-1m-qd4", "1 MiB seqwrite QD4", "write", "1M", 4, "mbps"),
    Workload("seqread-1m-qd4", "1 MiB seqread QD4", "read", "1M", 4, "mbps"),
]

SYSTEMS = ["local", "nbdkit", "qemu-nbd", "nbd-serve", "engine-1", "engine-3"]
OPT_IN = ["engine-3-tls", "engine-3-netns"]  # not in the default run: --systems names them
SYSTEMS += OPT_IN
LABELS = {
    "local": "local file (libaio, O_DIRECT)",
    "nbdkit": "nbdkit file plugin",
    "qemu-nbd": "qemu-nbd cache=none",
    "nbd-serve": "cargohold nbd-serve (no replication)",
    "engine-1": "cargohold engine, 1 replica",
    "engine-3": "cargohold engine, 3 replicas",
    "engine-3-tls": "cargohold engine, 3 replicas, TLS",
    "engine-3-netns": "engine, 3 replicas on 3 netns nodes, TLS",
}

# issue 6: (workload, system) -> (bound, "min" for ratio >= bound, "max" for ratio <= bound)
TARGETS = {
    ("randwrite-4k-qd16", "engine-1"): (0.60, "min"),
    ("randwrite-4k-qd16", "engine-3"): (0.30, "min"),
    ("randread-4k-qd16", "engine-1"): (0.50, "min"),
    ("randread-4k-qd16", "engine-3"): (0.50, "min"),
    ("seqwrite-1m-qd4", "engine-1"): (0.50, "min"),
    ("seqwrite-1m-qd4", "engine-3"): (0.25, "min"),
    ("seqread-1m-qd4", "engine-1"): (0.50, "min"),
    ("seqread-1m-qd4", "engine-3"): (0.50, "min"),
    ("randwrite-4k-qd1", "engine-1"): (3.0, "max"),
    ("randwrite-4k-qd1", "engine-3"): (5.0, "max"),
}


# --- processes ---------------------------------------------------------------------------
class Started:
    """Everything this run started, stopped in reverse order by PID."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, p: Any) -> Any:
        self.items.append(p)
        return p

    def stop_all(self) -> None:
        while self.items:
            p = self.items.pop()
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {p!r}: {e}", file=sys.stderr)


@dataclass
class Proc(Launched):
    """A server process: output to a log file (``output``, ``pid`` from ``Launched``), ready
    when its port (parsed or given) accepts."""

    name: str
    cmd: list[str]
    log_dir: str
    port: int = 0
    port_regex: str | None = None  # parse the port from the log
    unix: str | None = None  # or wait for this socket
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    log_path: str = ""

    def start(self, timeout: float = 30.0) -> Proc:
        self.log_path = os.path.join(self.log_dir, f"{self.name}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.port_regex and not self.port:
                m = re.search(self.port_regex, self.output())
                if m:
                    self.port = int(m.group(1))
            if self._accepts():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {' '.join(self.cmd)}\n{self.output()}")

    def _accepts(self) -> bool:
        try:
            if self.unix:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.unix)
            elif self.port:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            else:
                return False
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (cargohold drains and flushes; cProfile writes its file), then SIGKILL."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    rc = self.proc.wait()
            else:
                rc = self.proc.returncode
        if getattr(self, "_log", None) is not None:
            self._log.close()
        return rc

    def __repr__(self) -> str:
        return f"{self.name}(pid {self.proc.pid if self.proc else '-'})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict[str, Any]:
    """What a run's figures were measured on: CPUs, platform, Python and fio."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "fio": subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip(),
    }


def cpu_seconds(pids: list[int]) -> list[float]:
    """utime + stime of each process (all its threads) and its descendants."""
    ticks = method.cpu_ticks(pids)
    return [ticks[p] / CLK_TCK for p in pids]


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


# --- systems ------------------------------------------------------------------------------
@dataclass
class System:
    key: str
    uri: str | None = None  # NBD targets
    path: str | None = None  # the local file
    procs: list[Any] = field(default_factory=list)  # whose CPU counts as the server's
    control: str | None = None  # engines: the control socket
    profile: str | None = None  # cProfile output
    prefix: list[str] = field(default_factory=list)  # fio runs with it (ip netns exec NS)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if getattr(p, "proc", None) is not None]

    @property
    def names(self) -> list[str]:
        """The processes of ``pids``: the system's own name first, then its replica servers."""
        live = [p for p in self.procs if getattr(p, "proc", None) is not None]
        return [self.key if i == 0 else f"replica-server-{i - 1}" for i in range(len(live))]


class Bench:
    def __init__(self, args: argparse.Namespace, work: str, started: Started) -> None:
        self.args = args
        self.work = work
        self.size = parse_size(args.size)
        self.started = started
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.env = dict(
            os.environ, PYTHONPATH=ROOT, CARGOHOLD_LOG=os.environ.get("CARGOHOLD_LOG", "WARNING")
        )

    def _addr(self, name: str) -> tuple[str | None, int]:
        """A unix socket path (--transport unix) or a free TCP port."""
        if self.args.transport == "unix":
            return os.path.join(self.work, f"{name}.sock"), 0
        return None, free_port()

    def _uri(self, port: int, unix: str | None, export: str = "") -> str:
        if unix:
            return f"nbd+unix:///{export}?socket={unix}"
        return f"nbd://127.0.0.1:{port}/{export}"

    def _py(self, key: str) -> tuple[list[str], str | None]:
        """How to start a cargohold process (under cProfile with --profile)."""
        if not self.args.profile:
            return [sys.executable, "-m", "cargohold"], None
        if self.args.profiler == "pyinstrument":  # sampling, a call tree in a text file
            out = os.path.join(os.path.abspath(self.args.profile), f"{key}.pyinstrument.txt")
            opts = ["-o", out, "-r", "text", "--no-color", "-i", "0.0005"]
            return [sys.executable, "-m", "pyinstrument", *opts, "-m", "cargohold"], out
        out = os.path.join(os.path.abspath(self.args.profile), f"{key}.prof")
        return [sys.executable, "-m", "cProfile", "-o", out, "-m", "cargohold"], out

    def _image(self, name: str) -> str:
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.truncate(self.size)
        return path

    def start(self, key: str) -> System:
        return getattr(self, "_start_" + key.replace("-", "_"))()

    def _start_local(self) -> System:
        return System("local", path=os.path.join(self.work, "local.dat"))

    def _start_nbdkit(self) -> System:
        img = self._image("nbdkit.img")
        unix, port = self._addr("nbdkit")
        where = ["-U", unix] if unix else ["-i", "127.0.0.1", "-p", str(port)]
        cmd = ["nbdkit", "-f", *where, "file", img]
        p = self.started.add(Proc("nbdkit", cmd, self.logs, port=port, unix=unix))
        p.start()
        return System("nbdkit", uri=self._uri(port, unix), procs=[p])

    def _start_qemu_nbd(self) -> System:
        img = self._image("qemu.img")
        unix, port = self._addr("qemu-nbd")
        where = ["-k", unix] if unix else ["-b", "127.0.0.1", "-p", str(port)]
        cmd = ["qemu-nbd", "-t", "-f", "raw", "--cache=none", *where, img]
        p = self.started.add(Proc("qemu-nbd", cmd, self.logs, port=port, unix=unix))
        p.start()
        return System("qemu-nbd", uri=self._uri(port, unix), procs=[p])

    def _start_nbd_serve(self) -> System:
        py, prof = self._py("nbd-serve")
        unix, _ = self._addr("nbd-serve")
        cmd = [*py, "nbd-serve", "--dir", os.path.join(self.work, "nbd-serve")]
        cmd += ["--size", str(self.size), "--listen", "127.0.0.1:0", "--name", "bench"]
        cmd += ["--unix", unix] if unix else []
        regex = r"nbd server listening on 127\.0\.0\.1:(\d+)"
        # ready when the TCP listener answers: it prints its port after both are up
        p = Proc("nbd-serve", cmd, self.logs, port_regex=regex, env=self.env)
        self.started.add(p).start()
        return System("nbd-serve", uri=self._uri(p.port, unix, "bench"), procs=[p], profile=prof)

    def _start_engine_1(self) -> System:
        return self._engine("engine-1", 1)

    def _start_engine_3(self) -> System:
        return self._engine("engine-3", 3)

    def _engine(self, key: str, n: int) -> System:
        servers = []
        for i in range(n):
            disk = os.path.join(self.work, key, f"node-{i}")
            os.makedirs(disk)
            # the local replica's server (r0) also on a unix socket, as the agent runs it
            sock = os.path.join(self.work, f"{key}-r{i}.sock") if i == 0 else None
            servers.append(self.started.add(ServerProc([disk], unix=sock, log_dir=self.logs)))
            servers[-1].start()

        async def create() -> None:
            for i, s in enumerate(servers):
                c = await ReplicaClient.connect("127.0.0.1", s.port)
                await c.create(f"r{i}", self.size, volume="bench")  # the engine's own
                await c.close()

        asyncio.run(create())
        py, prof = self._py(key)
        unix, _ = self._addr(key)
        control = os.path.join(self.work, f"{key}.ctl")
        cmd = [*py, "engine", "--volume", "bench", "--epoch", "1", "--listen", "127.0.0.1:0"]
        cmd += ["--control", control, "--local", "r0", "--plaintext"]  # benchmarks/tls.py: TLS
        if self.args.local_link == "unix":  # the agent's way: its server's unix socket
            cmd += ["--local-unix", str(servers[0].unix)]
        for i, s in enumerate(servers):
            cmd += ["--replica", f"r{i}@127.0.0.1:{s.port}"]
        cmd += ["--unix", unix] if unix else []
        regex = r"nbd server listening on 127\.0\.0\.1:(\d+)"
        e = self.started.add(Proc(key, cmd, self.logs, port_regex=regex, env=self.env))
        e.start()
        st = engine_status(control)
        if st.get("robustness") != "healthy":
            raise RuntimeError(f"{key} is not healthy after start: {st}")
        links = [r.get("transport") for r in st.get("replicas", []) if r.get("local")]
        if links != [self.args.local_link]:  # a unix socket that failed falls back to TCP
            raise RuntimeError(f"{key}: local replica over {links}, not {self.args.local_link}")
        uri = self._uri(e.port, unix, "bench")
        return System(key, uri=uri, procs=[e, *servers], control=control, profile=prof)

    def _start_engine_3_tls(self) -> System:
        return self._engine_tls("engine-3-tls", netns=False)

    def _start_engine_3_netns(self) -> System:
        return self._engine_tls("engine-3-netns", netns=True)

    def _engine_tls(self, key: str, netns: bool) -> System:
        """Three replica servers and an engine with mutual TLS (a CA made for the run). With
        ``netns``: replica server i on lab node i (its own namespace and address), the engine
        in the lab's fourth namespace with no local replica (every read and write crosses a
        veth link), fio beside the engine (the consumer is on the engine's node)."""
        from netns_lab import BenchLab  # benchmarks/netns_lab.py

        from tests.support.tls import PKI

        pki = PKI(os.path.join(self.work, f"{key}-pki"), "c-bench")
        lab = self.started.add(BenchLab(self.work)) if netns else None
        servers = []
        for i in range(3):
            disk = os.path.join(self.work, key, f"node-{i}")
            os.makedirs(disk)
            where = lab.node(i) if lab else {}
            s = ServerProc([disk], log_dir=self.logs, tls_dir=pki.dir("replica", f"n{i}"), **where)
            servers.append(self.started.add(s))
            s.start()

        async def create() -> None:
            for i, s in enumerate(servers):
                agent = pki.creds("agent", f"n{i}")
                c = await ReplicaClient.connect(s.host, s.port, tls=agent, replica=f"bench-r{i}")
                await c.create(f"bench-r{i}", self.size, volume="bench")
                await c.close()

        if lab:
            lab.call(lambda: asyncio.run(create()))
        else:
            asyncio.run(create())
        py, prof = self._py(key)
        unix = os.path.join(self.work, f"{key}.sock")  # readiness, seen from this namespace
        control = os.path.join(self.work, f"{key}.ctl")
        cmd = [*(lab.engine_prefix if lab else []), *py, "engine", "--volume", "bench"]
        cmd += ["--epoch", "1", "--listen", "127.0.0.1:0", "--control", control, "--unix", unix]
        cmd += ["--tls-dir", pki.dir("engine", "bench")]
        cmd += [] if lab else ["--local", "bench-r0"]  # as engine-3; on the lab: none local
        for i, s in enumerate(servers):
            cmd += ["--replica", f"bench-r{i}@{s.host}:{s.port}"]
        regex = r"nbd server listening on 127\.0\.0\.1:(\d+)"
        e = self.started.add(Proc(key, cmd, self.logs, port_regex=regex, unix=unix, env=self.env))
        e.start()
        st = engine_status(control)
        if st.get("robustness") != "healthy":
            raise RuntimeError(f"{key} is not healthy after start: {st}")
        # fio over TCP beside the engine (in its namespace), as for engine-3 on loopback
        prefix = lab.engine_prefix if lab else []
        uri = self._uri(e.port, None, "bench")
        procs = [e, *servers]
        return System(key, uri, procs=procs, control=control, profile=prof, prefix=prefix)


# --- fio ------------------------------------------------------------------------------------
def fio_cmd(sys_: System, rw: str, bs: str, qd: int, size: int) -> list[str]:
    cmd = [*sys_.prefix, "fio", f"--name={sys_.key}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}"]
    cmd += [f"--size={size}", "--output-format=json", "--randrepeat=0", "--norandommap"]
    if sys_.uri:
        cmd += ["--ioengine=nbd", f"--uri={sys_.uri}"]
    else:
        assert sys_.path
        cmd += ["--ioengine=libaio", "--direct=1", f"--filename={sys_.path}"]
    return cmd


def run_fio(cmd: list[str], started: Started) -> dict[str, Any]:
    p = started.add(Proc("fio", cmd, tempfile.gettempdir()))
    p.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.proc.communicate()
    finally:
        p.stop()
        started.items.remove(p)
    if p.proc.returncode != 0 or "{" not in out:
        raise RuntimeError(f"fio failed ({p.proc.returncode}): {' '.join(cmd)}\n{out}\n{err}")
    res = json.loads(out[out.index("{") :])  # the nbd engine prints a line before the JSON
    job = res["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio error {job['error']}: {' '.join(cmd)}\n{err}")
    return job


def fill(sys_: System, size: int, started: Started) -> float:
    """Write the whole target once (1 MiB sequential, QD8) and flush it."""
    t0 = time.perf_counter()
    cmd = fio_cmd(sys_, "write", "1M", 8, size)
    run_fio([*cmd, "--end_fsync=1"], started)
    method.settle_writeback()
    return time.perf_counter() - t0


def measure(
    sys_: System, w: Workload, args: argparse.Namespace, size: int, started: Started
) -> dict[str, Any]:
    settled = method.settle_writeback()  # nobody pays for the previous run's dirty pages
    load = method.host_load()
    cmd = fio_cmd(sys_, w.rw, w.bs, w.qd, size)
    cmd += ["--time_based", f"--runtime={args.seconds}", f"--ramp_time={args.ramp}"]
    cmd += ["--lat_percentiles=1", "--percentile_list=50:99:99.9"]
    if args.fsync and "write" in w.rw:
        cmd.append(f"--fsync={args.fsync}")
    cpu0, t0, h0 = cpu_seconds(sys_.pids), time.perf_counter(), host_cpu()
    job = run_fio(cmd, started)
    cpu1, t1, h1 = cpu_seconds(sys_.pids), time.perf_counter(), host_cpu()
    by_proc = {n: 100 * (b - a) / (t1 - t0) for n, a, b in zip(sys_.names, cpu0, cpu1, strict=True)}
    side = job["write"] if "write" in w.rw else job["read"]
    lat = side["lat_ns"]
    pct = lat.get("percentile", {})
    return {
        "ops_per_s": side["iops"],
        "mb_per_s": side["bw_bytes"] / 1e6,
        "lat_mean_us": lat["mean"] / 1000,
        "lat_p50_us": pct.get("50.000000", 0) / 1000,
        "lat_p99_us": pct.get("99.000000", 0) / 1000,
        "lat_p999_us": pct.get("99.900000", 0) / 1000,
        # CPU of the server processes over the whole fio run (ramp included), in % of one core
        "server_cpu_pct": sum(by_proc.values()),
        "server_cpu_pct_by_process": by_proc,
        "fio_cpu_pct": job["usr_cpu"] + job["sys_cpu"],
        # the whole machine (every core, every process, the kernel), in % of one core
        "host_cpu_pct": 100 * os.cpu_count() * (h1[0] - h0[0]) / max(1, h1[1] - h0[1]),
        # µs of CPU per operation: of the system's processes, and with fio's (the client,
        # and for the local file the kernel's work on its behalf) added
        "cpu_us_per_op": 1e4 * sum(by_proc.values()) / side["iops"] if side["iops"] else 0.0,
        "cpu_us_per_op_with_fio": (
            1e4 * (sum(by_proc.values()) + job["usr_cpu"] + job["sys_cpu"]) / side["iops"]
            if side["iops"]
            else 0.0
        ),
        "ios": side["total_ios"],
        "load1": load[0],
        "dirty_kib_after_sync": settled["dirty_kib_after"],
    }


# --- report -------------------------------------------------------------------------------
HEAD = (
    f"{'system':38} {'ops/s':>9} {'MB/s':>8} {'mean us':>8} {'p50 us':>8} {'p99 us':>8} "
    f"{'p99.9 us':>9} {'srv CPU%':>8} {'fio CPU%':>8} {'host CPU%':>9} {'ops/nbdkit':>10} "
    f"{'p99/nbdkit':>10} {'CPU us/op':>9} {'ops/Ceph':>8} {'spread':>6} {'load':>5}"
)


def ratios(results: dict[str, dict[str, Any]]) -> None:
    """Add ratios to nbdkit to each system's figures (in place)."""
    base = results.get("nbdkit")
    for r in results.values():
        if base and base["ops_per_s"] and base["lat_p99_us"]:
            r["ops_vs_nbdkit"] = r["ops_per_s"] / base["ops_per_s"]
            r["p99_vs_nbdkit"] = r["lat_p99_us"] / base["lat_p99_us"]


def _x(r: dict[str, Any], k: str) -> str:
    return f"{r[k]:.2f}" if k in r else "-"


def print_table(w: Workload, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{w.title}")
    print(HEAD)
    for key, r in results.items():
        print(
            f"{LABELS[key]:38} {r['ops_per_s']:9.0f} {r['mb_per_s']:8.1f} "
            f"{r['lat_mean_us']:8.0f} {r['lat_p50_us']:8.0f} {r['lat_p99_us']:8.0f} "
            f"{r['lat_p999_us']:9.0f} {r['server_cpu_pct']:8.0f} {r['fio_cpu_pct']:8.0f} "
            f"{r['host_cpu_pct']:9.0f} "
            f"{_x(r, 'ops_vs_nbdkit'):>10} {_x(r, 'p99_vs_nbdkit'):>10} "
            f"{r.get('cpu_us_per_op', 0):9.0f} {_x(r, 'ops_vs_ceph'):>8} "
            f"{100 * r['ops_spread']['spread'] if 'ops_spread' in r else 0:5.0f}% "
            f"{r.get('load1', 0):5.1f}",
            flush=True,
        )


def check_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (wk, sk), (bound, how) in TARGETS.items():
        r = out["results"].get(wk, {}).get(sk)
        if not r or "ops_vs_nbdkit" not in r:
            continue
        got = r["p99_vs_nbdkit"] if how == "max" else r["ops_vs_nbdkit"]
        met = got <= bound if how == "max" else got >= bound
        rows.append({"workload": wk, "system": sk, "ratio": got, "bound": bound, "how": how})
        rows[-1]["met"] = met
        # a ratio to a baseline out of band is no result (method.band_check)
        rows[-1]["valid"] = out.get("validity", {}).get(wk, {}).get("valid", True)
    return rows


def markdown(out: dict[str, Any]) -> str:
    """The tables for docs/benchmarks.md: one row per workload and system."""
    lines = [
        "| workload | system | IOPS | MB/s | mean µs | p50 µs | p99 µs | p99.9 µs "
        "| server CPU % | server CPU µs/op | host CPU % | IOPS / nbdkit | p99 / nbdkit "
        "| IOPS spread | IOPS / Ceph |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {w.key: w.title for w in WORKLOADS}
    for wk, per in out["results"].items():
        for sk, r in per.items():
            ops = r["ops_per_s"]
            if sk == "local":  # no server: the kernel's work is fio's
                cpu = "— | —"
            else:
                per_op = r.get("cpu_us_per_op", 1e4 * r["server_cpu_pct"] / ops if ops else 0)
                cpu = f"{r['server_cpu_pct']:.0f} | {per_op:,.0f}"
            lines.append(
                f"| {titles[wk]} | {sk} | {r['ops_per_s']:,.0f} | {r['mb_per_s']:,.0f} "
                f"| {r['lat_mean_us']:,.0f} | {r['lat_p50_us']:,.0f} | {r['lat_p99_us']:,.0f} "
                f"| {r['lat_p999_us']:,.0f} | {cpu} | {r.get('host_cpu_pct', 0):.0f} "
                f"| {_x(r, 'ops_vs_nbdkit')} | {_x(r, 'p99_vs_nbdkit')} "
                f"| {_spread(r)} | {_x(r, 'ops_vs_ceph')} |"
            )
    for wk, v in out.get("validity", {}).items():
        if not v["valid"]:
            lines.append(f"\n**INVALID** {titles.get(wk, wk)}: " + "; ".join(v["reasons"]))
    return "\n".join(lines)


def _spread(r: dict[str, Any]) -> str:
    s = r.get("ops_spread")
    return f"±{50 * s['spread']:.0f}% (n={s['n']})" if s else "-"


def print_profile(path: str, top: int = 25) -> None:
    if path.endswith(".txt"):
        print(f"\n--- pyinstrument {path} ---")
        with open(path) as f:
            print(f.read())
        return
    print(f"\n--- cProfile {path} (top {top} by own time) ---")
    st = pstats.Stats(path)
    st.sort_stats("tottime").print_stats(top)


# --- main -------------------------------------------------------------------------------------
def pick(text: str | None, known: list[str], what: str) -> list[str]:
    if not text:
        return list(known)
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in known]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return [x for x in known if x in chosen]


def check_tools(systems: list[str]) -> list[str]:
    """Systems whose tools are missing are skipped with a note."""
    if shutil.which("fio") is None:
        raise SystemExit("fio is not installed (scripts/setup.sh installs it)")
    out = []
    for s in systems:
        tool = {"nbdkit": "nbdkit", "qemu-nbd": "qemu-nbd"}.get(s)
        if tool and shutil.which(tool) is None:
            print(f"note: {tool} is not installed; {s} skipped (scripts/setup.sh installs it)")
            continue
        if s == "engine-3-netns" and (why := netns_available()):
            print(f"note: engine-3-netns skipped: {why}")
            continue
        if s == "nbdkit":
            ok = subprocess.run(["nbdkit", "file", "--version"], capture_output=True).returncode
            if ok != 0:
                print("note: nbdkit has no file plugin; nbdkit skipped")
                continue
        out.append(s)
    return out


def run(args: argparse.Namespace, started: Started) -> dict[str, Any]:
    chosen = pick(args.systems, SYSTEMS, "system")
    chosen = chosen if args.systems else [s for s in chosen if s not in OPT_IN]
    systems = check_tools(chosen)
    workloads = [
        w
        for w in WORKLOADS
        if w.key in pick(args.workloads, [w.key for w in WORKLOADS], "workload")
    ]
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        print(f"note: --profile: cargohold runs under {args.profiler}; figures not comparable")
    per_run = args.seconds + args.ramp
    reps = max(1, getattr(args, "repeats", 1))
    est = reps * len(systems) * len(workloads) * (per_run + 4)
    print(
        f"{reps} x {len(systems)} systems x {len(workloads)} workloads x {per_run:g} s "
        f"(+ fills): about {est / 60:.0f} min",
        flush=True,
    )
    out: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_at_start": list(os.getloadavg()),
        "command": " ".join(sys.argv),
        "seconds": args.seconds,
        "ramp": args.ramp,
        "size": parse_size(args.size),
        "transport": args.transport,
        "local_link": args.local_link,
        "fsync": args.fsync,
        "systems": {},
        "skipped": [s for s in chosen if s not in systems],
        "results": {},
    }
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"note: load average {load1:.1f} before starting: something else is running")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cargohold-bench-", dir=args.dir) as work:
        bench = Bench(args, work, started)
        live: dict[str, System] = {}
        for key in systems:
            try:
                live[key] = bench.start(key)
            except RuntimeError as e:
                if key == "qemu-nbd":  # optional peer: skip it with a note
                    print(f"note: qemu-nbd did not start; skipped: {e}")
                    out["skipped"].append(key)
                    continue
                raise
            secs = fill(live[key], bench.size, started)
            out["systems"][key] = {"label": LABELS[key], "uri": live[key].uri, "fill_s": secs}
            print(
                f"{key}: started and filled ({bench.size / 2**20:.0f} MiB in {secs:.1f} s)",
                flush=True,
            )
        repeats = max(1, getattr(args, "repeats", 1))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {w.key: {} for w in workloads}
        for rep in range(repeats):
            for w in workloads:
                keys = list(live)
                keys = keys[rep % len(keys) :] + keys[: rep % len(keys)]  # interleaved
                results: dict[str, dict[str, Any]] = {}
                for key in keys:
                    results[key] = measure(live[key], w, args, bench.size, started)
                    runs[w.key].setdefault(key, []).append(results[key])
                ratios(results)
                if repeats > 1:
                    print(f"\n(repeat {rep + 1} of {repeats})", end="")
                print_table(w, {k: results[k] for k in live})
        for w in workloads:
            out["results"][w.key] = {k: median_run(runs[w.key][k]) for k in live}
            ratios(out["results"][w.key])
            vs_ceph(w.key, out["results"][w.key])
        out["repeats"] = repeats
        out["validity"] = judge(runs)
        out["valid"] = all(v["valid"] for v in out["validity"].values())
        if repeats > 1:
            print(f"\nmedians of {repeats} interleaved runs:", end="")
            for w in workloads:
                print_table(w, out["results"][w.key])
        for key, s in live.items():  # a replica dropped mid-run would make the figures a lie
            if s.control:
                st = engine_status(s.control)
                out["systems"][key]["status"] = {
                    k: st.get(k) for k in ("robustness", "generation", "counters", "replicas")
                }
                if st.get("robustness") != "healthy":
                    print(f"WARNING: {key} ended {st.get('robustness')}: {st.get('replicas')}")
        started.stop_all()  # stop cleanly now: cProfile writes its files on exit
        for s in live.values():
            if s.profile and os.path.exists(s.profile):
                print_profile(s.profile)
    out["elapsed_s"] = time.perf_counter() - t_start
    out["loadavg_at_end"] = list(os.getloadavg())
    out["ceph_anchor"] = method.CEPH_ANCHOR
    out["targets"] = check_targets(out)
    return out


# --- repeated runs, baselines -------------------------------------------------------------
def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures for one workload over its repeated runs: every number the
    median of the runs', and the spread of ops/s; the runs themselves under ``runs``."""
    med: dict[str, Any] = {}
    for k, v in runs[0].items():
        if isinstance(v, int | float):
            med[k] = method.spread([r[k] for r in runs])["median"]
        elif isinstance(v, dict):  # per-process CPU
            med[k] = {n: method.spread([r[k][n] for r in runs])["median"] for n in v}
    med["ops_spread"] = method.spread([r["ops_per_s"] for r in runs])
    keep = ("ops_per_s", "lat_p99_us", "cpu_us_per_op", "load1")
    med["runs"] = [{k: r[k] for k in keep if k in r} for r in runs]
    return med


def judge(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per workload: are the baselines (local file, nbdkit) in band? (``method.band_check``)."""
    out = {}
    for wk, per in runs.items():
        figures = {k: [r["ops_per_s"] for r in per[k]] for k in ("local", "nbdkit") if k in per}
        v = method.band_check(figures)
        out[wk] = {"valid": v.valid, "reasons": v.reasons}
    return out


def vs_ceph(workload: str, results: dict[str, dict[str, Any]]) -> None:
    """The ratio to Ceph RBD's recorded figure (method.CEPH_ANCHOR), for its workload."""
    if workload != method.CEPH_ANCHOR["workload"]:
        return
    for r in results.values():
        r["ops_vs_ceph"] = r["ops_per_s"] / method.CEPH_ANCHOR["iops"]


def run_stopping(
    run: Callable[[argparse.Namespace, Started], dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """``run(args, started)``, then every process it started stopped, also on SIGTERM,
    SIGINT or SIGHUP."""
    started = Started()

    def on_signal(signum: int, frame: Any) -> None:
        print(f"\n{signal.Signals(signum).name}: stopping every process started", file=sys.stderr)
        raise SystemExit(128 + signum)

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        return run(args, started)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        started.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per run (10)")
    ap.add_argument("--ramp", type=float, default=2, help="seconds before measuring (2)")
    ap.add_argument("--size", default="2GiB", help="of every file and volume (2GiB)")
    ap.add_argument("--dir", default=None, help="where the files live (default: a temp dir)")
    ap.add_argument("--json", default=DEFAULT_JSON, help=f"results (default {DEFAULT_JSON})")
    ap.add_argument("--systems", default=None, help=f"comma-separated subset of {SYSTEMS}")
    ap.add_argument("--workloads", default=None, help="comma-separated subset of the keys")
    ap.add_argument("--transport", choices=["tcp", "unix"], default="tcp", help="NBD over (tcp)")
    ap.add_argument(
        "--local-link",
        choices=["unix", "tcp"],
        default="unix",
        help="engine-1/engine-3: the local replica over its server's unix socket, as the "
        "agent runs engines (unix), or over loopback TCP like the others (tcp)",
    )
    ap.add_argument("--fsync", type=int, default=0, help="writes: FLUSH every N writes (0: none)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of every workload (3): medians"
    )
    ap.add_argument("--profile", default=None, help="cProfile the cargohold servers into DIR")
    ap.add_argument("--profiler", choices=["cprofile", "pyinstrument"], default="cprofile")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    ap.add_argument("--render", default=None, help="print the markdown of a saved JSON; no run")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            print(markdown(json.load(f)))
        return

    out = run_stopping(run, args)
    if out["targets"]:
        print("\nissue 6 targets (ratios to nbdkit, same run):")
        for t in out["targets"]:
            what = "p99 latency" if t["how"] == "max" else "IOPS"
            what = "MB/s" if t["workload"].startswith("seq") else what
            op = "<=" if t["how"] == "max" else ">="
            verdict = "met" if t["met"] else "MISSED"
            verdict = verdict if t.get("valid", True) else "INVALID (baseline out of band)"
            print(
                f"  {t['workload']:18} {t['system']:9} {what:11} {t['ratio']:5.2f} "
                f"(target {op} {t['bound']:.2f}): {verdict}"
            )
    for wk, v in out.get("validity", {}).items():
        if not v["valid"]:
            print(f"\nINVALID {wk}: the baselines are out of band; its ratios are no result:")
            for why in v["reasons"]:
                print(f"  {why}")
    if args.markdown:
        print("\n" + markdown(out))
    print(f"\ntotal {out['elapsed_s']:.0f} s")
    if args.json:
        method.save_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
