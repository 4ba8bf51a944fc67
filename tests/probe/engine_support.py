"""Helpers for ``test_engine_faults.py``: fault injection around real ``cargohold engine``
processes.

- ``NbdWriter``: a pipelined NBD writer in a child process under Debian's Python (the only
  one that loads libnbd's bindings): writes of 1-8 blocks with traceable patterns
  (``support.pattern``), many in flight, a FLUSH every few writes; it records when each
  request was sent and how it ended and leaves that as JSON. ``allowed_values`` turns the
  record into what each block may read as; ``check_blocks`` compares a read against it.
  ``nbd_read`` reads a range through the engine with the same client.
- ``DelayProxy``: a TCP proxy (asyncio, in a thread of the test process) between the engine
  and one replica server that delays every byte by ``delay`` seconds once set, in order, and
  delivers what it holds before closing (as TCP would).
- ``loop_ext4``: a small ext4 on a loop device, mounted; unmounted and detached at the end.

This module also runs as a script under /usr/bin/python3 (``python3 -m
tests.probe.engine_support write|read ...``): it imports nothing from ``cargohold`` at the
top, only inside the functions the tests call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.probe.support import BLOCK, identify, patterns
from tests.support.nbd_clients import missing_tools
from tests.support.processes import ROOT

DEBIAN_PYTHON = "/usr/bin/python3"
MIB = 1 << 20


# --- tools ---------------------------------------------------------------------------------
def libnbd_missing() -> str:
    """Why Debian's Python cannot run the NBD writer ('' when it can)."""
    if not os.path.exists(DEBIAN_PYTHON):
        return f"{DEBIAN_PYTHON} not found"
    p = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import nbd"], capture_output=True, text=True, timeout=30
    )
    return "" if p.returncode == 0 else f"python3-libnbd not importable: {p.stderr.strip()}"


# --- the NBD writer (child process under Debian's Python) -------------------------------------
OK, FAILED, UNKNOWN = 1, 0, -1


@dataclass
class Write:
    seq: int
    lba: int
    n: int
    sent: int  # the writer's logical clock when sent
    sent_t: float  # time.monotonic() (CLOCK_MONOTONIC: comparable across processes)
    done: int  # logical clock of its reply (-1: none)
    status: int  # OK, FAILED or UNKNOWN (no reply: the connection died first)
    error: str = ""


@dataclass
class Flush:
    sent: int
    sent_t: float
    done: int
    status: int
    error: str = ""


@dataclass
class WriterLog:
    writes: list[Write]
    flushes: list[Flush]
    end: str  # why the writer stopped
    stderr: str = ""

    @property
    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.status == OK]

    @property
    def failed(self) -> list[Write]:
        return [w for w in self.writes if w.status == FAILED]

    def last_flush(self) -> Flush | None:
        done = [f for f in self.flushes if f.status == OK]
        return max(done, key=lambda f: f.done) if done else None

    def summary(self) -> str:
        by = {s: sum(1 for w in self.writes if w.status == s) for s in (OK, FAILED, UNKNOWN)}
        fl = sum(1 for f in self.flushes if f.status == OK)
        return (
            f"{len(self.writes)} writes ({by[OK]} acknowledged, {by[FAILED]} failed, "
            f"{by[UNKNOWN]} unanswered), {fl}/{len(self.flushes)} flushes acknowledged; "
            f"ended: {self.end}"
        )


