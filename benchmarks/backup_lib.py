"""The backup repository library alone (cargohold/backup/), no cluster: a table of

- a full backup of SIZE of random data to a FileTarget (tmpfs by default): MB/s, and the same
  bytes written as 4 MiB files by FileTarget.put in the same run (the ratio is the library's
  overhead: hashing, compression attempt, encryption, packing);
- restoring it (read_all, every blob authenticated and re-hashed): MB/s, against reading the
  pack files back raw;
- objects and index bytes per GiB; the in-memory index per chunk;
- an incremental backup after 1% of the 4 KiB blocks changed: bytes read, bytes stored,
  requests (LIST must be 0), time;
- a second volume with the same data (dedup): bytes stored.

    .venv/bin/python benchmarks/backup_lib.py [--gib 1] [--dir /dev/shm] [--uploads 4]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cargohold.backup import format as fmt
from cargohold.backup.index import read_index
from cargohold.backup.repository import Repository
from cargohold.backup.targets import FileTarget

MiB = 1 << 20
STEP = 4 * MiB


def dir_stats(root: Path, prefix: str) -> tuple[int, int]:
    files = (
        [p for p in (root / prefix).rglob("*") if p.is_file()] if (root / prefix).exists() else []
    )
    return len(files), sum(p.stat().st_size for p in files)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--uploads", type=int, default=4)
    args = ap.parse_args()
    size = int(args.gib * (1 << 30)) // STEP * STEP
    work = Path(tempfile.mkdtemp(prefix="cargohold-bk-bench-", dir=args.dir))
    rows: list[tuple[str, str]] = []
    try:
        data = [os.urandom(STEP) for _ in range(size // STEP)]
        # baseline: the same bytes as 4 MiB files through FileTarget.put, then read back
        raw = FileTarget(work / "raw")
        t0 = time.perf_counter()
        for i, d in enumerate(data):
            raw.put(f"o/{i}", d)
        raw_put = size / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        for i in range(len(data)):
            raw.get(f"o/{i}")
        raw_get = size / (time.perf_counter() - t0) / 1e6
        shutil.rmtree(work / "raw")

        key = os.urandom(32)
        target = FileTarget(work / "repo")
        repo = Repository.init(target, key, uploads=args.uploads)
        t0, c0 = time.perf_counter(), cpu()
        w = repo.start_backup("bench", "bench", size, "s", 1, {}, None)
        for i, d in enumerate(data):
            w.write(i * STEP, d)
        full = w.commit()
        t_full, c_full = time.perf_counter() - t0, cpu() - c0
        gib = size / (1 << 30)
        packs, pack_bytes = dir_stats(work / "repo", "packs")
        _, idx_bytes = dir_stats(work / "repo", "index")
        objects = sum(dir_stats(work / "repo", p)[0] for p in ("packs", "index", "backups"))
        rows += [
            (
                "volume",
                f"{gib:.2f} GiB random, {len(data)} cells of 4 MiB, uploads={args.uploads}, dir {args.dir}",
            ),
            (
                "full backup",
                f"{size / t_full / 1e6:.0f} MB/s ({t_full:.2f} s; {c_full / gib:.2f} CPU s per GiB)",
            ),
            (
                "raw FileTarget.put of the same 4 MiB objects",
                f"{raw_put:.0f} MB/s  -> ratio {size / t_full / 1e6 / raw_put:.2f}",
            ),
            (
                "objects per GiB (packs+index+manifest)",
                f"{objects / gib:.1f} ({packs} packs, avg {pack_bytes / max(packs, 1) / MiB:.1f} MiB)",
            ),
            ("stored / data", f"{pack_bytes / size:.4f}"),
            ("index bytes per GiB (stored)", f"{idx_bytes / gib:.0f}"),
            ("manifest bytes per GiB", f"{dir_stats(work / 'repo', 'backups')[1] / gib:.0f}"),
        ]
        # the in-memory index, per chunk
        (name,) = [f"index/{p.name}" for p in (work / "repo" / "index").iterdir()]
        tracemalloc.start()
        idx = read_index(target, repo.keys, name)
        cur, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            (
                "index in memory",
                f"{cur / max(len(idx), 1):.0f} B/chunk -> {cur / max(len(idx), 1) * (1 << 40) / fmt.CELL / MiB:.0f} MiB per TiB of unique data",
            )
        )
        # restore
        again = Repository.open(FileTarget(work / "repo"), key, uploads=args.uploads)
        t0, c0 = time.perf_counter(), cpu()
        n = 0
        for _, piece in again.restore_reader(full.id).read_all():
            n += len(piece)
        t_read, c_read = time.perf_counter() - t0, cpu() - c0
        assert n == size
        t0 = time.perf_counter()
        for p in (work / "repo" / "packs").rglob("*"):
            if p.is_file():
                p.read_bytes()
        raw_read = pack_bytes / (time.perf_counter() - t0) / 1e6
        rows += [
            (
                "restore (read_all, verified)",
                f"{size / t_read / 1e6:.0f} MB/s ({t_read:.2f} s; {c_read / gib:.2f} CPU s per GiB)",
            ),
            (
                "raw FileTarget.get of 4 MiB objects / raw pack file reads",
                f"{raw_get:.0f} / {raw_read:.0f} MB/s -> ratio {size / t_read / 1e6 / raw_get:.2f}",
            ),
        ]
        # incremental: 1% of the blocks changed
        nblocks = size // fmt.BLOCK
        changed = sorted(random.Random(1).sample(range(nblocks), nblocks // 100))
        target.stats.update(dict.fromkeys(target.stats, 0))
        t0 = time.perf_counter()
        w = repo.start_backup("bench", "bench", size, "s2", 2, {}, full.id)
        for b in changed:
            w.write(b * fmt.BLOCK, os.urandom(fmt.BLOCK))
        inc = w.commit()
        t_inc = time.perf_counter() - t0
        rows += [
            (
                "incremental, 1% of 4 KiB blocks changed",
                f"{t_inc:.2f} s, read {inc.bytes_read / size:.2%} of the volume, stored {inc.bytes_new / MiB:.1f} MiB in {inc.chunks_new} chunks",
            ),
            ("  its requests", ", ".join(f"{k} {v}" for k, v in target.stats.items())),
        ]
        # dedup: a second volume with the same data
        before = dir_stats(work / "repo", "packs")[1]
        w = repo.start_backup("clone", "clone", size, "s", 1, {}, None)
        for i, d in enumerate(data):
            w.write(i * STEP, d)
        clone = w.commit()
        rows.append(
            (
                "a clone with the same data",
                f"stored {(dir_stats(work / 'repo', 'packs')[1] - before) / MiB:.2f} MiB more, {clone.chunks_reused} chunks reused",
            )
        )
        # the cell size: per-chunk CPU (id + encryption) and metadata at 1, 4 and 16 MiB
        keys = repo.keys
        blob = os.urandom(16 * MiB)
        for cell in (1 * MiB, 4 * MiB, 16 * MiB):
            c0 = cpu()
            for _ in range(64 * MiB // cell):
                piece = memoryview(blob)[:cell]
                keys.seal_blob(keys.chunk_id(piece), 0, piece)
            per_gib = (cpu() - c0) * 16
            chunks = (1 << 40) // cell
            rows.append(
                (
                    f"cell {cell >> 20:>2} MiB",
                    f"{per_gib:.2f} CPU s/GiB for id + AES; per TiB: {chunks} chunks, "
                    f"index {chunks * 52 / MiB:.0f} MiB stored / {chunks * 309 / MiB:.0f} MiB in memory, "
                    f"{chunks} GETs to restore",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
