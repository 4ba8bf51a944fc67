"""A machine crash (power loss) of replica nodes, simulated faithfully with real processes
and real files, and no hook in the product (docs/reliability.md "Power loss, simulated").

Real components: three ``cargohold replica-server`` processes and ``cargohold engine``
processes on loopback, the project's NBD client (``cargohold.verify.client``) writing
traceable blocks through the engine's export, ``ReplicaClient`` reading each replica
directly. The simulation (tests/support/power_loss.py): the durable image D of a replica
directory is copied while its processes are stopped right after a FLUSH's reply; more is
written without a FLUSH and acknowledged; the processes are SIGKILLed; every 4 KiB page
that differs between D and the live files is taken from one of the two at random (seeded,
different per replica; or, "coherent", each data page with its block-map record's page,
so that no block fails its checksum); the servers come back in a new boot (another boot
id, in a mount namespace of their own).

- ``test_every_replica_loses_power``: the whole volume's nodes lose power. A new engine
  (a higher epoch, ``--require`` what the manager recorded from the old one) must start;
  every block reads as its flushed value or a value written after the flush (an I/O error
  only for a block that fails its checksum on every replica allowed to serve it); with no
  torn block ("coherent"), as the newest write any replica kept (the start's per-block
  merge; taking every block from one source lost 222-502 such blocks per seed); the
  replicas converge (SHA-256 of each, read directly); a new write and FLUSH reach all.
- ``test_every_replica_loses_power_above_a_snapshot``: the same above a snapshot, where a
  torn block whose data page is a hole is *lost* (fails its check): the rebuilds from the
  start's source must end, no block read wrong, and after a scrub the replicas converge.
- ``test_one_replica_loses_power``: one node loses power while the engine goes on with the
  others (more acknowledged writes meanwhile); back in a new boot, the replica is rebuilt
  and must then equal the others.

Block values: block ``b`` written by write ``seq`` holds ``pattern(b, seq)``
(tests/probe/support.py), so every value read back names the write that put it there.
The seeds are fixed and chosen by where the head map's header page (complete-through)
comes from: L on some replicas, on all, on none (a header from L names mutations whose
pages may have stayed in D: what version 1 of the store did not survive,
docs/formats/replica-store.md "Writes, reads and crashes"). A torn block (its record page
and its data page from different moments) is adopted at the replica server's start as its
data page holds it (docs/formats/replica-store.md, "Machine crashes"): with no snapshot in
these volumes none stays unreadable, so every block must read as a value it may hold.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import CargoholdError
from cargohold.replica.client import ReplicaClient
from cargohold.store import format as fmt
from cargohold.verify.client import Connection
from tests.probe.support import identify, patterns
from tests.support.engine import EngineProc
from tests.support.polling import wait_until
from tests.support.power_loss import (
    Crash,
    boot_id_of,
    crash,
    durable_copy,
    failing_blocks,
    frozen,
    new_boot,
    new_boot_unavailable,
)
from tests.support.processes import ServerProc
from tests.support.replica_cluster import ReplicaCluster

pytestmark = pytest.mark.root

SIZE = 16 * MIB
BLOCKS = SIZE // BLOCK_SIZE
FLUSHED = 2048  # blocks 0..2047 hold write #1 at the FLUSH; the rest are holes (zeros)
DEADLINE = 60.0  # seconds for the replicas to converge / a rebuild to end


# --- the writes --------------------------------------------------------------------------
def plan(seed: int, first_seq: int, n: int) -> list[tuple[int, int, int]]:
    """``n`` writes (seq, first block, blocks), 16-48 blocks each (about 4 MiB for 32),
    over the flushed part and the holes alike, overlapping one another."""
    rnd = random.Random(f"writes/{seed}/{first_seq}")
    out = []
    for seq in range(first_seq, first_seq + n):
        nblocks = rnd.randrange(16, 49)
        out.append((seq, rnd.randrange(BLOCKS - nblocks), nblocks))
    return out


async def _write(uri: str, writes: list[tuple[int, int, int]], flush: bool) -> None:
    """Each write in turn, its reply awaited (so the last one to a block is the last
    sent); then a FLUSH if asked."""
    c = await Connection.connect(uri)
    try:
        for seq, first, nblocks in writes:
            await c.write(first * BLOCK_SIZE, patterns(first, nblocks, seq))
        if flush:
            await c.flush()
    finally:
        await c.close()


def write(uri: str, writes: list[tuple[int, int, int]], flush: bool) -> None:
    asyncio.run(_write(uri, writes, flush))


async def _read_blocks(uri: str) -> dict[int, int | str]:
    """Every block of the volume read through the engine: the write it names (0: zeros),
    a description of anything else, or "EIO: ..." for a block the engine could not read."""
    out: dict[int, int | str] = {}
    c = await Connection.connect(uri)
    step = 64  # blocks per read; a failed read is read again block by block
    try:
        for first in range(0, BLOCKS, step):
            try:
                data = await c.read(first * BLOCK_SIZE, step * BLOCK_SIZE)
            except CargoholdError:
                for b in range(first, first + step):
                    try:
                        one = await c.read(b * BLOCK_SIZE, BLOCK_SIZE)
                        out[b] = identify(b, one)
                    except CargoholdError as e:
                        out[b] = f"EIO: {e}"
                continue
            for i in range(step):
                out[first + i] = identify(first + i, data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
    finally:
        await c.close()
    return out


def read_blocks(uri: str) -> dict[int, int | str]:
    return asyncio.run(_read_blocks(uri))


# --- the replicas, read directly ---------------------------------------------------------
def digests(cluster: ReplicaCluster, epoch: int) -> list[str]:
    """SHA-256 of each replica read from its server (every block checksum-verified), or
    "error: ..." for a replica that could not be read whole."""
    out = []
    for i in range(len(cluster.servers)):
        try:
            out.append(cluster.digest(i, f"r{i}", epoch, SIZE))
        except (CargoholdError, OSError) as e:
            out.append(f"error: {type(e).__name__}: {e}")
    return out


def newest_values(cluster: ReplicaCluster, epoch: int) -> dict[int, int | str]:
    """Per block, the newest write any replica holds (read directly, before an engine
    starts): what the merge of a start in doubt must leave when no block is torn."""

    async def one(i: int) -> dict[int, int | str]:
        c = await ReplicaClient.connect("127.0.0.1", cluster.servers[i].port)
        out: dict[int, int | str] = {}
        try:
            await c.open(f"r{i}", epoch)
            for first in range(0, BLOCKS, 1024):
                data = await c.read(first * BLOCK_SIZE, 1024 * BLOCK_SIZE)
                for k in range(1024):
                    out[first + k] = identify(
                        first + k, data[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
                    )
        finally:
            await c.close()
        return out

    per = [asyncio.run(one(i)) for i in range(len(cluster.servers))]
    return {b: max(p[b] for p in per) for b in range(BLOCKS)}  # type: ignore[type-var]


def converged(cluster: ReplicaCluster, epoch: int) -> list[str] | None:
    got = digests(cluster, epoch)
    return got if len(set(got)) == 1 and not got[0].startswith("error") else None


# --- the crash ---------------------------------------------------------------------------
class Machines:
    """The replica servers of a ``ReplicaCluster`` as machines that can lose power."""

    def __init__(self, cluster: ReplicaCluster, root: str) -> None:
        self.cluster = cluster
        self.root = root

    def replica_dir(self, i: int) -> str:
        return os.path.join(self.cluster.servers[i].disks[0], "replicas", f"r{i}")

    def head(self, i: int) -> int:
        with open(os.path.join(self.replica_dir(i), "replica.meta"), "rb") as f:
            return int(fmt.decode_meta(f.read(), "replica.meta")["head"])

    def durable(self, i: int) -> str:
        return os.path.join(self.root, f"durable-r{i}")

    def take_durable(self, which: list[int], also: list[int]) -> None:
        """D of each replica in ``which``: copied with its server and the ``also`` PIDs
        (the engine) stopped, right after a FLUSH's reply."""
        with frozen([self.cluster.servers[i].pid for i in which] + also):
            for i in which:
                durable_copy(self.replica_dir(i), self.durable(i))

    def lose_power(self, i: int, seed: str, coherent: bool = False) -> tuple[Crash, set[int]]:
        """Server ``i`` (already SIGKILLed): its directory becomes a crashed image; -> the
        choices made and the blocks that now fail their checksum on that replica."""
        assert not self.cluster.servers[i].alive()
        got = crash(self.durable(i), self.replica_dir(i), f"{seed}/r{i}", coherent)
        return got, failing_blocks(self.replica_dir(i), self.head(i))

    def boot(self, i: int) -> ServerProc:
        """Start server ``i`` again in a new boot; check that it sees another boot id."""
        old = self.cluster.servers[i]
        s = ServerProc(old.disks, log_dir=self.root, prefix=new_boot(self.root))
        self.cluster.all.append(s)
        self.cluster.servers[i] = s.start()
        with open("/proc/sys/kernel/random/boot_id") as f:
            assert boot_id_of(s.pid) != f.read().strip(), "the server is not in a new boot"
        return s


