#!/usr/bin/env python3
"""Benchmark: what a snapshot deletion's fold costs with its per-step data sync
(docs/formats/replica-store.md, "Machine crashes": each step syncs the data it copied
before it stores the records naming it) against the fold without it (``Layer.absorb`` as it
was, the step sync left out).

A FileStore of ``--size`` MiB in ``--dir`` is written whole (1 MiB writes) and snapshotted
(``s1``), every other MiB is written again and snapshotted (``s2``), then ``s1`` is deleted:
its layer is folded into ``s2``'s, half the volume copied. ``--runs`` times, interleaved: ``sync``
(the code as it is) and ``nosync``. Prints per run the wall and CPU seconds of the delete,
as JSON lines.

    .venv/bin/python benchmarks/snapshot_fold.py [--dir /var/tmp] [--size 512] [--runs 3]
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
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.store import layer as layer_mod  # noqa: E402
from cargohold.store.file_store import FileStore  # noqa: E402

MIB = 1 << 20


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(where: str, size_mib: int, sync: bool) -> dict[str, float | str]:
    d = tempfile.mkdtemp(prefix="fold-", dir=where)
    try:
        s = FileStore.create(os.path.join(d, "r"), size_mib * MIB)
        g = 1
        chunk = os.urandom(MIB)
        for off in range(0, size_mib * MIB, MIB):  # s1: every block
            s.write(off, chunk, generation=g)
            g += 1
        s.snapshot_create("s1")
        for off in range(0, size_mib * MIB, 2 * MIB):  # s2: every other MiB
            s.write(off, chunk, generation=g)
            g += 1
        s.snapshot_create("s2")
        s.flush()
        real = os.fdatasync
        calls = [0]

        def counted(fd: int) -> None:
            calls[0] += 1
            real(fd)

        os.fdatasync = counted  # type: ignore[assignment]
        if not sync:  # the fold as it was: no data sync between its steps
            layer_mod.os.fdatasync = counted  # type: ignore[attr-defined]
            orig = layer_mod.Layer.absorb

            def absorb(self: layer_mod.Layer, parent: layer_mod.Layer) -> Iterator[None]:
                fds = set(self.data_fds)
                keep = os.fdatasync

                def skip(fd: int) -> None:
                    if fd not in fds:
                        keep(fd)

                os.fdatasync = skip  # type: ignore[assignment]
                try:
                    yield from orig(self, parent)
                finally:
                    os.fdatasync = keep  # type: ignore[assignment]
                self.sync()  # the fold's end syncs the child whole, as before

            layer_mod.Layer.absorb = absorb  # type: ignore[method-assign]
        try:
            c0, t0 = cpu(), time.perf_counter()
            s.snapshot_delete("s1")
            wall, spent = time.perf_counter() - t0, cpu() - c0
        finally:
            os.fdatasync = real
            if not sync:
                layer_mod.Layer.absorb = orig  # type: ignore[method-assign]
        s.close()
        return {
            "kind": "sync" if sync else "nosync",
            "wall_s": round(wall, 3),
            "cpu_s": round(spent, 3),
            "fdatasyncs": calls[0],
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for _ in range(a.runs):
        for sync in (True, False):
            print(json.dumps(one(a.dir, a.size, sync)), flush=True)


if __name__ == "__main__":
    main()
