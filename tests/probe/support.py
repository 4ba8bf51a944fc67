"""Helpers for the probe tests: a replica server that can be killed from a timer, and block
patterns that make every value read back traceable to the write that put it there.

``ProbeServer`` is ``tests.support.processes.ServerProc`` plus ``kill_now`` (SIGKILL to the process this
object started, without waiting: safe from a timer callback) and ``log_tail`` (the end of the
server's output, for failure messages). ``kill`` (inherited) reaps the process.

Block patterns: every 4 KiB block a probe writes names the block and the write's sequence
number in a header and a trailer, with filler derived from both in between, so any value read
back can be traced to exactly one write, and a torn mix of two writes is recognised.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct

from tests.support.processes import ServerProc

BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)

_TAG = struct.Struct("<4sIQ")  # magic, block number, sequence number: 16 bytes
_MAGIC = b"PRB1"
_FILL = BLOCK - 2 * _TAG.size  # 4064 = 127 * 32


class ProbeServer(ServerProc):
    """A real ``cargohold replica-server`` process (see ``tests.support.processes.ServerProc``)."""

    def start(self, timeout: float = 20.0) -> ProbeServer:
        super().start(timeout)
        return self

    def kill_now(self) -> None:
        """SIGKILL this server's process and return at once (safe to call from a timer)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        output = getattr(self, "output", None)
        text = output() if output is not None else ""
        return "\n".join(text.splitlines()[-n:])


def pattern(block: int, seq: int) -> bytes:
    """The content of ``block`` as written by the write with sequence number ``seq`` (> 0)."""
    tag = _TAG.pack(_MAGIC, block, seq)
    fill = hashlib.blake2b(tag, digest_size=32).digest() * (_FILL // 32)
    return tag + fill + tag


def patterns(first_block: int, nblocks: int, seq: int) -> bytes:
    return b"".join(pattern(first_block + i, seq) for i in range(nblocks))


def identify(block: int, data: bytes | memoryview) -> int | str:
    """What a block read back holds: 0 for zeros, the sequence number of the write whose
    pattern it is, or a string describing why it is neither (garbage, torn, misplaced)."""
    data = bytes(data)
    if data == ZERO_BLOCK:
        return 0
    magic, blk, seq = _TAG.unpack_from(data, 0)
    if magic != _MAGIC:
        tmagic, tblk, tseq = _TAG.unpack_from(data, BLOCK - _TAG.size)
        if tmagic == _MAGIC:
            return f"torn: head is not a pattern, tail is block {tblk} write #{tseq}"
        return f"garbage (first bytes {data[:16].hex()})"
    if blk != block:
        return f"misplaced: pattern of block {blk} write #{seq}"
    if seq > 0 and data == pattern(block, seq):
        return seq
    tmagic, tblk, tseq = _TAG.unpack_from(data, BLOCK - _TAG.size)
    if tmagic == _MAGIC and (tblk, tseq) != (blk, seq):
        return f"torn: head is write #{seq}, tail is block {tblk} write #{tseq}"
    return f"torn or corrupt: header says write #{seq} but the content differs from it"