@pytest.fixture
def machines(tmp_path):
    why = new_boot_unavailable()
    if why:
        pytest.skip(why)
    made: list[ReplicaCluster] = []

    def make() -> Machines:
        c = ReplicaCluster(tmp_path, SIZE, 3)
        made.append(c)
        return Machines(c, str(tmp_path))

    yield make
    for c in made:
        c.close()


@pytest.fixture
def engines(tmp_path):
    started: list[EngineProc] = []

    def make(specs: list[str], epoch: int, *extra: str) -> EngineProc:
        e = EngineProc("vol", specs, epoch, str(tmp_path), extra=list(extra))
        started.append(e)
        return e.start()

    yield make
    for e in started:
        e.kill()


def _recorded(e: EngineProc) -> tuple[int, int]:
    """What the manager records from a running engine and passes to the next as
    ``--require`` (cargohold/engine/volume.py ``current``)."""
    st = e.ctl(op="status")
    return st["current_epoch"], st["current_generation"]


def _allowed(after: list[tuple[int, int, int]]) -> dict[int, set[int]]:
    """Per block, the values a power loss may leave: the flushed one and every write after."""
    ok = {b: {1 if b < FLUSHED else 0} for b in range(BLOCKS)}
    for seq, first, nblocks in after:
        for b in range(first, first + nblocks):
            ok[b].add(seq)
    return ok


