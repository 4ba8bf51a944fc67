"""Reassembling frames from a byte stream, shared by the codecs. Sans-I/O.

Frames that arrive whole in one chunk are sliced out of it by the codec without copying.
What is left over is kept here: a short tail is prepended to the next chunk; the start of
a large frame (a big write spanning many chunks) is collected and joined once, when it is
complete, instead of being re-copied on every chunk.
"""

from __future__ import annotations


class StreamBuffer:
    def __init__(self) -> None:
        self._rest = b""
        self._parts: list[bytes] = []
        self._parts_len = 0
        self.need = 0  # set by the codec: total bytes of the incomplete frame, if known

    @property
    def buffered(self) -> int:
        return len(self._rest) + self._parts_len

    def take(self, data: bytes | bytearray | memoryview) -> bytes | None:
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
        return data if isinstance(data, bytes) else bytes(data)

    def keep(self, data: bytes, pos: int, header_size: int) -> None:
        """Keep ``data[pos:]``, the unparsed tail, for the next ``take``."""
        if pos >= len(data):
            self.need = 0
            return
        rest = data[pos:]
        if len(rest) >= header_size and self.need > 4 * len(rest):
            self._parts, self._parts_len = [rest], len(rest)  # big frame: collect, join once
        else:
            self._rest = rest
            self.need = 0
