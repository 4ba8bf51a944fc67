"""``cargohold volume import`` through a local cluster of real processes: a sparse 1 GiB
raw image with three data extents becomes a volume whose allocation map (``nbdinfo --map``,
libnbd's base:allocation) shows the same three data extents, and whose bytes equal the
image's (nbdcopy). Holes stay holes: only the data is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import cli
from tests.support.cluster_logs import failed, local_cluster
from tests.support.nbd_clients import need

MiB, GiB = 1 << 20, 1 << 30
EXTENTS = [(0, 3 * MiB), (300 * MiB + 4096 * 5, 1 * MiB + 8192), (GiB - 2 * MiB, 2 * MiB)]


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Path]:
    need("nbdcopy", "nbdinfo")
    with local_cluster("imp", lambda: failed(request)) as d:
        yield d


def data_map(uri: str) -> list[tuple[int, int]]:
    """The data extents of an NBD export (``nbdinfo --map --json``), adjacent ones merged."""
    p = subprocess.run(
        ["nbdinfo", "--map", "--json", uri], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    out: list[tuple[int, int]] = []
    for e in json.loads(p.stdout):
        if e["type"] & 1:  # a hole
            continue
        if out and out[-1][0] + out[-1][1] == e["offset"]:
            out[-1] = (out[-1][0], out[-1][1] + e["length"])
        else:
            out.append((e["offset"], e["length"]))
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.long  # about 70 s with the cluster (1 GiB read back)
def test_a_sparse_image_imports_with_its_holes(cluster: Path, tmp_path: Path) -> None:
    d = cluster
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(GiB)
        for off, length in EXTENTS:
            f.seek(off)
            f.write(os.urandom(length))
    # the image itself has those extents (the file system keeps the holes)
    fd = os.open(img, os.O_RDONLY)
    try:
        from cargohold.cli.sparse_source import data_extents

        assert list(data_extents(fd, GiB)) == EXTENTS
    finally:
        os.close(fd)

    out = cli(d, "volume", "import", "disk", "--from", str(img), "--replicas", "2", "-o", "json")
    vol = json.loads(out.stdout)
    assert vol["size_bytes"] == GiB and vol["bytes_written"] == sum(n for _, n in EXTENTS), vol
    assert vol["state"] == "detached", vol
    uri = cli(d, "volume", "attach", "disk", "--node", "node-2").stdout.strip()
    assert data_map(uri) == EXTENTS
    back = tmp_path / "back.img"
    p = subprocess.run(["nbdcopy", uri, str(back)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert sha256_of(back) == sha256_of(img)
    # the volume's size is a multiple of 4 KiB; a name in use is refused, nothing changed
    again = cli(d, "volume", "import", "disk", "--from", str(img), check=False)
    assert again.returncode != 0 and "already exists" in again.stderr, again.stderr
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"\x07" * 5000)
    vol = json.loads(cli(d, "volume", "import", "odd", "--from", str(odd), "-o", "json").stdout)
    assert vol["size_bytes"] == 8192 and vol["bytes_written"] == 8192  # whole blocks
    small = cli(d, "volume", "import", "small", "--from", str(img), "--size", "1MiB", check=False)
    assert small.returncode != 0 and "smaller than" in small.stderr, small.stderr
