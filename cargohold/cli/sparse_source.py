"""The data of a raw image or a block device, found without reading its holes: what
``cargohold volume import`` writes (cli/volume_import_cmd.py). SEEK_DATA/SEEK_HOLE find the
data extents of a file on a file system that keeps holes; within them, chunks of zeros are
skipped too (block devices and images without holes read zeros there)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from cargohold.errors import ConfigError

CHUNK = 1 << 20  # one write at most; an all-zero chunk is skipped


def source_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise ConfigError("--from must be a regular file (a raw image) or a block device")


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data extent of ``fd`` (SEEK_DATA/SEEK_HOLE); the whole
    range when the file system or device cannot say."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size - pos
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            yield start, end - start
        pos = end


def pieces(fd: int, size: int, block: int = 4096) -> Iterator[tuple[int, bytes]]:
    """(offset, data) of every non-zero chunk of ``fd``'s data, in order, aligned to
    ``block`` (an extent is widened to whole blocks; past the end of the source, zeros)."""
    zero = bytes(CHUNK)
    for start, length in data_extents(fd, size):
        off = start - start % block
        end = -(-(start + length) // block) * block
        while off < end:
            n = min(CHUNK, end - off)
            data = os.pread(fd, n, off)
            if len(data) < n and off + len(data) < size:
                raise ConfigError(f"--from: short read at byte {off}")
            data += bytes(n - len(data))  # the source ends inside the last block
            if data != zero[:n]:
                yield off, data
            off += n
