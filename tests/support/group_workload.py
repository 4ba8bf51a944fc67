"""A workload with a cross-volume invariant, for group snapshot tests: record i is written
to volume A (block i), and only after A acknowledged it is commit marker i written to
volume B (block i). Any crash-consistent picture of the pair shows no marker without its
record. Runs under Debian's /usr/bin/python3 (libnbd's Python bindings):

    /usr/bin/python3 tests/support/group_workload.py URI_A URI_B BLOCKS PROGRESS_FILE STOP_FILE

It writes until STOP_FILE exists or BLOCKS records are written, writes the number of
acknowledged records to PROGRESS_FILE every 16 records, and at the end prints a JSON line:
{"records": N, "max_write_ms": M} (M: the longest single write: a hold shows there).
``check(a, b)`` (importable) checks a pair of images.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

BLOCK = 4096
RECORD, MARKER = b"RECORD\0\0", b"COMMIT\0\0"


def block(magic: bytes, i: int) -> bytes:
    head = magic + struct.pack("<Q", i)
    return (
        head
        + bytes((i + k) & 0xFF for k in range(64)) * ((BLOCK - len(head)) // 64)
        + b"\0" * ((BLOCK - len(head)) % 64)
    )


def parse(data: bytes, magic: bytes) -> set[int]:
    """The indexes of the intact blocks of kind ``magic`` in an image."""
    out = set()
    for i in range(len(data) // BLOCK):
        b = data[i * BLOCK : (i + 1) * BLOCK]
        if b[:8] == magic and struct.unpack("<Q", b[8:16])[0] == i and b == block(magic, i):
            out.add(i)
    return out


def check(a: bytes, b: bytes) -> tuple[set[int], set[int]]:
    """(records, markers) of a pair of images; AssertionError for a marker without its record."""
    records, markers = parse(a, RECORD), parse(b, MARKER)
    orphans = sorted(markers - records)
    assert not orphans, f"commit markers without their records: {orphans[:20]}"
    return records, markers


def main() -> int:
    import nbd  # Debian's python3-libnbd

    uri_a, uri_b, blocks, progress, stop = sys.argv[1:6]
    ha, hb = nbd.NBD(), nbd.NBD()
    ha.connect_uri(uri_a)
    hb.connect_uri(uri_b)
    worst = 0.0
    n = 0
    while n < int(blocks) and not os.path.exists(stop):
        t = time.monotonic()
        ha.pwrite(block(RECORD, n), n * BLOCK)  # acknowledged when pwrite returns
        worst = max(worst, time.monotonic() - t)
        t = time.monotonic()
        hb.pwrite(block(MARKER, n), n * BLOCK)
        worst = max(worst, time.monotonic() - t)
        n += 1
        if n % 16 == 0:
            with open(progress + ".tmp", "w") as f:
                f.write(str(n))
            os.replace(progress + ".tmp", progress)
    ha.shutdown()
    hb.shutdown()
    print(json.dumps({"records": n, "max_write_ms": round(worst * 1000, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
