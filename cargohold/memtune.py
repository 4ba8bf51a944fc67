"""Process-level memory and GC tuning for the long-lived data-path processes (engine,
nbd-serve, replica server). Nothing here is needed for correctness; every call is a no-op
where it does not apply (not glibc, or ``CARGOHOLD_MALLOC_TUNE=0``).

Why: each 1 MiB payload is joined into a fresh buffer. With glibc's defaults, a freed
buffer at the top of the heap is trimmed (``brk``) at once, so the next one faults in 256
zeroed pages: about half of the CPU of a 1 MiB read or write. Raising the mmap and trim
thresholds keeps those pages in the heap; ``IdleTrim`` hands them back to the kernel once
the process has been idle for a few seconds, so an idle volume's RSS stays low.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
from collections.abc import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 64 * 1024 * 1024
IDLE_SECONDS = 5.0

_libc: ctypes.CDLL | None = None
_loaded = False


def _glibc() -> ctypes.CDLL | None:
    global _libc, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("CARGOHOLD_MALLOC_TUNE", "1") == "0":
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no mallopt knobs)
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = libc
        except (OSError, AttributeError):
            _libc = None
    return _libc


def tune_malloc() -> bool:
    """At process start: large buffers stay in the heap instead of being mmap'd and
    unmapped (or trimmed) after every request. True if applied."""
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    ok &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(ok)


def trim() -> None:
    """Give free heap memory back to the kernel (``malloc_trim(0)``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


GC_THRESHOLD = (50_000, 20, 20)  # allocations before a young collection; then per older one


def freeze_gc() -> None:
    """After start-up: move every object allocated so far out of the collector's sight, so
    collections during I/O scan only what the I/O allocates; and collect the young
    generation every 50,000 allocations instead of 700. Requests allocate a few objects
    each and free them at once (reference counting), so a young collection finds little
    either way: done 70 times less often, it stops showing in the tail latency of small
    writes. Set ``CARGOHOLD_GC_DEFAULT=1`` to keep Python's thresholds."""
    gc.collect()
    gc.freeze()
    if os.environ.get("CARGOHOLD_GC_DEFAULT", "0") != "1":
        gc.set_threshold(*GC_THRESHOLD)


class IdleTrim:
    """Calls ``trim`` once the process has done no I/O for ``idle`` seconds (then not again
    until it has done some). ``activity`` returns a number that changes with every request
    (a counter); it is polled every ``idle`` seconds, so the cost during I/O is nil."""

    def __init__(self, activity: Callable[[], int], idle: float = IDLE_SECONDS) -> None:
        self.activity = activity
        self.idle = idle
        self._last = activity()
        self._trimmed = True  # nothing to give back before the first request
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> IdleTrim:
        if _glibc() is not None:
            self._handle = asyncio.get_running_loop().call_later(self.idle, self._tick)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.activity()
        if now != self._last:
            self._last = now
            self._trimmed = False
        elif not self._trimmed:
            gc.collect()  # cycles left by closed connections (thresholds are high: freeze_gc)
            trim()
            self._trimmed = True
        self._handle = asyncio.get_running_loop().call_later(self.idle, self._tick)
