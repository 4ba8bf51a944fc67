"""Reassembling frames from a byte stream, shared by the codecs. Sans-I/O.

Frames that arrive whole in one chunk are sliced out of it by the codec without copying.
What is left over is kept here: a short tail is prepended to the next chunk; the start of
a large frame (a big write spanning many chunks) is collected and joined once, when it is
complete, instead of being re-copied on every chunk.

Owners that receive with ``readinto`` (asyncio's BufferedProtocol: ``get_buffer`` /
``received``) do better for large frames: once a frame of at least ``DIRECT_MIN`` bytes has
begun, the rest of it is received straight into a buffer of its own, so its payload is
never copied or joined in user space (a 1 MiB write costs its receiver about a third of the
CPU it costs through chunks). That buffer is allocated without zeroing it (``uninitialized``):
``bytearray(n)`` writes n zero bytes that the receive overwrites at once, a memset as long
as the payload (about a tenth of a 1 MiB write's CPU in the engine and in each replica
server); the frame is handed on only when every byte of it was received, so nothing left
in that memory is ever read. Everything else is received into a scratch buffer and handed
on as one copy of exactly what arrived, as a plain Protocol would get it.

The scratch buffer is one per thread, shared by every stream of that thread: an event loop
calls ``get_buffer``, receives into it and calls ``received`` without running anything
else in between, and ``received`` copies what arrived out of it. One scratch buffer per
connection cost 64 KiB each: 20,000 idle connections to a replica server took 1.3 GiB
(issue #14).
"""

from __future__ import annotations

import threading

from cargohold.buffers import uninitialized

SCRATCH = 64 * 1024  # bytes received at once outside a large frame
# ... or up to this many when the transport says that many are waiting (``sizehint``: over
# TLS, uvloop passes the bytes it holds undecrypted): 16 pipelined 4 KiB writes (66 KiB) are
# then decoded in one pass and answered with one write, not in two passes and two writes
SCRATCH_MAX = 256 * 1024
_local = threading.local()


def _shared_scratch() -> bytearray:
    try:
        scratch: bytearray = _local.scratch
    except AttributeError:
        scratch = _local.scratch = bytearray(SCRATCH_MAX)
    return scratch


DIRECT_MIN = 64 * 1024  # frames at least this big are received in place


class StreamBuffer:
    def __init__(self) -> None:
        self._rest = b""
        self._parts: list[bytes] = []
        self._parts_len = 0
        self.need = 0  # set by the codec: total bytes of the incomplete frame, if known
        self.direct = False  # the owner receives through get_buffer/received
        self._frame: bytearray | None = None  # a large frame being received in place
        self._fill = 0
        self._scratch: bytearray | None = None

    @property
    def buffered(self) -> int:
        return len(self._rest) + self._parts_len + (self._fill if self._frame is not None else 0)

    # --- receiving with readinto ---------------------------------------------------------
    def get_buffer(self, sizehint: int = 0) -> memoryview:
        """Where the next bytes from the stream should be received: ``SCRATCH`` bytes, or
        up to ``SCRATCH_MAX`` when the transport hints that more are waiting."""
        self.direct = True
        if self._frame is not None:
            return memoryview(self._frame)[self._fill :]
        self._scratch = _shared_scratch()
        return memoryview(self._scratch)[: min(SCRATCH_MAX, max(SCRATCH, sizehint))]

    def received(self, n: int) -> bytes | bytearray | None:
        """``n`` bytes were received into the last ``get_buffer``: the bytes for the codec
        to parse now, or None while a frame received in place is incomplete."""
        if self._frame is not None:
            self._fill += n
            if self._fill < len(self._frame):
                return None
            frame, self._frame, self._fill, self.need = self._frame, None, 0, 0
            return frame  # exactly one whole frame, which nobody else holds
        assert self._scratch is not None, "received() without get_buffer()"
        return bytes(memoryview(self._scratch)[:n])

    # --- what the codec calls --------------------------------------------------------------
    def take(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | None:
        """The bytes to parse now (what was kept, then ``data``), or None while a large
        frame is still incomplete."""
        if self._parts:
            self._parts.append(bytes(data))
            self._parts_len += len(data)
            if self._parts_len < self.need:
                return None
            out = b"".join(self._parts)
            self._parts, self._parts_len, self.need = [], 0, 0
            return out
        if self._rest:
            out = self._rest + bytes(data)
            self._rest = b""
            return out
        return data if isinstance(data, bytes | bytearray) else bytes(data)

    def keep(self, data: bytes | bytearray, pos: int, header_size: int) -> None:
        """Keep ``data[pos:]``, the unparsed tail, for the next ``take``."""
        if pos >= len(data):
            self.need = 0
            return
        left = len(data) - pos
        if self.direct and left >= header_size and self.need >= DIRECT_MIN and self.need > left:
            frame = uninitialized(self.need)  # the rest is received straight into place
            # through a memoryview: a bytearray's slice assignment from a memoryview
            # copies it into a temporary bytearray first (two copies instead of one)
            memoryview(frame)[:left] = memoryview(data)[pos:]
            self._frame, self._fill = frame, left
            return
        rest = bytes(data[pos:])
        if len(rest) >= header_size and self.need > 4 * len(rest):
            self._parts, self._parts_len = [rest], len(rest)  # big frame: collect, join once
        else:
            self._rest = rest
            self.need = 0


# --- sending over TLS --------------------------------------------------------------------------
# Over TLS every buffer handed to ``writelines`` becomes at least one TLS record of its own
# (uvloop and asyncio call ``SSLObject.write`` once per buffer): a 48-byte header, a 4 KiB
# payload and a 32-byte reply each pay a record's header, tag, cipher set-up and a pass
# through the memory BIO. Joining the small buffers of one loop pass into chunks of up to
# one record's plaintext makes that one record per 16 KiB; large payloads pass unjoined
# (copying a 1 MiB payload to save one record would cost more than the record).
RECORD = 16 * 1024  # a TLS record's largest plaintext (RFC 8446, 5.1)


def coalesce(
    parts: list[bytes | bytearray | memoryview], limit: int = RECORD
) -> list[bytes | bytearray | memoryview]:
    """``parts`` as few buffers as possible, in order: runs of buffers smaller than
    ``limit`` joined into chunks of at most ``limit`` bytes (a single small buffer alone
    stays as it is); buffers of ``limit`` bytes or more alone. Pure."""
    out: list[bytes | bytearray | memoryview] = []
    run: list[bytes | bytearray | memoryview] = []
    size = 0
    for p in parts:
        n = len(p)
        if n >= limit:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run, size = [], 0
            out.append(p)
            continue
        if size + n > limit and run:
            out.append(run[0] if len(run) == 1 else b"".join(run))
            run, size = [], 0
        run.append(p)
        size += n
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out
