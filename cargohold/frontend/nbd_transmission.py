"""The transmission phase of an NBD connection: what each request does to the device.

``Transmission`` is the half of ``NBDConnection`` (``nbd_connection.py``) that runs once
the option phase is over: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES, BLOCK_STATUS and CACHE
against the connection's BlockDevice, each request in a task of its own, its reply (or
its error: ``RequestError`` → the NBD errno) handed back to the connection to send. An
aligned WRITE to a device that can start one without waiting (``write_nowait``: the
engine's volume) takes no task: its reply is sent from the device's callback
(``_write_now``).

Unaligned requests: a client that negotiated block sizes (NBD_INFO_BLOCK_SIZE in NBD_OPT_GO)
was told the minimum is 4 KiB, and the codec answers its unaligned requests with EINVAL.
Every other client was told the minimum is 1: its unaligned reads read the covering blocks,
and its unaligned writes, trims and zeroes read-modify-write the partial blocks while
holding an exclusive lock on the 4 KiB-aligned span (``SpanLocks``, shared by every
connection to the device; aligned writes take the span shared, so they never wait for
one another, only for a read-modify-write on the same blocks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cargohold.errors import RequestError, Unsupported
from cargohold.frontend.device import BlockDevice
from cargohold.protocol import nbd

if TYPE_CHECKING:
    from cargohold.frontend.nbd_server import NBDServer

log = logging.getLogger("cargohold.nbd")

ZERO_CHUNK = 1024 * 1024
_ZEROES = bytes(ZERO_CHUNK)


class SpanLocks:
    """Byte-range locks over one device: exclusive for read-modify-write, shared for plain
    writes. The common case (nothing exclusive held) takes no scan and no await."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[int, int, bool]] = {}
        self._exclusive = 0
        self._next = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _conflicts(self, lo: int, hi: int, exclusive: bool) -> bool:
        if not exclusive and not self._exclusive:
            return False
        return any(a < hi and lo < b and (ex or exclusive) for a, b, ex in self._held.values())

    async def acquire(self, lo: int, hi: int, exclusive: bool) -> int:
        while self._conflicts(lo, hi, exclusive):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        token = self._next
        self._next += 1
        self._held[token] = (lo, hi, exclusive)
        self._exclusive += exclusive
        return token

    def try_acquire(self, lo: int, hi: int) -> int | None:
        """A shared hold without waiting (a write started without a task), or None when
        an exclusive one is held anywhere: then ``acquire`` it."""
        if self._exclusive:
            return None
        token = self._next
        self._next += 1
        self._held[token] = (lo, hi, False)
        return token

    def release(self, token: int) -> None:
        _, _, exclusive = self._held.pop(token)
        self._exclusive -= exclusive
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    @property
    def held(self) -> int:
        return len(self._held)


