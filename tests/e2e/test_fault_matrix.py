"""Issue 7's fault matrix (tests/e2e/fault_matrix.py, docs/reliability.md).

One LocalCluster in network namespaces (3 nodes, SQLite) serves every scenario of the
default run, each on a fresh volume; node-3's disk is a small loop-mounted ext4 (the disk
full scenario). The engines' replica timeout is 3 s and rebuilds are throttled to 4 MiB/s
(so that a rebuild lasts long enough to crash in it); the manager marks a node down after
2 s without a heartbeat. The etcd variant of "the control plane dies" runs in a cluster of
its own. ``soak`` (``-m soak``; ``CARGOHOLD_SOAK_SECONDS`` / ``CARGOHOLD_SOAK_COUNT``,
``CARGOHOLD_SOAK_BACKEND``)
runs a randomized schedule of the scenarios and prints the SoakSummary table.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from collections.abc import Iterator

import pytest

from cargohold.control.client import ManagerClient
from cargohold.launcher.cluster import LocalCluster
from cargohold.verify.report import SoakSummary
from tests import netns
from tests.e2e import fault_matrix as fm
from tests.e2e.test_cluster_failover import keep_logs
from tests.probe.engine_support import loop_ext4, loop_ext4_unavailable

pytestmark = pytest.mark.root

ENV = {
    "CARGOHOLD_MANAGER_NODE_DOWN_AFTER": "2",
    "CARGOHOLD_ENGINE_REPLICA_TIMEOUT": "3",
    "CARGOHOLD_ENGINE_REBUILD_BANDWIDTH": str(4 << 20),
    # scenario 9: hold a snapshot create/delete between the first replica and the others
    # (cargohold/engine/faults.py) so that the engine can be killed in the middle of it
    "CARGOHOLD_FAULT_PAUSE_SNAPSHOT": str(fm.SNAPSHOT_PAUSE),
    # scrubs run when asked for (scenario 8), not on their own in the middle of another
    "CARGOHOLD_ENGINE_SCRUB_INTERVAL_HOURS": "0",
    # deleted replicas leave the trash within a second: node-3's disk is small, and every
    # scenario deletes its volume
    "CARGOHOLD_AGENT_TRASH_GRACE": "0",
}
SMALL_DISK = 160 << 20


def _need() -> None:
    why = netns.available()
    if why:
        pytest.skip(f"the fault matrix runs nodes in network namespaces: {why}")
    for tool in ("tc", "fallocate"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


@contextlib.contextmanager
def matrix_cluster(root, backend: str = "sqlite", small_disk: bool = True) -> Iterator[fm.Env]:
    mp = pytest.MonkeyPatch()
    for k, v in ENV.items():
        mp.setenv(k, v)
    c = LocalCluster.create(str(root / f"c-{backend}"), nodes=3, netns=True, backend=backend)
    small = None
    with contextlib.ExitStack() as stack:
        try:
            if small_disk and not loop_ext4_unavailable():
                (root / "small").mkdir(exist_ok=True)
                mnt = stack.enter_context(loop_ext4(root / "small", SMALL_DISK))
                disk = os.path.join(c.nodes["node-3"].dir, "disk-0")
                os.makedirs(os.path.dirname(disk), exist_ok=True)
                os.symlink(str(mnt), disk)
                small = "node-3"
            c.up(timeout=120)
            with ManagerClient(c.api) as api:
                work = root / f"histories-{backend}"
                work.mkdir(exist_ok=True)
                yield fm.Env(
                    c,
                    api,
                    str(work),
                    replica_timeout=3.0,
                    node_down_after=2.0,
                    rebuild_bandwidth=float(4 << 20),
                    small_disk_node=small,
                )
        finally:
            with contextlib.suppress(OSError):
                keep_logs(c, str(root / f"logs-{backend}"))
            c.down(purge=True, grace=5.0)
            mp.undo()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[fm.Env]:
    _need()
    with matrix_cluster(tmp_path_factory.mktemp("matrix")) as e:
        yield e


SUMMARY = SoakSummary()


def run(env: fm.Env, name: str) -> fm.Outcome:
    t = time.monotonic()
    out = fm.SCENARIOS[name](env)
    took = time.monotonic() - t
    if env.encrypted:
        out.name += " [encrypted]"
    if out.result is not None:
        SUMMARY.add(out.name, out.summary_result(), out.converge_seconds, out.detail)
    print(
        f"\n{out.name}: {out.writes} writes checked, {out.violations} violations, "
        f"converged in {out.converge_seconds or 0:.1f} s from {out.converge_from} "
        f"(bound {out.converge_bound or 0:.1f} s), replicas equal {out.digests_equal}; "
        f"{out.detail} (scenario {took:.0f} s); failed: {out.failed}"
    )
    return out


@pytest.mark.parametrize("name", list(fm.SCENARIOS))
def test_fault_scenario(env, name):
    out = run(env, name)
    if out.skipped:
        pytest.skip(out.skipped)
    bad = fm.problems(out)
    assert not bad, (bad, out.notes)


# issue 19: the matrix on encrypted volumes, the three scenarios that cover writes in
# flight at a crash (a replica server, then the engine, SIGKILLed under load), a rebuild
# (delta, of the killed server's replica; full, of the forked one) and a failover (the
# engine's node cut off, the volume taken over elsewhere, the old engine fenced)
ENCRYPTED = ("replica-server-kill", "engine-kill-reattach", "engine-node-failover")


@pytest.mark.long  # ~1 min a scenario here
@pytest.mark.parametrize("name", ENCRYPTED)
def test_fault_scenario_encrypted(env, name):
    env.encrypted = True
    try:
        out = run(env, name)
    finally:
        env.encrypted = False
    bad = fm.problems(out)
    assert not bad, (bad, out.notes)


@pytest.mark.long
def test_control_plane_dies_on_etcd(tmp_path):
    _need()
    if not shutil.which("etcd"):
        pytest.skip("needs etcd (Debian: etcd-server)")
    with matrix_cluster(tmp_path, backend="etcd", small_disk=False) as e:
        out = run(e, "control-plane-kill")
    assert not fm.problems(out), (fm.problems(out), out.notes)


@pytest.mark.long
def test_wrong_state_store_on_etcd(tmp_path):
    """The wrong-state-store mistake with etcd: its key prefix emptied."""
    _need()
    if not shutil.which("etcd"):
        pytest.skip("needs etcd (Debian: etcd-server)")
    with matrix_cluster(tmp_path, backend="etcd", small_disk=False) as e:
        out = run(e, "wrong-state-store")
    assert not fm.problems(out), (fm.problems(out), out.notes)


def _soak_timeout() -> int:
    """pytest-timeout's limit for the soak: its duration and an hour for the last scenario
    and the cluster (0, no limit, when it runs a count of scenarios)."""
    if int(os.environ.get("CARGOHOLD_SOAK_COUNT", "0") or 0):
        return 0
    return int(float(os.environ.get("CARGOHOLD_SOAK_SECONDS", "600"))) + 3600


@pytest.mark.soak
@pytest.mark.timeout(_soak_timeout())
def test_fault_soak(tmp_path):
    """A randomized schedule of scenarios for CARGOHOLD_SOAK_SECONDS (default 600) or
    CARGOHOLD_SOAK_COUNT scenarios, on CARGOHOLD_SOAK_BACKEND's state store (sqlite, the
    default, or etcd); prints the SoakSummary table."""
    _need()
    backend = os.environ.get("CARGOHOLD_SOAK_BACKEND", "sqlite")
    if backend not in ("sqlite", "etcd"):
        pytest.fail(f"CARGOHOLD_SOAK_BACKEND={backend!r}: sqlite or etcd")
    if backend == "etcd" and not shutil.which("etcd"):
        pytest.skip("needs etcd (Debian: etcd-server)")
    seconds = float(os.environ.get("CARGOHOLD_SOAK_SECONDS", "600"))
    count = int(os.environ.get("CARGOHOLD_SOAK_COUNT", "0"))
    seed = int(os.environ.get("CARGOHOLD_SOAK_SEED", str(random.getrandbits(32))))
    rng = random.Random(seed)
    summary = SoakSummary()
    failures = []
    t0 = time.monotonic()
    with matrix_cluster(tmp_path, backend=backend) as e:
        e.rng = rng
        names = [n for n in fm.SCENARIOS if n != "disk-full" or e.small_disk_node]
        i = 0
        while (count and i < count) or (not count and time.monotonic() - t0 < seconds):
            name = rng.choice(names)
            i += 1
            try:
                out = fm.SCENARIOS[name](e)
            except Exception as exc:  # keep going: report it
                failures.append(f"#{i} {name}: {type(exc).__name__}: {exc}")
                continue
            if out.result is not None:
                summary.add(out.name, out.summary_result(), out.converge_seconds, out.detail)
            bad = fm.problems(out)
            if bad:
                failures.append(f"#{i} {name}: {bad}")
    print(f"\nsoak seed {seed} ({backend}), {i} scenarios in {time.monotonic() - t0:.0f} s")
    for f in failures:
        print(f"FAILED {f}")
    summary.render()
    print(summary.to_json())
    assert summary.ok, summary.to_json()
    assert not failures, failures


def teardown_module() -> None:
    if SUMMARY.outcomes:
        SUMMARY.render()
