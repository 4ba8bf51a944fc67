#!/usr/bin/env python3
"""Benchmark: backups to a real S3 server (SeaweedFS on loopback), issue #17's figures.

The library part, from memory (the cluster part, a volume read through its replicas, comes
with the engine's backup operation):

- Raw S3 first, the physical limit: boto3's multipart upload (s3transfer, 4 MiB parts, as
  many threads as the repository's uploads) of 64 MiB objects, and their download (ranged
  GETs of 4 MiB, same concurrency). Several rounds, interleaved with the backup and the
  restore below, so that all of them see the same machine: median and spread.
- Full backup of a volume (default 4 GiB, 3 GiB written: in every 16 MiB, 8 MiB random,
  4 MiB zeros, 4 MiB compressible text-like bytes) from memory through Repository to
  S3Target. MB/s = written bytes / time, as a ratio to the raw PUT (target >= 0.8).
- Restore of it (read_all, checked against the data), as a ratio to the raw GET (>= 0.8).
- Incremental after 1% of the volume's 4 KiB blocks changed (random, no block twice): bytes
  handed to the writer (target <= 2% of the volume), requests by kind (LIST = 0), time; its
  restore gives the whole volume (checked).
- Objects in the repository per GiB written; dedup of 10 clones: the same data backed up
  under 10 volume names, stored bytes against one (target < 1.2).

The host's load average and this process's CPU time are printed with every phase: on a
shared machine, compare ratios measured in one run, not absolute numbers between runs.

    .venv/bin/python benchmarks/backup.py [--size 4GiB] [--written 3GiB] [--rounds 3] \\
        [--raw 1GiB] [--uploads 4] [--clone-size 256MiB] [--json benchmarks/results/backup.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from crc32c import crc32c  # noqa: E402

from cargohold.backup.repository import Repository  # noqa: E402
from cargohold.backup.s3_target import S3Target  # noqa: E402
from cargohold.cli.units import parse_size  # noqa: E402
from tests.support.s3_server import S3Server, find_weed  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "backup.json")
MiB, GiB = 1 << 20, 1 << 30
PIECE = 4 * MiB  # the writer is fed 4 MiB at a time (the repository's cell)
RAW_OBJECT = 64 * MiB


def host() -> dict[str, Any]:
    return {
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpu_s": round(time.process_time(), 1),
    }


def volume_data(size: int, written: int, seed: int) -> np.ndarray:
    """The volume's bytes: zeros past ``written``; before, in each 16 MiB: 8 MiB random,
    4 MiB zeros, 4 MiB compressible (16 letters, ~2x). Regions of whole 4 MiB cells, as
    files and database extents are, rather than a mix inside every cell."""
    rng = np.random.default_rng(seed)
    out = np.zeros(size, dtype=np.uint8)
    for off in range(0, written, PIECE):
        n = min(PIECE, written - off)
        kind = (off // PIECE) % 4  # 0, 1: random; 2: zeros; 3: compressible
        if kind < 2:
            out[off : off + n] = np.frombuffer(rng.bytes(n), dtype=np.uint8)
        elif kind == 3:
            out[off : off + n] = rng.integers(97, 113, n, dtype=np.uint8)
    return out


# --- raw S3 ------------------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file that counts bytes (raw GETs keep nothing)."""

    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        self.n += n
        return n


