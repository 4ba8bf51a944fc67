"""BackupReader: a backup's data, in volume order, verified.

Made by ``Repository.restore_reader``; the caller (the engine's restore operation, or a test)
asks for ``extents()`` (where data lies; the rest of the volume reads as zeros) and iterates
``read_all()``. Blobs are fetched ahead by a small thread pool (one ranged GET per chunk a
cell uses), authenticated, decompressed and checked against their chunk id; a bad one raises
``errors.ChecksumError`` naming the chunk and the pack. The reader holds a restore lease from
its creation until ``read_all`` finishes or ``close()``, so GC leaves its chunks alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from cargohold.backup import format as fmt
from cargohold.backup.catalog import BackupInfo
from cargohold.backup.chunk_map import ChunkMap, Extent
from cargohold.backup.keys import RepoKeys
from cargohold.backup.leases import Lease
from cargohold.backup.targets import Target
from cargohold.errors import CargoholdError, InvalidArgument, NotFound

PREFETCH = 8  # cells fetched ahead of the one being returned


class BackupReader:
    def __init__(
        self,
        target: Target,
        keys: RepoKeys,
        info: BackupInfo,
        chunk_map: ChunkMap,
        locate: Callable[[bytes, bool], fmt.Location],
        lease: Lease | None,
        workers: int,
    ) -> None:
        self.target, self.keys, self.info, self.map = target, keys, info, chunk_map
        self._locate = locate
        self._lease = lease
        self._workers = workers
        self.bytes_fetched = 0

    def extents(self) -> list[tuple[int, int]]:
        """(offset, length) of the ranges holding data, merged, in order."""
        out: list[tuple[int, int]] = []
        for e in self.map.extents():
            if out and out[-1][0] + out[-1][1] == e.offset:
                out[-1] = (out[-1][0], out[-1][1] + e.length)
            else:
                out.append((e.offset, e.length))
        return out

    def chunk(self, cid: bytes) -> bytes:
        """One chunk's plaintext, verified."""
        loc = self._locate(cid, False)
        try:
            blob = self.target.get(loc.pack, loc.offset, loc.length)
        except NotFound:
            blob = None
        if blob is None:  # GC may have swept a duplicate copy: read the index again
            loc = self._locate(cid, True)
            try:
                blob = self.target.get(loc.pack, loc.offset, loc.length)
            except NotFound:
                raise NotFound(
                    f"chunk {cid.hex()}: its pack {loc.pack} is missing from {self.target.describe()}",
                    chunk=cid.hex(),
                    object=loc.pack,
                ) from None
        self.bytes_fetched += len(blob)
        return self.keys.open_blob(cid, loc.flags, loc.raw, blob, loc.pack)

    def _cells(self) -> list[list[Extent]]:
        return [self.map.cells[c] for c in sorted(self.map.cells)]

    def read_all(self, max_bytes: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
        """(offset, data) pieces covering every extent, in offset order; contiguous data is
        joined up to ``max_bytes`` a piece. Zeros are not returned."""
        if max_bytes < fmt.BLOCK or max_bytes % fmt.BLOCK:
            raise InvalidArgument(f"max_bytes must be a positive multiple of {fmt.BLOCK}")
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="bk-restore")
        try:
            cells = self._cells()
            ahead: deque[dict[bytes, Future[bytes]]] = deque()

            def fetch(i: int) -> None:
                ahead.append(
                    {
                        cid: pool.submit(self.chunk, cid)
                        for cid in dict.fromkeys(e.chunk for e in cells[i])
                    }
                )

            for i in range(min(PREFETCH, len(cells))):
                fetch(i)
            start, parts, size = -1, list[bytes](), 0
            for i, cell in enumerate(cells):
                futures = ahead.popleft()
                if i + PREFETCH < len(cells):
                    fetch(i + PREFETCH)
                data = {cid: f.result() for cid, f in futures.items()}
                for e in cell:
                    pos = 0
                    while pos < e.length:
                        if parts and (start + size != e.offset + pos or size >= max_bytes):
                            yield start, b"".join(parts)
                            parts, size = [], 0
                        if not parts:
                            start = e.offset + pos
                        take = min(e.length - pos, max_bytes - size)
                        parts.append(data[e.chunk][e.coff + pos : e.coff + pos + take])
                        size += take
                        pos += take
            if parts:
                yield start, b"".join(parts)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def close(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            try:
                lease.release()
            except CargoholdError:
                pass

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
