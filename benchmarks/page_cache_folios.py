#!/usr/bin/env python3
"""Benchmark: what the shape of the page cache costs a replica store's writes and reads,
with no server in the way (a bare loop of system calls on one file).

The kernel sizes the folios a buffered write creates by the write's length (Linux 6.18,
ext4), and a small write into a large folio walks all its buffer heads. For each way of
writing a file whole with 1 MiB of data at a time (``--modes``: one ``pwrite`` of 1 MiB,
pieces of N bytes, one ``pwritev`` of 64 KiB buffers, ``RWF_DONTCACHE``), on a file whose
page cache was dropped first, it writes the file twice and reports: the second pass's CPU
per MiB (overwriting what the first left cached), then the system time of 4 KiB random
reads, of 4 KiB random writes, and of 1 MiB sequential reads after it. Modes are
interleaved and repeated (``--repeats``). Used for docs/benchmarks.md, "Replica server
→ Large folios".

    .venv/bin/python benchmarks/page_cache_folios.py [--dir /tmp] [--size 256MiB] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.cli.units import parse_size  # noqa: E402

MIB = 1 << 20
RWF_DONTCACHE = 0x80  # Linux 6.14+; not in Python 3.11's os
MODES = ["1048576", "dontcache", "262144", "131072", "65536", "32768", "16384", "iov64K"]


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


def write_whole(fd: int, size: int, mode: str, buf: memoryview) -> tuple[float, float]:
    """The file written whole once in ``mode`` -> (CPU, system) µs per MiB."""
    t0, s0 = cpu()
    for off in range(0, size, MIB):
        if mode == "dontcache":
            os.pwritev(fd, [buf], off, RWF_DONTCACHE)
        elif mode == "iov64K":
            os.pwritev(fd, [buf[i : i + 65536] for i in range(0, MIB, 65536)], off)
        else:
            piece = int(mode)
            for i in range(0, MIB, piece):
                os.pwrite(fd, buf[i : i + piece], off + i)
    t1, s1 = cpu()
    return (t1 - t0) * 1e6 * MIB / size, (s1 - s0) * 1e6 * MIB / size


def random_4k(fd: int, size: int, write: bool, n: int = 20000) -> float:
    """System µs per 4 KiB random read or write."""
    rnd = random.Random(1)
    buf = os.urandom(4096)
    _, s0 = cpu()
    for _ in range(n):
        off = rnd.randrange(size // 4096) * 4096
        if write:
            os.pwrite(fd, buf, off)
        else:
            os.pread(fd, 4096, off)
    return (cpu()[1] - s0) * 1e6 / n


def sequential_read(fd: int, size: int) -> float:
    """System µs per 1 MiB sequential read."""
    _, s0 = cpu()
    for off in range(0, size, MIB):
        os.pread(fd, MIB, off)
    return (cpu()[1] - s0) * 1e6 * MIB / size


def one(directory: str, size: int, mode: str) -> dict[str, float]:
    buf = memoryview(os.urandom(MIB))
    fd, path = tempfile.mkstemp(dir=directory, prefix="folios-")
    try:
        os.ftruncate(fd, size)
        write_whole(fd, size, "1048576", buf)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)  # start from an empty cache
        write_whole(fd, size, mode, buf)
        os.fsync(fd)
        total, system = write_whole(fd, size, mode, buf)
        os.fsync(fd)
        return {
            "overwrite_cpu_us_per_mib": total,
            "overwrite_sys_us_per_mib": system,
            "randread_4k_sys_us": random_4k(fd, size, write=False),
            "randwrite_4k_sys_us": random_4k(fd, size, write=True),
            "seqread_1m_sys_us": sequential_read(fd, size),
        }
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=None, help="where the file lives (default: a temp dir)")
    ap.add_argument("--size", default="256MiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    size = parse_size(args.size)
    modes = args.modes.split(",")
    directory = args.dir or tempfile.gettempdir()
    for rep in range(args.repeats):
        for mode in modes if rep % 2 == 0 else modes[::-1]:
            r = one(directory, size, mode)
            print(f"{rep + 1} {mode:10} " + "  ".join(f"{k} {v:.1f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
