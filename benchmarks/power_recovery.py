#!/usr/bin/env python3
"""Benchmark: what the open of a replica store costs after a machine crash, when it
verifies every data block of the head (docs/formats/replica-store.md, "Machine crashes").

A FileStore of ``--size`` MiB in ``--dir`` is written whole (1 MiB writes) and flushed. Then,
``--runs`` times, interleaved: its layers are closed without the clean flag (the process
dies) and the store is opened again (a) as after a machine crash (another boot id), its
files first dropped from the page cache (``posix_fadvise``, these files only): ``cold``;
(b) the same, the files left in the page cache: ``warm``; (c) as after a killed process
(same boot id, nothing to verify): ``killed``. Prints per kind the wall time of the open,
MiB/s of head data verified, and the process's CPU seconds, as JSON lines.

    .venv/bin/python benchmarks/power_recovery.py [--dir /tmp] [--size 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.store import reader  # noqa: E402
from cargohold.store.file_store import FileStore  # noqa: E402

MIB = 1 << 20


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def die(store: FileStore) -> None:
    for layer in store._layers.values():
        layer.close()
    store._layers = {}


def drop_cache(directory: str) -> None:
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--size", type=int, default=1024, help="MiB")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    where = tempfile.mkdtemp(prefix="power-recovery-", dir=args.dir)
    boots = iter(str(uuid.UUID(int=n)) for n in range(1, 1 << 20))
    boot = [next(boots)]
    reader.boot_id = lambda: boot[0]  # type: ignore[assignment]
    try:
        d = os.path.join(where, "r")
        store = FileStore.create(d, args.size * MIB)
        chunk = os.urandom(MIB)
        for i in range(args.size):
            store.write(i * MIB, chunk, generation=i + 1)
        store.flush()
        for run in range(args.runs):
            for kind in ("cold", "warm", "killed"):
                die(store)
                if kind != "killed":
                    boot[0] = next(boots)
                if kind == "cold":
                    drop_cache(d)
                c0, t0 = cpu(), time.perf_counter()
                store = FileStore.open(d)
                took, used = time.perf_counter() - t0, cpu() - c0
                print(
                    json.dumps(
                        {
                            "run": run,
                            "kind": kind,
                            "mib": args.size,
                            "seconds": round(took, 3),
                            "mib_per_s": round(args.size / took),
                            "cpu_s": round(used, 3),
                            "adopted": store.stats().get("adopted_blocks", 0),
                        }
                    ),
                    flush=True,
                )
        store.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
