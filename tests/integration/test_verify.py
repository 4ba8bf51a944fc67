"""``cargohold verify`` against real NBD servers: our ``nbd-serve``, nbdkit (a C reference
server, corrupted behind the checker's back) and a 3-replica engine killed with SIGKILL
mid-workload and restarted at a higher epoch."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.verify import payload as P
from cargohold.verify.checker import RULE_ACKED, RULE_FLUSHED, check_volume
from cargohold.verify.client import Pool
from cargohold.verify.history import History
from cargohold.verify.workload import WorkloadSpec, run_workload
from tests.support.engine import EngineProc
from tests.support.nbd_server import NBDProc
from tests.support.processes import ROOT


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cargohold", "verify", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_a_clean_run_against_nbd_serve_has_no_violations(tmp_path):
    srv = NBDProc(str(tmp_path / "vol"), size="32MiB", name="vol").start()
    try:
        hist = tmp_path / "run.jsonl"
        p = cli("run", srv.uri, "--yes", "--seconds", "2", "--history", str(hist), "-o", "json")
        assert p.returncode == 0, p.stdout + p.stderr
        out = json.loads(p.stdout)
        assert out["ok"] and out["violations_total"] == 0 and out["rule"] == "acked"
        assert out["history"]["writes_acked"] > 100 and out["history"]["flushes_acked"] > 0
        assert out["history"]["reads_checked"] > 0 and out["blocks_checked"] == 8192
        # the saved history checks again, later, from another process
        p = cli("check", srv.uri, "--history", str(hist), "-o", "json")
        assert p.returncode == 0, p.stdout + p.stderr
        assert json.loads(p.stdout)["history"]["writes"] == out["history"]["writes"]
        p = cli("check", srv.uri, "--history", str(tmp_path / "missing.jsonl"))
        assert p.returncode == 3 and "missing.jsonl" in p.stderr
    finally:
        srv.stop()


@pytest.fixture
def nbdkit(tmp_path):
    if shutil.which("nbdkit") is None:
        pytest.skip("nbdkit not installed")
    sock = tmp_path / "nbdkit.sock"
    log = open(tmp_path / "nbdkit.log", "w")
    proc = subprocess.Popen(
        ["nbdkit", "-f", "-U", str(sock), "memory", "16M"], stdout=log, stderr=log
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "nbdkit did not start"
        time.sleep(0.02)
    yield f"nbd+unix:///?socket={sock}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    log.close()


def test_corruption_behind_the_checkers_back_is_caught(nbdkit, tmp_path):
    hist = tmp_path / "run.jsonl"
    spec = WorkloadSpec(seconds=None, writes=300, nblocks=1024, hot_blocks=16, seed=77)
    h = asyncio.run(run_workload(nbdkit, spec, connections=3, history_path=str(hist)))
    assert h.counts()["writes_acked"] > 100 and not h.read_violations

    async def tamper_and_check() -> tuple:
        pool = await Pool.connect(nbdkit, 2)
        try:
            clean = await check_volume(pool, h, RULE_ACKED)
            # a block written at least twice: put back an older payload of it
            by_block: dict[int, list[int]] = {}
            for seq in range(1, h.writes + 1):
                for b in range(h.w_block[seq], h.w_block[seq] + h.w_n[seq]):
                    by_block.setdefault(b, []).append(seq)
            stale_block, seqs = next((b, s) for b, s in sorted(by_block.items()) if len(s) >= 3)
            old = seqs[0]
            data = P.encode(h.run, h.w_writer[old], old, h.w_block[old], h.w_n[old])
            k = stale_block - h.w_block[old]
            await pool.conns[1].write(
                stale_block * BLOCK_SIZE, data[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
            )
            garbage_block = max(by_block)
            await pool.conns[1].write(garbage_block * BLOCK_SIZE, os.urandom(BLOCK_SIZE))
            untouched = next(b for b in range(1023, 0, -1) if b not in by_block)
            forged = P.encode(h.run, 0, h.writes + 5, untouched, 1)  # never issued
            await pool.conns[1].write(untouched * BLOCK_SIZE, forged)
            await pool.conns[1].flush()
            return (
                clean,
                await check_volume(pool, h, RULE_FLUSHED),
                stale_block,
                (
                    garbage_block,
                    untouched,
                    old,
                ),
            )
        finally:
            await pool.close()

    clean, r, stale_block, (garbage_block, untouched, old) = asyncio.run(tamper_and_check())
    assert clean.ok and clean.violations_total == 0
    got = {v.block: v.reason for v in r.violations}
    assert got == {stale_block: "stale", garbage_block: "garbage", untouched: "never-issued"}
    stale = next(v for v in r.violations if v.block == stale_block)
    assert stale.observed["write"] == old and stale.superseded_by is not None
    assert all(e == "zeros" or e["write"] != old for e in stale.expected)
    # the CLI says the same, and fails
    p = cli("check", nbdkit, "--history", str(hist), "-o", "json")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert {v["block"] for v in out["violations"]} == {stale_block, garbage_block, untouched}
    p = cli("check", nbdkit, "--history", str(hist))
    assert p.returncode == 1 and "VIOLATIONS" in p.stdout and str(stale_block) in p.stdout


def test_acknowledged_flushed_writes_survive_an_engine_sigkill(tmp_path):
    from tests.support.replica_cluster import ReplicaCluster

    size = 32 * MIB
    replicas = ReplicaCluster(tmp_path, size)
    engines: list[EngineProc] = []
    try:
        e1 = EngineProc("vol", replicas.specs(), 1, str(tmp_path), local="r0").start()
        engines.append(e1)
        hist = tmp_path / "run.jsonl"
        spec = WorkloadSpec(seconds=30, nblocks=size // BLOCK_SIZE, seed=5, flush_ratio=0.05)

        async def workload_then_kill() -> History:
            task = asyncio.ensure_future(run_workload(e1.uri, spec, 4, str(hist)))
            await asyncio.sleep(2.0)
            await asyncio.to_thread(e1.kill, signal.SIGKILL)  # writes in flight
            return await asyncio.wait_for(task, 30)

        h = asyncio.run(workload_then_kill())
        c = h.counts()
        assert c["writes_acked"] > 50 and c["flushes_acked"] > 0, c
        assert c["writes_lost"] > 0, c  # the kill caught writes in flight
        assert h.ended == "every connection lost" and not h.read_violations
        e2 = EngineProc("vol", replicas.specs(), 2, str(tmp_path), local="r0").start()
        engines.append(e2)

        async def check() -> tuple:
            pool = await Pool.connect(e2.uri, 4)
            try:
                return await check_volume(pool, History.load(str(hist)), RULE_FLUSHED)
            finally:
                await pool.close()

        r = asyncio.run(check())
        assert r.ok, r.to_json()
        assert r.history["writes"] == c["writes"] and r.blocks_written > 100
        p = cli("check", e2.uri, "--history", str(hist), "-o", "json")
        assert p.returncode == 0 and json.loads(p.stdout)["ok"], p.stdout + p.stderr
    finally:
        for e in engines:
            e.kill()
        replicas.close()
