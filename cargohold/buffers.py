"""Buffers for large payloads, allocated without zeroing them.

``bytearray(n)`` writes n zeros before the caller overwrites them: a memset as long as a
1 MiB payload, about a tenth of the CPU of receiving or sealing one. ``uninitialized(n)``
is CPython's ``PyByteArray_FromStringAndSize(NULL, n)`` (~1 µs through ctypes): its
contents are whatever the allocator gave; under ``SMALL`` bytes a zeroed ``bytearray`` costs
less than that call and is what it returns. Only for a buffer every byte of which is written
before anything reads it: a frame received in place (``protocol/framing.py``), an extent
sealed whole (``encryption/block_cipher.py``). Pure: no I/O, no asyncio (the codecs use it).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

SMALL = 64 * 1024
"""Below this many bytes ``bytearray(n)``'s zeros cost less than the ctypes call (a 4 KiB
block ~0.2 µs against ~1.5)."""


def _uninitialized_allocator() -> Callable[[int], bytearray]:
    """``uninitialized``, or plain ``bytearray`` (zeroed) where the C API is not there."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, OSError):  # not CPython
        return bytearray
    make.restype = ctypes.py_object
    make.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

    def uninitialized(n: int) -> bytearray:
        if n < SMALL:
            if n < 0:
                raise ValueError(f"a buffer of {n} bytes")
            return bytearray(n)
        buf: bytearray = make(None, n)
        return buf

    return uninitialized


# A buffer not zeroed first: only for one every byte of which is written before anything
# reads it (a frame received in place, an extent sealed whole).
uninitialized = _uninitialized_allocator()
