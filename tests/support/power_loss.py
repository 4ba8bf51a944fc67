"""A machine crash (power loss) simulated on real replica directories, with no hook in the
product: for tests/integration/test_power_loss.py.

A SIGKILLed process loses nothing its writes put in the page cache; a machine that loses
power keeps what reached the disk. What reached it is everything the last FLUSH made
durable (``fdatasync``) plus whichever dirty pages the kernel had written back by then, in
no set order. So the simulation needs two images of each replica directory:

- ``durable_copy``: the *durable image* D, copied (``cp --sparse``) while every process
  that could change the directory is stopped (SIGSTOP, ``frozen``) right after a FLUSH's
  reply: everything in it is on disk at the crash, or could be (see docs/reliability.md
  "Power loss, simulated" for the one page whose write-back is assumed);
- the *live image* L: the directory as the processes left it when they were SIGKILLed
  (the page cache, all writes acknowledged).

``crash`` then rewrites the live directory into the crashed image: every 4 KiB page that
differs between D and L comes from one of the two, drawn at random from a seeded generator
per file (so the header page's draw does not depend on how many data pages differ); a file
new since D is kept as it is; with ``coherent``, a layer's data page follows the page of its
block's map record instead. ``Crash`` records every choice. ``failing_blocks`` names the
blocks of a crashed layer that fail their own checksum (record and data from different
images), as after a real power loss (docs/formats/replica-store.md "Writes, reads and
crashes").

``new_boot``: the prefix that starts a process "in a new boot": in a mount namespace of its
own where /proc/sys/kernel/random/boot_id is bind-mounted over by a file with another UUID
(``unshare -m`` + ``mount --bind``, as root). ``new_boot_unavailable`` says why it cannot
be done here (then the test is skipped with that reason).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

PAGE = 4096
BOOT_ID = "/proc/sys/kernel/random/boot_id"
HEADER = 4096  # every map and data file starts with one 4 KiB header page
RECORD = 16  # bytes per block-map record
DURABLE, LIVE = "D", "L"


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP every process in ``pids`` (ours, by PID) for the block's duration, then
    SIGCONT them (also when the block fails)."""
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def durable_copy(directory: str, to: str) -> None:
    """Copy ``directory`` (a replica's) to ``to``, holes kept as holes."""
    subprocess.run(["cp", "-a", "--sparse=always", directory, to], check=True)


@dataclass
class Crash:
    """What ``crash`` chose for one replica directory: for each file that existed in D,
    the image each differing page came from (page index -> ``DURABLE`` or ``LIVE``)."""

    choices: dict[str, dict[int, str]] = field(default_factory=dict)
    new_files: list[str] = field(default_factory=list)

    def page(self, name: str, index: int) -> str | None:
        """The image page ``index`` of file ``name`` came from; None: D and L agreed."""
        return self.choices.get(name, {}).get(index)

    def header_from(self, layer: int) -> str | None:
        """Where the head map's header page (complete-through, seen, flags) came from."""
        return self.page(f"layer-{layer:06d}.map", 0)

    def summary(self) -> dict[str, dict[str, int]]:
        """Per file: how many differing pages came from each image (for failure messages)."""
        return {
            name: {img: sum(1 for v in pages.values() if v == img) for img in (DURABLE, LIVE)}
            for name, pages in self.choices.items()
        }


