"""``cargohold demo``: the data plane at work, narrated, on this machine.

Three replica servers stand in for three nodes. A real ext4 filesystem (made with
``mkfs.ext4 -d`` from generated files) is written to three replicas of one volume, a node
is killed with SIGKILL while the volume changes, and its stale replica is brought back with
a *delta* rebuild that copies only the blocks changed since its persisted generation. Then
every file is checked out of the rebuilt replica's filesystem by checksum, the replicas are
compared, bit rot is injected, found by scrub and repaired from a healthy copy.

Until the volume engine lands, this command plays the engine's part (fan-out of writes,
flush, rebuild); the replica servers, stores, wire protocol and fencing are the real ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import typer
from rich.console import Console

from cargohold.cli.main import app
from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import Fenced
from cargohold.replica.client import ReplicaClient
from cargohold.store.base import runs

console = Console(highlight=False)
VOLUME_MIB = 64


def _say(step: str, text: str) -> None:
    console.print(f"[bold cyan]{step}[/bold cyan] {text}")


class _Node:
    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.disk = os.path.join(root, name, "disk")
        os.makedirs(self.disk, exist_ok=True)
        self.log = os.path.join(root, name, "server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "cargohold",
            "replica-server",
            "--disk",
            self.disk,
            "--listen",
            "127.0.0.1:0",
            "--node",
            self.name,
        ]
        with open(self.log, "w") as log:  # a fresh log per start
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.log) as f:
                for line in f.read().splitlines():
                    if "listening on" in line:
                        self.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
                        return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: replica server did not start; see {self.log}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def _make_files(root: str, seed: int, count: int) -> dict[str, str]:
    """Generated files of varied sizes -> {name: sha256}."""
    os.makedirs(root, exist_ok=True)
    rng = __import__("random").Random(seed)
    sums = {}
    for i in range(count):
        name = f"file-{seed}-{i:03d}.bin"
        data = rng.randbytes(rng.choice([1, 3, 17, 64, 300]) * 1024)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def _mkfs(image: str, src: str) -> None:
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "root_owner=0:0",
            "-U",
            "6f0e3c2a-0d1b-4b8e-9d55-3f4ee0c0ffee",
            "-d",
            src,
            image,
            f"{VOLUME_MIB}M",
        ],
        check=True,
        capture_output=True,
        env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"),
    )


async def _write_image(clients: list[ReplicaClient], image: str, prev: bytes | None) -> int:
    """Write the blocks of ``image`` that differ from ``prev`` to every replica (the engine's
    fan-out: a write counts only when all replicas have it) and flush. -> blocks written."""
    with open(image, "rb") as f:
        data = f.read()
    changed = 0
    step = 256 * BLOCK_SIZE
    for off in range(0, len(data), step):
        chunk = data[off : off + step]
        if prev is not None and prev[off : off + step] == chunk:
            continue
        changed += len(chunk) // BLOCK_SIZE
        # blocks of zeros become WRITE_ZEROES (no data stored), the rest plain writes
        zero = ~np.frombuffer(chunk, dtype=np.uint64).reshape(-1, BLOCK_SIZE // 8).any(axis=1)
        for kind in (True, False):
            for a, b in runs(zero == kind):
                o, n = off + a * BLOCK_SIZE, (b - a) * BLOCK_SIZE
                if kind:
                    await asyncio.gather(*(c.write_zeroes(o, n) for c in clients))
                else:
                    piece = memoryview(chunk)[a * BLOCK_SIZE : b * BLOCK_SIZE]
                    await asyncio.gather(*(c.write(o, piece) for c in clients))
    await asyncio.gather(*(c.flush() for c in clients))
    return changed


async def _read_all(c: ReplicaClient, size: int) -> bytes:
    step = 16 * MIB
    return b"".join(
        [bytes(await c.read(off, min(step, size - off))) for off in range(0, size, step)]
    )


def _check_files(image: str, sums: dict[str, str], out: str) -> int:
    os.makedirs(out, exist_ok=True)
    ok = 0
    for name, want in sums.items():
        dest = os.path.join(out, name)
        subprocess.run(
            ["debugfs", "-R", f"dump /{name} {dest}", image], check=True, capture_output=True
        )
        with open(dest, "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != want:
            raise RuntimeError(f"{name}: sha256 {got}, expected {want}")
        ok += 1
    return ok


async def _demo(root: str) -> None:
    size = VOLUME_MIB * MIB
    nodes = [_Node(f"node-{i}", root) for i in (1, 2, 3)]
    try:
        _say("1/8", "Starting three replica servers, one per node (real processes on loopback)")
        for n in nodes:
            n.start()
            console.print(f"      {n.name}: 127.0.0.1:{n.port}, disk {n.disk}")
        clients = [await ReplicaClient.connect("127.0.0.1", n.port) for n in nodes]
        _say("2/8", f"Creating volume 'demo' ({VOLUME_MIB} MiB, thin) with a replica on each node")
        for c in clients:
            await c.create("demo-r", size)
            await c.open("demo-r", epoch=1)
        work = os.path.join(root, "work")
        sums = _make_files(os.path.join(work, "v1"), 1, 40)
        image = os.path.join(work, "fs-v1.img")
        _mkfs(image, os.path.join(work, "v1"))
        n_blocks = await _write_image(clients, image, None)
        st = await clients[0].stats()
        _say(
            "3/8",
            f"Wrote a real ext4 filesystem with {len(sums)} files: {n_blocks} blocks "
            f"to each replica, flushed. Space used on a node: "
            f"{st['allocated_bytes'] / MIB:.1f} MiB of {VOLUME_MIB} MiB (thin).",
        )
        for c in clients:
            await c.snapshot_create("after-v1", {"step": "3"})
        gens = [(await c.info())["generation"] for c in clients]
        _say("4/8", f"Snapshot 'after-v1' on all replicas (no data copied). Generations: {gens}")

        _say(
            "5/8",
            "[red]node-2 is lost[/red] (SIGKILL of its replica server); the volume "
            "keeps changing on node-1 and node-3",
        )
        stale_gen = gens[1]
        nodes[1].kill()
        sums2 = dict(sums)
        shutil.copytree(os.path.join(work, "v1"), os.path.join(work, "v2"))
        for name in list(sums2)[:5]:
            os.unlink(os.path.join(work, "v2", name))
            del sums2[name]
        sums2.update(_make_files(os.path.join(work, "v2"), 2, 10))
        image2 = os.path.join(work, "fs-v2.img")
        _mkfs(image2, os.path.join(work, "v2"))
        with open(image, "rb") as f:
            prev = f.read()
        healthy = [clients[0], clients[2]]
        n_changed = await _write_image(healthy, image2, prev)
        console.print(f"      {n_changed} blocks changed while node-2 was away")

        _say(
            "6/8",
            "node-2 restarts; its replica recovers from the crash and reports the "
            "generation it had persisted",
        )
        nodes[1].start()
        c2 = await ReplicaClient.connect("127.0.0.1", nodes[1].port)
        info = await c2.open("demo-r", epoch=2)
        console.print(
            f"      node-2 generation {info['generation']} "
            f"(healthy replicas: {(await clients[0].info())['generation']})"
        )
        assert info["generation"] == stale_gen
        old = clients[1]
        try:
            await old.write(0, bytes(BLOCK_SIZE))
        except Exception as e:  # the old connection died with the server
            console.print(f"      an old engine's connection is gone: {type(e).__name__}")
        late = await ReplicaClient.connect("127.0.0.1", nodes[1].port)
        try:
            await late.open("demo-r", epoch=1)
        except Fenced as e:
            console.print(f"      epoch 1 is fenced out: {e}")
        await late.close()
        src = clients[0]
        await src.open("demo-r", epoch=2)
        t0 = time.perf_counter()
        moved = await src.copy_to(c2, since=stale_gen)
        current = (await src.info())["generation"]
        await c2.mark_current(current)  # the engine's last step of a rebuild
        el = time.perf_counter() - t0
        _say(
            "7/8",
            f"Delta rebuild of node-2 from node-1: {moved / MIB:.2f} MiB on the wire "
            f"for a {VOLUME_MIB} MiB volume ({100 * moved / size:.1f}%), {el * 1000:.0f} ms",
        )
        images = [await _read_all(c, size) for c in (src, c2, clients[2])]
        digests = {hashlib.sha256(x).hexdigest()[:16] for x in images}
        assert len(digests) == 1, "replicas differ"
        console.print(
            f"      all three replicas identical: sha256 {digests.pop()}; node-2 "
            f"marked current at generation {current}"
        )
        rebuilt = os.path.join(work, "from-node-2.img")
        with open(rebuilt, "wb") as f:
            f.write(images[1])
        fsck = subprocess.run(["e2fsck", "-fn", rebuilt], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        ok = _check_files(rebuilt, sums2, os.path.join(work, "out"))
        console.print(f"      e2fsck -fn clean; {ok}/{len(sums2)} files match their sha256")

        _say("8/8", "Bit rot on node-3's disk: flip one byte inside a data file, then scrub")
        await clients[2].flush()
        nodes[2].kill()
        rdir = os.path.join(nodes[2].disk, "replicas", "demo-r")
        victim = max(
            (p for p in os.listdir(rdir) if p.endswith(".data")),
            key=lambda p: os.stat(os.path.join(rdir, p)).st_blocks,
        )
        with open(os.path.join(rdir, victim), "r+b") as f:
            first_data = os.lseek(f.fileno(), BLOCK_SIZE, os.SEEK_DATA)  # past the header
            f.seek(first_data + 7)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))
        nodes[2].start()
        c3 = await ReplicaClient.connect("127.0.0.1", nodes[2].port)
        await c3.open("demo-r", epoch=2)
        report = await c3.scrub()
        bad = report["bad"]
        console.print(
            f"      scrub checked {report['checked_blocks']} blocks, found {len(bad)} bad: {bad}"
        )
        assert bad, "scrub should have found the flipped byte"
        for b in bad:
            good = await src.read(
                b["offset"], BLOCK_SIZE, snapshot=None if b["layer"] == "head" else b["layer"]
            )
            fixed = await c3.repair(b["offset"], good)
            console.print(f"      block {b['block']} ({b['layer']}) repaired from node-1: {fixed}")
        assert (await c3.scrub())["bad"] == []
        console.print(
            "[bold green]Done:[/bold green] data intact through a node loss, a delta "
            "rebuild and bit rot."
        )
        for c in (src, c2, c3, clients[2]):
            await c.close()
    finally:
        for n in nodes:
            n.stop()


@app.command("demo")
def demo(
    dir: str = typer.Option(None, "--dir", help="keep the demo's files here (default: a temp dir)"),
) -> None:
    """Show the data plane at work: replicas on three nodes, a node lost, a delta rebuild."""
    for tool in ("mkfs.ext4", "e2fsck", "debugfs"):
        if shutil.which(tool) is None:
            console.print(f"[red]error:[/red] {tool} not found (apt-get install e2fsprogs)")
            raise typer.Exit(2)
    root = dir or tempfile.mkdtemp(prefix="cargohold-demo-")
    if dir and os.path.exists(dir):
        shutil.rmtree(dir)
    os.makedirs(root, exist_ok=True)
    try:
        import uvloop

        uvloop.run(_demo(root))
    finally:
        if not dir:
            shutil.rmtree(root, ignore_errors=True)
