"""``cargohold demo``: the main job, narrated, on this machine.

Three replica servers stand in for three nodes; ``cargohold engine`` serves a 3-replica
volume over NBD. The volume becomes a block device (nbdfuse + a loop device), gets an ext4
filesystem and files; one node is killed with SIGKILL while files are still being written;
the volume goes on degraded; the node comes back and its replica gets an online *delta*
rebuild; then the filesystem is checked (e2fsck) and every file by SHA-256, the three
replicas are compared byte for byte, and bit rot on a replica is found and repaired
through the engine on its next start.

Without root (no loop devices or mounts) the filesystem image is made with
``mkfs.ext4 -d`` and written through the engine with ``qemu-img convert`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import typer

from cargohold.cli.demo_steps import (
    BlockDevice,
    can_mount,
    cannot_mount,
    console,
    note,
    run,
    say,
    write_files,
)
from cargohold.cli.main import app
from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.errors import CargoholdError
from cargohold.replica.client import ReplicaClient

SIZE = 256 * MIB


class Proc:
    """A process of ours, its output in a log file, its address parsed from the log."""

    def __init__(self, args: list[str], log: str, pattern: str) -> None:
        self.args, self.log, self.pattern = args, log, pattern
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Proc:
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cargohold", *self.args], stdout=f, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(self.pattern, open(self.log).read())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.args[0]} did not start; see {self.log}")

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=60)


def control(path: str, **req: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(1 << 16)
    return json.loads(data)


def wait_status(path: str, pred: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = control(path, op="status")
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; engine status: {st}")
        time.sleep(0.1)


def modes(st: dict[str, Any]) -> str:
    return ", ".join(f"{r['id']} {r['mode']}" for r in st["replicas"])


async def replica_digests(ports: list[int], epoch: int) -> list[str]:
    out = []
    for i, port in enumerate(ports):
        c = await ReplicaClient.connect("127.0.0.1", port)
        await c.open(f"r{i + 1}", epoch)
        h = hashlib.sha256()
        for off in range(0, SIZE, 16 * MIB):
            h.update(bytes(await c.read(off, 16 * MIB)))
        await c.close()
        out.append(h.hexdigest()[:16])
    return out


FALLBACK_EXIT = 3  # the main job could not run here; the data-plane demo ran instead


def fallback_banner(why: list[str], end: bool = False) -> None:
    """Said loudly, at the start and at the end: this is not the main job."""
    from rich.panel import Panel

    if end:
        text = (
            "This was the [bold]data-plane demo only[/bold]. The main job — a cluster through "
            "the control plane, ext4 mounted on a volume, a node killed and rebuilt by the "
            f"manager — did [bold]not[/bold] run here ({', '.join(why)}). Exit status "
            f"{FALLBACK_EXIT}; `cargohold demo --engine-only` asks for this demo on purpose."
        )
    else:
        text = (
            f"[bold]The main job cannot run on this machine[/bold]: {', '.join(why)}. It needs "
            "root, /dev/fuse, loop devices and nbdfuse, losetup, mount and fusermount3.\n"
            "Showing a [bold]lesser demo[/bold] instead: the data plane alone — three replica "
            "servers and one engine, no manager, no node agents, no mounted filesystem."
        )
    console.print(Panel(text, title="NOT THE MAIN JOB", border_style="bold yellow"))


def main_job(root: str) -> None:
    work = os.path.join(root, "work")
    os.makedirs(work)
    ctl = os.path.join(root, "engine.ctl")
    nodes: list[Proc] = []
    engines: list[Proc] = []
    dev: BlockDevice | None = None
    try:
        say("1/7", "Three nodes: a replica server on each (real processes on loopback)")
        for i in (1, 2, 3):
            disk = os.path.join(root, f"node-{i}", "disk")
            os.makedirs(disk)
            nodes.append(
                Proc(
                    [
                        "replica-server",
                        "--disk",
                        disk,
                        "--listen",
                        "127.0.0.1:0",
                        "--node",
                        f"node-{i}",
                        "--plaintext",  # the demo's data plane alone has no cluster CA
                    ],
                    os.path.join(root, f"node-{i}.log"),
                    r"listening on 127\.0\.0\.1:(\d+)",
                ).start()
            )
            note(f"node-{i}: replica server on 127.0.0.1:{nodes[-1].port}")

        async def create() -> None:
            for i, n in enumerate(nodes, start=1):
                c = await ReplicaClient.connect("127.0.0.1", n.port)
                await c.create(f"r{i}", SIZE)
                await c.close()

        asyncio.run(create())

        def engine(epoch: int) -> Proc:
            specs = [
                a for i, n in enumerate(nodes, 1) for a in ("--replica", f"r{i}@127.0.0.1:{n.port}")
            ]
            e = Proc(
                [
                    "engine",
                    "--volume",
                    "demo",
                    "--epoch",
                    str(epoch),
                    *specs,
                    "--local",
                    "r1",
                    "--listen",
                    "127.0.0.1:0",
                    "--control",
                    ctl,
                    "--plaintext",
                    "--replica-timeout",
                    "2",
                ],
                os.path.join(root, f"engine-{epoch}.log"),
                r"nbd server listening on 127\.0\.0\.1:(\d+)",
            ).start()
            engines.append(e)
            return e

        eng = engine(1)
        uri = f"nbd://127.0.0.1:{eng.port}/demo"
        say(
            "2/7",
            f"Volume 'demo': {SIZE // MIB} MiB, thin, 3 replicas (r1 on node-1, r2 on "
            f"node-2, r3 on node-3); its engine (epoch 1) serves it at {uri}",
        )
        mounted = can_mount()
        sums: dict[str, str] = {}
        if mounted:
            dev = BlockDevice(uri, work)
            loop = dev.attach()
            run("mkfs.ext4", "-q", "-F", "-b", "4096", loop)
            dev.mount()
            sums = write_files(dev.mnt, 1, 40)
            os.sync()
            say(
                "3/7",
                f"Attached as {loop} (nbdfuse + loop), made ext4, wrote {len(sums)} files "
                "and synced",
            )
        else:
            src = os.path.join(work, "v1")
            sums = write_files(src, 1, 40)
            image = os.path.join(work, "fs.img")
            run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, image, f"{SIZE // MIB}M")
            run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, uri)
            say(
                "3/7",
                f"(not root: no loop devices) made an ext4 image with {len(sums)} files "
                "and wrote it through the engine with qemu-img convert",
            )
        st = control(ctl, op="status")
        note(f"generation {st['generation']}, {st['robustness']}: {modes(st)}")

        say(
            "4/7",
            "[red]node-2 is lost[/red]: SIGKILL of its replica server while files are "
            "still being written",
        )
        if mounted:
            assert dev is not None
            more = write_files(os.path.join(dev.mnt, "during"), 2, 5)
            nodes[1].signal(signal.SIGKILL)
            more.update(write_files(os.path.join(dev.mnt, "during"), 3, 20))
            os.sync()
            sums.update({f"during/{k}": v for k, v in more.items()})
        else:
            nodes[1].signal(signal.SIGKILL)
            run("qemu-io", "-f", "raw", "-c", "write -P 0x5c 200M 8M", "-c", "flush", uri)
        st = wait_status(ctl, lambda s: s["robustness"] == "degraded")
        note(f"no error reached the filesystem; the volume is {st['robustness']}: {modes(st)}")
        stale = next(r for r in st["replicas"] if r["id"] == "r2")

        say("5/7", "node-2 comes back; its replica rejoins and gets an online delta rebuild")
        nodes[1] = Proc(nodes[1].args, nodes[1].log + ".2", nodes[1].pattern).start()
        control(ctl, op="add-replica", replica=f"r2@127.0.0.1:{nodes[1].port}")
        st = wait_status(ctl, lambda s: s["robustness"] == "healthy")
        rb = next(r for r in st["replicas"] if r["id"] == "r2")["rebuild"]
        note(
            f"r2 was complete through generation {stale['generation']}; "
            f"{rb['copied_bytes'] / MIB:.1f} MiB copied for a {SIZE // MIB} MiB volume "
            f"({100 * rb['copied_bytes'] / SIZE:.1f}%) in {rb['seconds']:.2f} s; "
            f"{st['robustness']}: {modes(st)}"
        )

        say("6/7", "Checking everything")
        if mounted:
            assert dev is not None
            dev.umount()
            fsck = run("e2fsck", "-fn", dev.loop, check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            dev.mount(ro=True)
            bad = [
                k
                for k, v in sums.items()
                if hashlib.sha256(open(os.path.join(dev.mnt, k), "rb").read()).hexdigest() != v
            ]
            dev.umount()
            assert not bad, f"files differ: {bad}"
            note(f"e2fsck -fn: clean; {len(sums)}/{len(sums)} files match their SHA-256")
            dev.detach()
            dev = None
        else:
            out = os.path.join(work, "back.img")
            run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
            fsck = run("e2fsck", "-fn", out, check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            for name, want in sums.items():
                dump = os.path.join(work, "dump.bin")
                run("debugfs", "-R", f"dump /{name} {dump}", out)
                got = hashlib.sha256(open(dump, "rb").read()).hexdigest()
                assert got == want, f"{name}: sha256 {got}, expected {want}"
            note(f"e2fsck -fn: clean; {len(sums)}/{len(sums)} files match their SHA-256")
        eng.signal(signal.SIGTERM)
        digests = asyncio.run(replica_digests([n.port for n in nodes], 1))
        assert len(set(digests)) == 1, f"replicas differ: {digests}"
        note(f"the three replicas are identical: sha256 {digests[0]}")

        say(
            "7/7",
            "Bit rot: one byte flipped on node-1's disk; the engine's next start (epoch "
            "2) reads around it and repairs it",
        )
        nodes[0].signal(signal.SIGTERM)
        rdir = os.path.join(root, "node-1", "disk", "replicas", "r1")
        victim = max(
            (p for p in os.listdir(rdir) if ".data" in p),
            key=lambda p: os.stat(os.path.join(rdir, p)).st_blocks,
        )
        with open(os.path.join(rdir, victim), "r+b") as f:
            first = os.lseek(f.fileno(), BLOCK_SIZE, os.SEEK_DATA)
            f.seek(first + 100)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))
        nodes[0] = Proc(nodes[0].args, nodes[0].log + ".2", nodes[0].pattern).start()
        eng = engine(2)
        copy = os.path.join(work, "copy.img")
        run(
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            f"nbd://127.0.0.1:{eng.port}/demo",
            copy,
        )
        st = wait_status(ctl, lambda s: s["counters"].get("repaired_blocks", 0) >= 1, 30)
        note(
            f"checksum errors {st['counters']['checksum_errors']}, repaired blocks "
            f"{st['counters']['repaired_blocks']}; the copy read through the engine is "
            f"{'clean' if run('e2fsck', '-fn', copy, check=False).returncode == 0 else 'BAD'}"
        )
        eng.signal(signal.SIGTERM)

        async def scrub() -> dict[str, Any]:
            c = await ReplicaClient.connect("127.0.0.1", nodes[0].port)
            await c.open("r1", 2)
            out = await c.scrub()
            await c.close()
            return out

        report = asyncio.run(scrub())
        assert report["bad"] == [], report
        note(f"scrub of r1: {report['checked_blocks']} blocks checked, none bad")
        console.print(
            "[bold green]Done:[/bold green] the data survived a node loss, an online "
            "delta rebuild and bit rot, and all three replicas agree."
        )
    finally:
        if dev is not None:
            dev.detach()
        for p in [*engines, *nodes]:
            with contextlib.suppress(Exception):
                p.signal(signal.SIGTERM)


@app.command(
    "demo",
    epilog="Exit status: 0 the demo ran to the end; 1 it failed (its files are kept); 2 a tool "
    f"is missing; {FALLBACK_EXIT} the main job cannot run here (no root, FUSE or loop devices) "
    "and the data-plane demo ran instead and passed.",
)
def demo(
    dir: str = typer.Option(None, "--dir", help="keep the demo's files here (default: a temp dir)"),
    engine_only: bool = typer.Option(
        False, "--engine-only", help="the data plane alone: replica servers and one engine"
    ),
) -> None:
    """The main job: a local cluster, a 3-replica volume, ext4 on it, a node lost and rebuilt,
    backups, the cluster lost and the volume restored from its backup in a new one."""
    for tool in ("mkfs.ext4", "e2fsck", "qemu-img"):
        if shutil.which(tool) is None:
            console.print(f"[red]error:[/red] {tool} not found (run scripts/setup.sh)")
            raise typer.Exit(2)
    root = dir or tempfile.mkdtemp(prefix="cargohold-demo-", dir="/tmp")
    if dir and os.path.exists(dir):
        shutil.rmtree(dir)
    os.makedirs(root, exist_ok=True)
    why = [] if engine_only else cannot_mount()
    try:
        if engine_only or why:
            if why:
                fallback_banner(why)
            main_job(root)
        else:
            from cargohold.cli.demo_cluster import cluster_job

            cluster_job(root)
    except (RuntimeError, AssertionError, CargoholdError) as e:
        console.print(f"[red]demo failed:[/red] {e}\n(its files and logs are kept in {root})")
        raise typer.Exit(1) from None
    if not dir:
        shutil.rmtree(root, ignore_errors=True)
    else:
        console.print(f"the demo's files and logs are kept in {root}")
    console.print(
        "next: `cargohold up --dir ~/cargohold-lab` starts a cluster of your own to try the "
        'commands on (README.md, "Quick start"; docs/operations.md)'
    )
    if why:  # it passed, but it was not what was asked for: say so, and in the exit status
        fallback_banner(why, end=True)
        raise typer.Exit(FALLBACK_EXIT)