def _final(writes: list[tuple[int, int, int]]) -> dict[int, int]:
    """Per block, the value of the last write to it (all acknowledged, in order)."""
    out = {b: 1 if b < FLUSHED else 0 for b in range(BLOCKS)}
    for seq, first, nblocks in writes:
        for b in range(first, first + nblocks):
            out[b] = seq
    return out


def _new_write_everywhere(e: EngineProc, cluster: ReplicaCluster, epoch: int) -> None:
    """A new write + FLUSH succeeds and reads back the same on every replica (directly)."""
    write(e.uri, [(9999, 100, 64)], flush=True)
    want = patterns(100, 64, 9999)

    async def one(i: int) -> bytes:
        c = await ReplicaClient.connect("127.0.0.1", cluster.servers[i].port)
        try:
            await c.open(f"r{i}", epoch)
            return bytes(await c.read(100 * BLOCK_SIZE, 64 * BLOCK_SIZE))
        finally:
            await c.close()

    for i in range(3):
        assert asyncio.run(one(i)) == want, f"r{i} lacks the new write"


# --- every node loses power --------------------------------------------------------------
@pytest.mark.parametrize(
    ("seed", "pages"),
    [
        # the head map's header page from L on r0 and r2, on all three, on none
        (4, "coherent"),
        (5, "coherent"),
        (13, "coherent"),
        (4, "torn"),
        (5, "torn"),
        (13, "torn"),
    ],
)
def test_every_replica_loses_power(machines, engines, seed, pages):
    """``pages``: "torn", every differing page drawn on its own (so hundreds of blocks per
    replica fail their checksum); "coherent", each data page goes with its record's page
    (none fails), which still leaves the replicas different from one another. The torn
    blocks are adopted when the servers start again: none may read as an error."""
    m = machines()
    c = m.cluster
    e1 = engines(c.specs(), 1)
    write(e1.uri, [(1, 0, FLUSHED)], flush=True)
    m.take_durable([0, 1, 2], also=[e1.pid])
    after = plan(seed, 2, 32)
    write(e1.uri, after, flush=False)  # acknowledged, not flushed
    require = _recorded(e1)
    e1.kill()
    for i in range(3):
        c.kill(i)
    crashes = [m.lose_power(i, str(seed), pages == "coherent") for i in range(3)]
    headers = {f"r{i}": x.header_from(m.head(i)) for i, (x, _) in enumerate(crashes)}
    failing = {f"r{i}": sorted(bad) for i, (_, bad) in enumerate(crashes)}
    story = (
        f"seed {seed}, {pages}: header pages from {headers}; blocks failing their checksum: "
        f"{ {r: len(b) for r, b in failing.items()} }; require {require}; "
        f"pages chosen {[x.summary() for x, _ in crashes]}"
    )
    if pages == "coherent":
        assert not any(failing.values()), story
    else:
        assert all(failing.values()), story
    for i in range(3):
        m.boot(i)
    newest = newest_values(c, 1) if pages == "coherent" else {}

    # a new engine starts, as the manager would start it
    try:
        e2 = engines(c.specs(), 2, "--require", f"{require[0]}:{require[1]}")
    except RuntimeError as err:
        pytest.fail(f"the new engine did not start ({story}):\n{err}")
    st = e2.ctl(op="status")
    serving = [r["id"] for r in st["replicas"] if r["mode"] == "RW"]
    assert serving, f"no replica serves reads ({story}): {st}"

    # every block reads as a value it may hold (never an I/O error: torn blocks are adopted)
    allowed = _allowed(after)
    got = read_blocks(e2.uri)
    bad = {b: v for b, v in got.items() if v not in allowed[b]}
    assert not bad, f"{len(bad)} block(s) read wrong ({story}), e.g. {sorted(bad.items())[:5]}"
    # no block torn: each block is the newest write any replica kept (the merge), not only
    # the source's (before the merge: every block from one replica, newer ones elsewhere lost)
    older = {b: (v, newest[b]) for b, v in got.items() if newest and v != newest[b]}
    merged = st["counters"].get("merged_blocks", 0)
    assert not older, (
        f"{len(older)} block(s) older than a replica held, e.g. {sorted(older.items())[:5]} ({story}; merged {merged})"
    )

    # the replicas converge (a replica out of the write set stays out: no manager here)
    last: list[str] = []

    def same() -> list[str] | None:
        nonlocal last
        out = [r for r in e2.ctl(op="status")["replicas"] if r["mode"] == "ERR"]
        assert not out, f"replica(s) dropped, the replicas cannot converge ({story}): {out}"
        last = digests(c, 2)
        return last if len(set(last)) == 1 and not last[0].startswith("error") else None

    try:
        wait_until(same, DEADLINE, "the replicas to converge", 0.5)
    except AssertionError as err:
        pytest.fail(
            f"the replicas did not converge ({err}; {story}): {last}; "
            f"engine: {e2.ctl(op='status')['replicas']}"
        )
    again = read_blocks(e2.uri)
    assert all(v in allowed[b] for b, v in again.items()), (
        f"a block changed to a bad value ({story})"
    )
    _new_write_everywhere(e2, c, 2)
    wait_until(lambda: converged(c, 2), DEADLINE, "the replicas to agree after a new write", 0.5)
    assert "Traceback" not in e2.output(), e2.output()