class Transmission:
    """The requests of one connection, run against its device (a mixin of NBDConnection,
    which supplies the device, the codec, the server and ``_send``)."""

    device: BlockDevice
    codec: nbd.ServerConnection
    server: NBDServer
    _send: Callable[[list], None]
    _finished_now: Callable[[], None]
    now_writes: int  # writes in flight without a task (``_write_now``)

    async def _run(self, req: nbd.Request) -> None:
        codec = self.codec
        try:
            out = await self._handle(req)
        except RequestError as e:
            out = codec.reply_error(req.handle, e.errno, str(e))
        except Exception as e:  # a bug must not take the connection or the server down
            log.exception("NBD %s failed", nbd.command_name(req.cmd))
            out = codec.reply_error(req.handle, 5, f"internal error: {e}")
        self._send(out)

    def _write_now(self, req: nbd.Request, write_nowait: Callable[..., bool]) -> bool:
        """An aligned WRITE started without a task (``BlockDevice.write_nowait``): its span
        held shared, its reply sent from the device's callback. False: nothing started
        (a read-modify-write holds a span, or the device cannot start it now): spawn it."""
        locks = self.server.locks
        off, payload = req.offset, req.data
        assert payload is not None
        token = locks.try_acquire(off, off + req.length)
        if token is None:
            return False
        handle = req.handle

        def done(err: Exception | None) -> None:
            locks.release(token)
            codec = self.codec
            if err is None:
                out = codec.reply_ok(handle)
            elif isinstance(err, RequestError):
                out = codec.reply_error(handle, err.errno, str(err))
            else:
                out = codec.reply_error(handle, 5, f"internal error: {err}")
            self._send(out)
            self._finished_now()

        self.now_writes += 1
        if not write_nowait(off, payload, bool(req.flags & nbd.CMD_FLAG_FUA), done):
            self.now_writes -= 1
            locks.release(token)
            return False
        return True

    async def _handle(self, req: nbd.Request) -> list:
        cmd, off, n = req.cmd, req.offset, req.length
        dev = self.device
        codec = self.codec
        bs = dev.block_size
        if cmd == nbd.CMD_READ:
            if not (off | n) % bs:
                return codec.reply_read(req.handle, off, await dev.read(off, n))
            lo, hi = _outward(off, n, bs)
            data = memoryview(await dev.read(lo, hi - lo))
            return codec.reply_read(req.handle, off, data[off - lo : off - lo + n])
        fua = bool(req.flags & nbd.CMD_FLAG_FUA)
        if cmd == nbd.CMD_WRITE:
            payload = req.data
            assert payload is not None
            if not (off | n) % bs:
                await self._locked(off, off + n, False, lambda: dev.write(off, payload, fua))
            else:
                await self._rmw_write(off, payload, fua)
        elif cmd == nbd.CMD_FLUSH:
            await dev.flush()
        elif cmd == nbd.CMD_WRITE_ZEROES:
            await self._write_zeroes(off, n, req.flags)
        elif cmd == nbd.CMD_TRIM:
            lo, hi = -(-off // bs) * bs, (off + n) // bs * bs  # only whole blocks: a hint
            if hi > lo:
                await self._locked(lo, hi, False, lambda: dev.trim(lo, hi - lo))
            if fua:
                await dev.flush()
        elif cmd == nbd.CMD_BLOCK_STATUS:
            return codec.reply_block_status(req.handle, await self._block_status(req))
        # CMD_CACHE: a hint; every read is served from the store anyway
        return codec.reply_ok(req.handle)

    async def _locked(self, lo: int, hi: int, exclusive: bool, fn: Callable) -> None:
        locks = self.server.locks
        token = await locks.acquire(lo, hi, exclusive)
        try:
            await fn()
        finally:
            locks.release(token)

    async def _rmw_write(self, off: int, data: memoryview, fua: bool) -> None:
        """Unaligned write: merge the partial edge blocks with what they hold."""
        dev = self.device
        bs = dev.block_size
        n = len(data)
        lo, hi = _outward(off, n, bs)
        locks = self.server.locks
        token = await locks.acquire(lo, hi, True)
        try:
            buf = bytearray(hi - lo)
            if hi - lo == bs:
                buf[:] = await dev.read(lo, bs)
            else:
                if off != lo:
                    buf[:bs] = await dev.read(lo, bs)
                if off + n != hi:
                    buf[-bs:] = await dev.read(hi - bs, bs)
            buf[off - lo : off - lo + n] = data
            await dev.write(lo, memoryview(buf), fua)
        finally:
            locks.release(token)

    async def _write_zeroes(self, off: int, n: int, flags: int) -> None:
        dev = self.device
        bs = dev.block_size
        fua = bool(flags & nbd.CMD_FLAG_FUA)
        if flags & nbd.CMD_FLAG_NO_HOLE:
            if flags & nbd.CMD_FLAG_FAST_ZERO:
                raise Unsupported("zeroing without holes is not fast here")
            for pos in range(off, off + n, ZERO_CHUNK):  # per MiB, not per block
                chunk = memoryview(_ZEROES)[: min(ZERO_CHUNK, off + n - pos)]
                if (pos | len(chunk)) % bs:
                    await self._rmw_write(pos, chunk, fua)
                else:
                    write = functools.partial(dev.write, pos, chunk, fua)
                    await self._locked(pos, pos + len(chunk), False, write)
            return
        if not (off | n) % bs:
            await self._locked(off, off + n, False, lambda: dev.write_zeroes(off, n, fua))
            return
        lo, hi = -(-off // bs) * bs, (off + n) // bs * bs  # the whole blocks inside
        if hi <= lo:  # within one block, or two partial ones
            await self._rmw_write(off, memoryview(_ZEROES)[:n], fua)
            return
        if off < lo:
            await self._rmw_write(off, memoryview(_ZEROES)[: lo - off], fua)
        await self._locked(lo, hi, False, lambda: dev.write_zeroes(lo, hi - lo, fua))
        if off + n > hi:
            await self._rmw_write(hi, memoryview(_ZEROES)[: off + n - hi], fua)

    async def _block_status(self, req: nbd.Request) -> list[tuple[int, int]]:
        bs = self.device.block_size
        off, n = req.offset, req.length
        lo, hi = _outward(off, n, bs)
        runs = await self.device.block_status(lo, hi - lo)
        out: list[tuple[int, int]] = []
        skip = off - lo
        left = n
        for length, flags in runs:
            if skip:
                cut = min(skip, length)
                length -= cut
                skip -= cut
            length = min(length, left)
            if length <= 0:
                continue
            out.append((length, flags))
            left -= length
            if left == 0 or len(out) >= nbd.MAX_BLOCK_STATUS_EXTENTS:
                break
        if not out:  # the device said nothing we can use: "unknown" is always true
            out = [(n, 0)]
        if req.flags & nbd.CMD_FLAG_REQ_ONE:
            out = out[:1]
        return out


def _outward(off: int, n: int, bs: int) -> tuple[int, int]:
    """The block-aligned span covering [off, off + n)."""
    return off // bs * bs, -(-(off + n) // bs) * bs