class NbdWriter:
    """Start the writer against ``uri``; ``result()`` waits for it and parses its record.

    It writes blocks ``[first, first + nblocks)``, never two writes in flight on one block,
    ``depth`` requests in flight, a FLUSH after every ``flush_every`` writes; it stops issuing
    when the connection dies, after ``max_failures`` failed requests, after ``max_writes``
    writes or ``duration`` seconds, or ``tail`` writes after ``stop()`` (at least one), and
    exits once nothing is in flight.
    """

    def __init__(
        self,
        workdir: Path,
        uri: str,
        first: int,
        nblocks: int,
        seed: int,
        depth: int = 32,
        flush_every: int = 16,
        max_failures: int = 1,
        max_writes: int = 1_000_000,
        duration: float = 30.0,
        tail: int = 1,
    ) -> None:
        self.out = workdir / f"writer-{time.monotonic_ns()}.json"
        self.stop_file = workdir / f"writer-{time.monotonic_ns()}.stop"
        self.err_path = workdir / f"writer-{time.monotonic_ns()}.err"
        cmd = [
            DEBIAN_PYTHON,
            "-m",
            "tests.probe.engine_support",
            "write",
            uri,
            str(self.out),
            f"--first={first}",
            f"--nblocks={nblocks}",
            f"--seed={seed}",
            f"--depth={depth}",
            f"--flush-every={flush_every}",
            f"--max-failures={max_failures}",
            f"--max-writes={max_writes}",
            f"--duration={duration}",
            f"--stop-file={self.stop_file}",
            f"--tail={tail}",
        ]
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=self._err,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        """Ask the writer to send ``tail`` more writes and stop."""
        self.stop_file.touch()

    def result(self, timeout: float = 60.0) -> WriterLog:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the NBD writer did not finish in {timeout} s:\n{self.stderr()}"
            ) from None
        finally:
            self._err.close()
        if self.proc.returncode != 0 or not self.out.exists():
            raise AssertionError(
                f"the NBD writer failed (rc {self.proc.returncode}):\n{self.stderr()}"
            )
        raw = json.loads(self.out.read_text())
        return WriterLog(
            [Write(*w) for w in raw["writes"]],
            [Flush(*f) for f in raw["flushes"]],
            raw["end"],
            self.stderr(),
        )

    def stderr(self) -> str:
        try:
            return self.err_path.read_text()[-4000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._err.close()


def allowed_values(
    log: WriterLog, base: dict[int, int] | None = None, rule: str = "flushed"
) -> dict[int, set[int]]:
    """What each block the writer touched may read as after a crash.

    ``rule="flushed"``: the value of the last write to it acknowledged before the last
    acknowledged FLUSH was sent (else what it held before, ``base``, default zeros), or the
    value of any later write to it. ``rule="acked"``: the value of the last acknowledged write
    (acknowledged at any time), or of any later write.
    Writes to one block are never in flight together, so their send order is their order.
    """
    base = base or {}
    flush = log.last_flush()
    horizon = flush.sent if flush is not None else -1
    by_block: dict[int, list[Write]] = {}
    for w in sorted(log.writes, key=lambda w: w.sent):
        for b in range(w.lba, w.lba + w.n):
            by_block.setdefault(b, []).append(w)
    out: dict[int, set[int]] = {}
    for b, ws in by_block.items():
        last = -1
        for k, w in enumerate(ws):
            if w.status == OK and (rule == "acked" or w.done < horizon):
                last = k
        first_value = ws[last].seq if last >= 0 else base.get(b, 0)
        out[b] = {first_value} | {w.seq for w in ws[last + 1 :]}
    return out


def check_blocks(
    data: bytes, first: int, allowed: dict[int, set[int]], base: dict[int, int] | None = None
) -> tuple[dict[int, int | str], list[str]]:
    """Identify every block of ``data`` (blocks from ``first``) and compare with ``allowed``
    (blocks not in it must hold ``base``'s value, default zeros). -> (values, problems)"""
    base = base or {}
    values: dict[int, int | str] = {}
    problems = []
    for k in range(len(data) // BLOCK):
        b = first + k
        got = identify(b, data[k * BLOCK : (k + 1) * BLOCK])
        values[b] = got
        want = allowed.get(b, {base.get(b, 0)})
        if got not in want:
            problems.append(
                f"block {b}: read {_name(got)}, expected {' or '.join(map(_name, sorted(want)))}"
            )
    return values, problems


def _name(v: int | str) -> str:
    return v if isinstance(v, str) else "zeros" if v == 0 else f"write #{v}"


def nbd_read(uri: str, offset: int, length: int, workdir: Path) -> bytes:
    """Read ``length`` bytes at ``offset`` through an NBD server (libnbd)."""
    out = workdir / f"read-{time.monotonic_ns()}.bin"
    p = subprocess.run(
        [
            DEBIAN_PYTHON,
            "-m",
            "tests.probe.engine_support",
            "read",
            uri,
            str(out),
            str(offset),
            str(length),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, (
        f"NBD read of {length} bytes at {offset} failed:\n{p.stdout}{p.stderr}"
    )
    data = out.read_bytes()
    out.unlink()
    return data


def _writer_main(a: argparse.Namespace) -> int:
    import nbd  # Debian's python3-libnbd

    rng = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    clock = 0
    seq = 0
    writes: list[list[Any]] = []
    flushes: list[list[Any]] = []
    inflight: dict[int, tuple[str, int, Any]] = {}  # cookie -> (kind, index, buffer)
    busy: set[int] = set()
    failures = 0
    since_flush = 0
    end = ""
    deadline = time.monotonic() + a.duration
    tail_from = -1  # seq when the stop file was seen

    def finish(kind: str, i: int, status: int, error: str = "") -> None:
        nonlocal clock, failures
        clock += 1
        rec = writes[i] if kind == "w" else flushes[i]
        rec[-3], rec[-2], rec[-1] = clock, status, error  # done, status, error
        if status == FAILED:
            failures += 1
        if kind == "w":
            busy.difference_update(range(rec[1], rec[1] + rec[2]))

    def reap() -> None:
        for cookie, (kind, i, _) in list(inflight.items()):
            try:
                done = h.aio_command_completed(cookie)
            except nbd.Error as e:
                del inflight[cookie]
                finish(kind, i, FAILED, str(e))
                continue
            if done:
                del inflight[cookie]
                finish(kind, i, OK)

    while True:
        if not end:
            if h.aio_is_dead() or h.aio_is_closed():
                end = "connection lost"
            elif failures >= a.max_failures:
                end = f"{failures} failures"
            elif seq >= a.max_writes:
                end = "max writes"
            elif time.monotonic() > deadline:
                end = "duration"
            elif tail_from < 0 and os.path.exists(a.stop_file):
                tail_from = seq
            if not end and tail_from >= 0 and seq >= tail_from + max(1, a.tail):
                end = "stopped"
        while not end and len(inflight) < a.depth:
            try:
                if since_flush >= a.flush_every:
                    clock += 1
                    sent, t = clock, time.monotonic()
                    cookie = h.aio_flush()
                    flushes.append([sent, t, -1, UNKNOWN, ""])
                    inflight[cookie] = ("f", len(flushes) - 1, None)
                    since_flush = 0
                    continue
                n = rng.randint(1, 8)
                lba = a.first + rng.randrange(a.nblocks - n + 1)
                if busy.intersection(range(lba, lba + n)):
                    break  # wait for a reply, then try again
                seq += 1
                buf = nbd.Buffer.from_bytearray(bytearray(patterns(lba, n, seq)))
                flags = nbd.CMD_FLAG_FUA if rng.random() < 0.05 else 0
                clock += 1
                sent, t = clock, time.monotonic()
                cookie = h.aio_pwrite(buf, lba * BLOCK, flags=flags)
                writes.append([seq, lba, n, sent, t, -1, UNKNOWN, ""])
                inflight[cookie] = ("w", len(writes) - 1, buf)
                busy.update(range(lba, lba + n))
                since_flush += 1
            except nbd.Error as e:  # the handle is dead: nothing more can be sent
                end = f"send failed: {e}"
        if not inflight:
            if end:
                break
            continue
        try:
            h.poll(1000)
        except nbd.Error as e:
            end = end or f"poll failed: {e}"
        reap()
        if end and (h.aio_is_dead() or h.aio_is_closed()):
            reap()
            break  # whatever is still in flight stays UNKNOWN
        if time.monotonic() > deadline + 30:
            end = (end or "") + "; gave up waiting for replies"
            break
    with contextlib.suppress(nbd.Error):
        if not (h.aio_is_dead() or h.aio_is_closed()):
            h.shutdown()
    with open(a.out, "w") as f:
        json.dump({"writes": writes, "flushes": flushes, "end": end}, f)
    return 0


def _read_main(a: argparse.Namespace) -> int:
    import nbd

    h = nbd.NBD()
    h.connect_uri(a.uri)
    with open(a.out, "wb") as f:
        pos, end = a.offset, a.offset + a.length
        while pos < end:
            n = min(4 * MIB, end - pos)
            f.write(h.pread(n, pos))
            pos += n
    h.shutdown()
    return 0


# --- a delaying TCP proxy -------------------------------------------------------------------
class DelayProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; while ``delay`` > 0 each chunk is held for
    that many seconds (order kept). Runs its own event loop in a daemon thread."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.port = 0
        self.connections = 0  # accepted so far
        self.open = 0  # client connections not yet fully closed
        self.queued = 0  # chunks held, not yet forwarded
        self.delayed = 0  # chunks forwarded late
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(main())
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def retarget(self, port: int) -> None:
        self.target = (self.target[0], port)

    def idle(self) -> bool:
        return self.open == 0 and self.queued == 0

    async def _client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            self.open -= 1
            return
        for w in (cw, uw):
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pump(cr, uw), self._pump(ur, cw), return_exceptions=True)
        finally:
            for w in (cw, uw):
                w.close()
            self.open -= 1

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Copy r to w; a chunk read while ``delay`` > 0 goes out ``delay`` s after it came."""
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await q.get()
                if not data:
                    break
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    self.delayed += 1
                self.queued -= 1
                try:
                    w.write(data)
                    await w.drain()
                except (ConnectionError, OSError):
                    continue  # drop what is left: the peer is gone
            with contextlib.suppress(ConnectionError, OSError):
                if w.can_write_eof():
                    w.write_eof()

        sender = asyncio.get_running_loop().create_task(send())
        try:
            while data := await r.read(1 << 16):
                self.queued += 1
                q.put_nowait((self.loop.time() + self.delay, data))
        except (ConnectionError, OSError):
            pass
        q.put_nowait((0.0, b""))
        await sender

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            # end every connection's coroutines here, on a running loop: none may be left
            # for the garbage collector to finalise later
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.01)  # the closed transports' callbacks

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# --- a small filesystem ---------------------------------------------------------------------
def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def loop_ext4_unavailable() -> str:
    if os.geteuid() != 0:
        return "needs root: losetup, mkfs.ext4 and mount"
    missing = missing_tools("losetup", "mkfs.ext4", "mount", "umount")
    return f"missing tools: {', '.join(missing)}" if missing else ""


@contextlib.contextmanager
def loop_ext4(workdir: Path, size: int) -> Iterator[Path]:
    """A fresh ext4 of ``size`` bytes on a loop device, mounted at ``workdir/mnt``."""
    img = workdir / "fs.img"
    with open(img, "wb") as f:
        f.truncate(size)
    r = _run(["losetup", "--find", "--show", str(img)])
    if r.returncode != 0:
        raise RuntimeError(f"no loop device available: {r.stderr.strip()}")
    dev = r.stdout.strip()
    mnt = workdir / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        r = _run(["mkfs.ext4", "-q", "-F", "-b", "1024", dev])
        assert r.returncode == 0, f"mkfs.ext4 failed: {r.stderr}"
        r = _run(["mount", dev, str(mnt)])
        assert r.returncode == 0, f"mount failed: {r.stderr}"
        mounted = True
        yield mnt
    finally:
        if mounted:
            deadline = time.monotonic() + 10
            while _run(["umount", str(mnt)]).returncode != 0:
                if time.monotonic() > deadline:
                    _run(["umount", "-l", str(mnt)])
                    break
                time.sleep(0.1)  # poll: a process we killed may still be closing its files
        _run(["losetup", "-d", dev])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="engine_support")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("uri")
    w.add_argument("out")
    w.add_argument("--first", type=int, required=True)
    w.add_argument("--nblocks", type=int, required=True)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--depth", type=int, default=32)
    w.add_argument("--flush-every", type=int, default=16)
    w.add_argument("--max-failures", type=int, default=1)
    w.add_argument("--max-writes", type=int, default=1_000_000)
    w.add_argument("--duration", type=float, default=30.0)
    w.add_argument("--stop-file", default="")
    w.add_argument("--tail", type=int, default=1)
    r = sub.add_parser("read")
    r.add_argument("uri")
    r.add_argument("out")
    r.add_argument("offset", type=int)
    r.add_argument("length", type=int)
    a = p.parse_args(argv)
    return _writer_main(a) if a.cmd == "write" else _read_main(a)


if __name__ == "__main__":
    sys.exit(main())