# --- one node loses power ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [4, 13])  # r0's head map header from live, then from D
def test_one_replica_loses_power(machines, engines, seed):
    m = machines()
    c = m.cluster
    e = engines(c.specs(), 1)
    write(e.uri, [(1, 0, FLUSHED)], flush=True)
    m.take_durable([0], also=[e.pid])
    after = plan(seed, 2, 32)
    write(e.uri, after, flush=False)  # acknowledged by all three, not flushed
    c.kill(0)
    meanwhile = plan(seed, 100, 8)  # acknowledged by r1 and r2 while r0 is down
    write(e.uri, meanwhile, flush=True)
    e.wait_for(lambda s: s["replicas"][0]["mode"] == "ERR", 30, "r0 to be dropped")
    x, bad = m.lose_power(0, str(seed))
    story = (
        f"seed {seed}: r0's header page from {x.header_from(m.head(0))}; "
        f"{len(bad)} block(s) failing their checksum; pages chosen {x.summary()}"
    )
    m.boot(0)
    assert e.ctl(op="add-replica", replica=c.spec(0))["ok"]
    try:
        e.wait_for(lambda s: s["robustness"] == "healthy", DEADLINE, "the rebuild")
    except AssertionError as err:
        pytest.fail(f"r0 was not rebuilt ({story}): {err}")
    got = digests(c, 1)
    assert len(set(got)) == 1 and not got[0].startswith("error"), (
        f"the rebuilt replica differs from the others ({story}): {got}"
    )
    want = _final([(1, 0, FLUSHED), *after, *meanwhile])
    read = read_blocks(e.uri)
    wrong = {b: v for b, v in read.items() if v != want[b]}
    assert not wrong, (
        f"{len(wrong)} block(s) read wrong ({story}), e.g. {sorted(wrong.items())[:5]}"
    )
    _new_write_everywhere(e, c, 1)
    assert "Traceback" not in e.output(), e.output()