def raw_round(s3: S3Server, uploads: int, nbytes: int, tag: str) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    client = s3.client()
    cfg = TransferConfig(
        multipart_threshold=4 * MiB,
        multipart_chunksize=4 * MiB,
        max_concurrency=uploads,
        use_threads=True,
    )
    buf = os.urandom(RAW_OBJECT)
    keys = [f"raw/{tag}/{i}" for i in range(max(1, nbytes // RAW_OBJECT))]
    t0 = time.monotonic()
    for k in keys:
        client.upload_fileobj(io.BytesIO(buf), s3.bucket, k, Config=cfg)
    put_s = time.monotonic() - t0
    sink = _Sink()
    t0 = time.monotonic()
    for k in keys:
        client.download_fileobj(s3.bucket, k, sink, Config=cfg)
    get_s = time.monotonic() - t0
    total = len(keys) * RAW_OBJECT
    assert sink.n == total, (sink.n, total)
    client.delete_objects(
        Bucket=s3.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
    )
    return {
        "bytes": total,
        "put_mb_s": total / put_s / 1e6,
        "get_mb_s": total / get_s / 1e6,
        "host": host(),
    }


# --- the repository -------------------------------------------------------------------------


def stored(s3: S3Server, prefix: str) -> tuple[int, int]:
    """(objects, bytes) under ``prefix`` (a LIST outside the measured phases)."""
    client = s3.client()
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=prefix + "/"
    ):
        for o in page.get("Contents", []):
            n += 1
            size += o["Size"]
    return n, size


def target(s3: S3Server, prefix: str) -> S3Target:
    return S3Target(s3.bucket, prefix, s3.endpoint, s3.access_key, s3.secret_key)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def backup(
    repo: Repository,
    name: str,
    size: int,
    pieces: Callable[[], Any],
    parent: str | None = None,
    generation: int = 1,
) -> tuple[Any, float, dict[str, int]]:
    before = dict(repo.target.stats)
    t0 = time.monotonic()
    w = repo.start_backup(name, name + "-uid", size, f"snap-{generation}", generation, {}, parent)
    for off, data in pieces():
        w.write(off, data)
    info = w.commit()
    return info, time.monotonic() - t0, delta(before, repo.target.stats)


def restore(
    repo: Repository, backup_id: str
) -> tuple[list[tuple[int, int, int]], int, float, dict[str, int]]:
    """Read the whole backup back: (offset, length, crc32c) of every piece, bytes, seconds."""
    before = dict(repo.target.stats)
    got: list[tuple[int, int, int]] = []
    n = 0
    t0 = time.monotonic()
    with repo.restore_reader(backup_id) as r:
        for off, data in r.read_all(PIECE):
            got.append((off, len(data), crc32c(data)))
            n += len(data)
    return got, n, time.monotonic() - t0, delta(before, repo.target.stats)


def check(got: list[tuple[int, int, int]], data: np.ndarray, size: int) -> None:
    """What was restored equals ``data`` (zeros past it and wherever nothing came back)."""
    covered = 0
    last = 0
    for off, n, crc in got:
        assert off >= last, "pieces out of order"
        if data[last:off].any():  # a gap must be zeros
            raise AssertionError(f"restore: data missing in [{last}, {off})")
        want = data[off : off + n].tobytes()
        want += bytes(n - len(want))
        if crc32c(want) != crc:
            raise AssertionError(f"restore: bytes differ in [{off}, {off + n})")
        covered += n
        last = off + n
    if data[last:].any():
        raise AssertionError(f"restore: data missing from {last}")


def pieces_of(data: np.ndarray) -> Callable[[], Any]:
    def gen() -> Any:
        view = memoryview(data)
        for off in range(0, len(data), PIECE):
            yield off, view[off : off + PIECE]

    return gen


def run(args: argparse.Namespace) -> dict[str, Any]:
    size, written = parse_size(args.size), parse_size(args.written)
    raw_bytes, clone_size = parse_size(args.raw), parse_size(args.clone_size)
    assert written <= size and size % PIECE == 0 and written % PIECE == 0
    weed = find_weed()
    version = subprocess.run([weed, "version"], capture_output=True, text=True).stdout.split("\n")[
        0
    ]
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "command": " ".join(sys.argv),
        "s3_server": version.strip(),
        "volume_size": size,
        "written": written,
        "uploads": args.uploads,
        "host_at_start": host(),
    }
    print(f"generating {written / GiB:.2f} GiB of volume data", flush=True)
    data = volume_data(size, written, seed=17)  # the whole volume: one copy in memory
    key = os.urandom(32)
    raw: list[dict[str, Any]] = []

    def raw_once(i: int) -> None:
        r = raw_round(s3, args.uploads, raw_bytes, f"r{i}")
        raw.append(r)
        print(
            f"raw round {i}: PUT {r['put_mb_s']:.0f} MB/s, GET {r['get_mb_s']:.0f} MB/s "
            f"(load {r['host']['loadavg']})",
            flush=True,
        )

    with S3Server(bucket="bench-backup", volume_size_mb=1024) as s3:
        out["s3_endpoint"] = s3.endpoint
        raw_once(0)
        repo = Repository.init(target(s3, "repo"), key, uploads=args.uploads)
        full, full_s, full_req = backup(repo, "vol", size, pieces_of(data[:written]))
        objects, stored_bytes = stored(s3, "repo")
        print(
            f"full backup: {written / full_s / 1e6:.0f} MB/s ({full_s:.1f} s), stored "
            f"{stored_bytes / GiB:.2f} GiB in {objects} objects; requests {full_req} "
            f"(load {host()['loadavg']})",
            flush=True,
        )
        for i in range(1, args.rounds):
            raw_once(i)
            if i == 1:
                got, restored, restore_s, restore_req = restore(repo, full.id)
                check(got, data, size)
                print(
                    f"restore: {restored / restore_s / 1e6:.0f} MB/s ({restore_s:.1f} s, "
                    f"{restored / GiB:.2f} GiB of data); requests {restore_req} "
                    f"(load {host()['loadavg']})",
                    flush=True,
                )
        if args.rounds < 2:
            got, restored, restore_s, restore_req = restore(repo, full.id)
            check(got, data, size)

        # incremental: 1% of the volume's 4 KiB blocks, anywhere in it, new random bytes
        blocks = size // 4096
        rng = np.random.default_rng(18)
        changed = np.sort(rng.choice(blocks, max(1, blocks * args.change // 100), replace=False))
        new_blocks = np.frombuffer(rng.bytes(len(changed) * 4096), dtype=np.uint8)

        def changes() -> Any:
            for j, b in enumerate(changed):
                yield int(b) * 4096, memoryview(new_blocks[j * 4096 : (j + 1) * 4096])

        incr, incr_s, incr_req = backup(repo, "vol", size, changes, parent=full.id, generation=2)
        for j, b in enumerate(changed):
            data[int(b) * 4096 : int(b + 1) * 4096] = new_blocks[j * 4096 : (j + 1) * 4096]
        print(
            f"incremental: {len(changed)} blocks ({incr.bytes_read / MiB:.1f} MiB read, "
            f"{100 * incr.bytes_read / size:.2f}% of the volume), {incr_s:.1f} s, stored "
            f"{incr.bytes_new / MiB:.1f} MiB; requests {incr_req}",
            flush=True,
        )
        got, _, restore_i_s, restore_i_req = restore(repo, incr.id)
        check(got, data, size)
        print(f"incremental restore: whole volume checked ({restore_i_s:.1f} s)", flush=True)
        del data
        objects_after, stored_after = stored(s3, "repo")

        # dedup of clones: the same data under 10 volume names, in a repository of their own
        clone = volume_data(clone_size, clone_size, seed=19)
        crepo = Repository.init(target(s3, "clones"), key, uploads=args.uploads)
        clone_stored = []
        t0 = time.monotonic()
        for i in range(args.clones):
            backup(crepo, f"clone-{i}", clone_size, pieces_of(clone))
            clone_stored.append(stored(s3, "clones")[1])
        clones_s = time.monotonic() - t0
        dedup = clone_stored[-1] / clone_stored[0]
        print(
            f"{args.clones} clones of {clone_size / MiB:.0f} MiB: stored "
            f"{clone_stored[-1] / MiB:.1f} MiB vs {clone_stored[0] / MiB:.1f} MiB for one "
            f"= {dedup:.3f}x ({clones_s:.1f} s)",
            flush=True,
        )

    put = [r["put_mb_s"] for r in raw]
    get = [r["get_mb_s"] for r in raw]
    full_mb_s = written / full_s / 1e6
    restore_mb_s = restored / restore_s / 1e6
    out.update(
        {
            "raw_rounds": raw,
            "raw_put_mb_s": {"median": statistics.median(put), "min": min(put), "max": max(put)},
            "raw_get_mb_s": {"median": statistics.median(get), "min": min(get), "max": max(get)},
            "full_backup": {
                "seconds": full_s,
                "mb_s": full_mb_s,
                "ratio_to_raw_put": full_mb_s / statistics.median(put),
                "upload_mb_s": full.bytes_new / full_s / 1e6,
                "requests": full_req,
                "info": full.to_dict(),
                "objects": objects,
                "stored_bytes": stored_bytes,
                "objects_per_gib_written": objects / (written / GiB),
            },
            "restore": {
                "seconds": restore_s,
                "bytes": restored,
                "mb_s": restore_mb_s,
                "ratio_to_raw_get": restore_mb_s / statistics.median(get),
                "requests": restore_req,
            },
            "incremental": {
                "changed_blocks": len(changed),
                "seconds": incr_s,
                "bytes_read": incr.bytes_read,
                "read_pct_of_volume": 100 * incr.bytes_read / size,
                "requests": incr_req,
                "info": incr.to_dict(),
                "restore_seconds": restore_i_s,
                "restore_requests": restore_i_req,
            },
            "repository_after_both": {"objects": objects_after, "stored_bytes": stored_after},
            "clones": {
                "count": args.clones,
                "size": clone_size,
                "stored_after_each": clone_stored,
                "ratio_all_to_one": dedup,
                "seconds": clones_s,
            },
            "host_at_end": host(),
        }
    )
    return out


def table(r: dict[str, Any]) -> str:
    f, rs, inc, cl = r["full_backup"], r["restore"], r["incremental"], r["clones"]
    put, get = r["raw_put_mb_s"], r["raw_get_mb_s"]
    rows = [
        (
            "raw boto3 multipart PUT (4 MiB parts)",
            f"{put['median']:.0f} MB/s ({put['min']:.0f}-{put['max']:.0f})",
            "",
        ),
        (
            "raw boto3 GET (4 MiB ranges)",
            f"{get['median']:.0f} MB/s ({get['min']:.0f}-{get['max']:.0f})",
            "",
        ),
        (
            "full backup",
            f"{f['mb_s']:.0f} MB/s ({f['seconds']:.1f} s)",
            f"{f['ratio_to_raw_put']:.2f} of raw PUT (>= 0.8)",
        ),
        (
            "restore",
            f"{rs['mb_s']:.0f} MB/s ({rs['seconds']:.1f} s)",
            f"{rs['ratio_to_raw_get']:.2f} of raw GET (>= 0.8)",
        ),
        (
            "incremental, 1% of blocks changed",
            f"{inc['seconds']:.1f} s, read {inc['read_pct_of_volume']:.2f}% of the volume",
            f"requests {inc['requests']}",
        ),
        (
            "objects per GiB written",
            f"{f['objects_per_gib_written']:.1f}",
            f"{f['objects']} objects, {f['stored_bytes'] / GiB:.2f} GiB stored",
        ),
        (f"{cl['count']} clones vs one", f"{cl['ratio_all_to_one']:.3f}x", "(< 1.2)"),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="4GiB", help="the volume's size")
    p.add_argument("--written", default="3GiB", help="how much of it holds data")
    p.add_argument("--rounds", type=int, default=3, help="raw PUT/GET rounds (interleaved)")
    p.add_argument("--raw", default="1GiB", help="bytes per raw round")
    p.add_argument("--uploads", type=int, default=4, help="the repository's upload threads")
    p.add_argument("--change", type=int, default=1, help="percent of blocks changed")
    p.add_argument("--clones", type=int, default=10)
    p.add_argument("--clone-size", default="256MiB")
    p.add_argument("--json", default=DEFAULT_JSON)
    args = p.parse_args()
    r = run(args)
    print()
    print(table(r))
    print(
        f"host: load at start {r['host_at_start']['loadavg']}, at end {r['host_at_end']['loadavg']}"
    )
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