def crash(durable_dir: str, live_dir: str, seed: str, coherent: bool = False) -> Crash:
    """Rewrite ``live_dir`` (whose processes are dead) into the image a power loss could
    have left: see the module's docstring. Deterministic for a given ``seed``.

    ``coherent``: a kinder kernel, for the cases a store must survive even without torn
    blocks: each data page of a layer comes from the image its block-map record's page
    came from (first data segment), so no block fails its checksum; the map pages, the
    header among them, are drawn as always."""
    out = Crash()
    # the maps first: a coherent data page follows its record's page
    for name in sorted(os.listdir(live_dir), key=lambda n: (not n.endswith(".map"), n)):
        live_path = os.path.join(live_dir, name)
        durable_path = os.path.join(durable_dir, name)
        if not os.path.isfile(live_path):
            continue
        if not os.path.exists(durable_path):
            out.new_files.append(name)  # created after D: kept
            continue
        rng = random.Random(f"{seed}/{name}")
        with open(durable_path, "rb") as f:
            d = f.read()
        with open(live_path, "rb") as f:
            live = f.read()
        size = len(live)  # the file's size is metadata (journaled): the live one
        picked: dict[int, str] = {}
        pages: list[bytes] = []
        for i in range((size + PAGE - 1) // PAGE):
            lp = live[i * PAGE : (i + 1) * PAGE]
            dp = d[i * PAGE : (i + 1) * PAGE].ljust(len(lp), b"\0")  # past D's end: a hole
            if lp == dp:
                pages.append(lp)
                continue
            drawn = LIVE if rng.random() < 0.5 else DURABLE
            follow = _record_page_choice(out, name, i) if coherent else None
            picked[i] = follow or drawn
            pages.append(lp if picked[i] == LIVE else dp)
        out.choices[name] = picked
        _write_sparse(live_path, pages, size)
    return out


def _record_page_choice(made: Crash, name: str, page: int) -> str | None:
    """For data page ``page`` of ``name`` (a ``layer-NNNNNN.data`` file), the image the
    page of its block's map record came from, if that page differed; else None."""
    if not name.endswith(".data") or page == 0:
        return None
    block = page - HEADER // PAGE
    return made.page(name[: -len(".data")] + ".map", (HEADER + block * RECORD) // PAGE)


def _write_sparse(path: str, pages: list[bytes], size: int) -> None:
    """Replace ``path`` by ``pages`` (all-zero pages left as holes), ``size`` bytes long."""
    tmp = path + ".crash"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i, p in enumerate(pages):
            if p.rstrip(b"\0"):
                os.pwrite(fd, p, i * PAGE)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def new_boot_unavailable() -> str | None:
    """Why a process cannot be started in a simulated new boot here, or None if it can
    (tried once: a throwaway ``unshare -m`` that bind-mounts a file over the boot id)."""
    if os.geteuid() != 0:
        return "a new boot is simulated with unshare -m and mount --bind: needs root"
    missing = [t for t in ("unshare", "mount", "sh") if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (needed to simulate a new boot)"
    probe = f"/tmp/cargohold-boot-probe-{os.getpid()}"
    with open(probe, "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    try:
        script = f'mount --bind "$0" {BOOT_ID} && cat {BOOT_ID}'
        p = subprocess.run(
            ["unshare", "-m", "--", "sh", "-c", script, probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
        with open(probe) as f:
            want = f.read()
    finally:
        os.unlink(probe)
    if p.returncode != 0 or p.stdout != want:
        return f"unshare -m + mount --bind over {BOOT_ID} failed: {p.stderr.strip()}"
    return None


def new_boot(directory: str) -> tuple[str, ...]:
    """A command prefix (``ServerProc.prefix``) that runs the command in a new boot: its own
    mount namespace, a fresh UUID over the boot id. The file holding it is made in
    ``directory``; the namespace ends with the process (the PID is the command's: ``unshare``
    and ``sh`` exec it)."""
    path = os.path.join(directory, f"boot-id-{uuid.uuid4().hex[:8]}")
    with open(path, "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    script = f'mount --bind "$0" {BOOT_ID} && exec "$@"'
    return ("unshare", "-m", "--", "sh", "-c", script, path)


def boot_id_of(pid: int) -> str:
    """The boot id a running process sees (through its own mount namespace)."""
    with open(f"/proc/{pid}/root{BOOT_ID}") as f:
        return f.read().strip()


def failing_blocks(directory: str, layer: int) -> set[int]:
    """Blocks of ``layer`` (in replica directory ``directory``, its first data segment)
    whose record says DATA and whose data matches neither of its checksums: what a read
    of them on that replica reports as a checksum error."""
    import crc32c
    import numpy as np

    from cargohold.store import format as fmt

    with open(os.path.join(directory, f"layer-{layer:06d}.map"), "rb") as f:
        raw = f.read()[HEADER:]
    recs = np.frombuffer(raw[: len(raw) // RECORD * RECORD], dtype=fmt.RECORD)
    out = set()
    with open(os.path.join(directory, f"layer-{layer:06d}.data"), "rb") as f:
        for b in np.flatnonzero((recs["meta"] & fmt.STATE_MASK) == fmt.DATA):
            f.seek(HEADER + int(b) * PAGE)
            got = crc32c.crc32c(f.read(PAGE).ljust(PAGE, b"\0"))
            if got not in (int(recs["cur"][b]), int(recs["pend"][b])):
                out.add(int(b))
    return out