# --- every node loses power, the volume above a snapshot --------------------------------
@pytest.mark.parametrize("seed", [4, 5, 13])
def test_every_replica_loses_power_above_a_snapshot(machines, engines, seed):
    """As ``test_every_replica_loses_power`` ("torn"), with a snapshot taken after the
    flushed write: the blocks written after it go into a head above the snapshot's layer,
    so a torn one whose data page is a hole is *lost* (its value unknown: it fails its
    check). On the source of the start in doubt such a block made the rebuilds' EXPORT fail
    for ever; now a target's copy repairs it when it is the value the source's record names,
    and a block no replica vouches for stays failing (docs/reliability.md, "A lost block on
    a rebuild's source"). Every block reads as a value it may hold or, only where every
    replica lost it, as an I/O error; the replicas converge."""
    m = machines()
    c = m.cluster
    e1 = engines(c.specs(), 1)
    write(e1.uri, [(1, 0, FLUSHED)], flush=True)
    assert e1.ctl(op="snapshot", name="s")["snapshot"]
    write(e1.uri, [], flush=True)
    m.take_durable([0, 1, 2], also=[e1.pid])
    after = plan(seed, 2, 32)
    write(e1.uri, after, flush=False)
    require = _recorded(e1)
    e1.kill()
    for i in range(3):
        c.kill(i)
    crashes = [m.lose_power(i, str(seed)) for i in range(3)]
    for i in range(3):
        m.boot(i)
    lost = {}
    for i in range(3):
        out = c.servers[i].output()
        lost[f"r{i}"] = out[out.find("torn blocks adopted") - 12 :].split("\n")[0]
    story = f"seed {seed}: {lost}; failing before the open {[len(b) for _, b in crashes]}"
    e2 = engines(c.specs(), 2, "--require", f"{require[0]}:{require[1]}")
    last: list[str] = []

    def settled() -> list[str] | None:
        nonlocal last
        st = e2.ctl(op="status")["replicas"]
        last = [f"{r['id']} {r['mode']} {r.get('error', '')}" for r in st]
        return last if all(r["mode"] in ("RW", "ERR") for r in st) else None

    wait_until(settled, DEADLINE, "the rebuilds to end", 0.5)
    counters = e2.ctl(op="status").get("counters", {})
    assert all(" RW" in x for x in last), f"a rebuild failed ({story}): {last}; {counters}"
    story += f"; counters {counters}"
    assert counters.get("rebuild_source_repaired_blocks", 0) > 0, story  # the case is made
    allowed = _allowed(after)
    got = read_blocks(e2.uri)
    bad = {b: v for b, v in got.items() if v not in allowed[b] and not str(v).startswith("EIO")}
    assert not bad, f"{len(bad)} block(s) read wrong ({story}), e.g. {sorted(bad.items())[:5]}"
    eio = [b for b, v in got.items() if str(v).startswith("EIO")]
    assert len(eio) <= counters.get("rebuild_unreadable_blocks", 0), (eio[:5], story)
    if not eio:  # (a block failing everywhere fails the digest read too)
        # lost blocks below the generation a rebuild starts from are not copied (their
        # records agree): a scrub repairs them from a replica that has them
        scrub = e2.ctl(op="scrub", wait=True)["scrub"]
        try:
            wait_until(lambda: converged(c, 2), DEADLINE, "the replicas to converge", 0.5)
        except AssertionError as err:
            pytest.fail(f"not converged ({err}; {story}): {digests(c, 2)}; scrub {scrub}")
    assert "Traceback" not in e2.output(), e2.output()
