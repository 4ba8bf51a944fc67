"""The replica wire protocol: framing between volume engines and replica servers. Sans-I/O.

Binary, versioned, pipelined: every request carries a 64-bit id, many may be in flight on
one connection, replies may come back in any order. Bulk data travels raw after the
header; control arguments and results are small JSON objects. Layout and op table:
docs/formats/replica-wire.md (keep in step with this module).

A broken frame (bad magic, oversized payload) raises ``RemoteProtocolError``: drop the
connection. A well-framed request that is wrong (unknown op, bad JSON, bad range) is the
server's business: it answers with an error status and goes on.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cargohold.constants import MAX_IO_BYTES
from cargohold.errors import InvalidArgument, RemoteProtocolError, Unsupported
from cargohold.protocol.framing import StreamBuffer

VERSION = 2
VERSIONS_SUPPORTED = frozenset({1, 2})
"""Version 2 adds WRITE_BATCH (op 21); a client uses it only with a server whose HELLO says
version 2 or more. The frame layouts of version 1 do not change."""

REQUEST_MAGIC = b"CHRQ"
REPLY_MAGIC = b"CHRP"
# magic, op, flags, request id, offset, length, payload length, generation
REQUEST = struct.Struct("<4sHHQQIIQ")
# magic, status, request id, generation, payload length, reserved
REPLY = struct.Struct("<4sIQQII")
MAX_PAYLOAD = MAX_IO_BYTES + 64 * 1024  # largest write, or an export chunk with its records


class Op(enum.IntEnum):
    HELLO = 1
    CREATE = 2
    DELETE = 3
    LIST = 4
    OPEN = 5
    CLOSE = 6
    READ = 16
    WRITE = 17
    FLUSH = 18
    TRIM = 19
    WRITE_ZEROES = 20
    WRITE_BATCH = 21  # version 2: several WRITEs in one frame, one reply (below)
    SNAPSHOT_CREATE = 32
    SNAPSHOT_LIST = 33
    SNAPSHOT_DELETE = 34
    SNAPSHOT_REVERT = 35
    INFO = 48
    CHANGED = 49
    EXPORT = 50
    IMPORT = 51
    SCRUB = 52
    STATS = 53
    EXPAND = 54
    EXTENTS = 55
    REPAIR = 56
    MARK_CURRENT = 57
    CHECKSUMS = 58


OPS = frozenset(int(o) for o in Op)
FLAG_FUA = 1  # WRITE: durable before the reply
STATUS_OK = 0
MUTATIONS = frozenset({Op.WRITE, Op.TRIM, Op.WRITE_ZEROES, Op.SNAPSHOT_REVERT})
"""Ops that must carry the engine's generation (a request with generation 0 is refused)."""

# CHECKSUMS result: magic, version, flags, first block, blocks covered, digest window
CHECKSUMS_MAGIC = b"CHCK"
CHECKSUMS_VERSION = 1
CHECKSUMS_HEADER = struct.Struct("<4sHHQII")  # 24 bytes, then u32 values
CHECKSUMS_FLAG_DIGESTS = 1  # values are per window of ``digest_blocks`` blocks, not per block
MAX_CHECKSUM_BLOCKS = 1 << 19
"""Blocks one CHECKSUMS call covers at most (2 GiB of volume; a 2 MiB per-block map)."""


@dataclass(slots=True)
class Request:
    """One request. Not frozen, as ``Reply``: a replica server makes one per frame it is
    sent, and a frozen dataclass's ``__init__`` costs three times a plain one's; nothing
    changes it."""

    op: int
    flags: int
    id: int
    offset: int
    length: int
    payload: memoryview | bytes
    generation: int = 0  # mutations: the engine's number for it (0 = the replica numbers it)

    def args(self) -> dict[str, Any]:
        """The request's JSON arguments; a bad body is a bad request (InvalidArgument)."""
        return parse_json(self.payload)


@dataclass(slots=True)
class Reply:
    """One reply. Not frozen: the engine makes one per write per replica, and a frozen
    dataclass's ``__init__`` costs three times a plain one's; nothing changes it."""

    status: int
    id: int
    generation: int
    payload: memoryview | bytes

    def result(self) -> dict[str, Any]:
        return parse_json(self.payload)


def parse_json(payload: memoryview | bytes) -> dict[str, Any]:
    if not payload:
        return {}
    try:
        out = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"arguments are not valid JSON: {e}") from None
    if not isinstance(out, dict):
        raise InvalidArgument("arguments must be a JSON object")
    return out


def dump_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_request(
    op: int,
    req_id: int,
    offset: int = 0,
    length: int = 0,
    payload: bytes | bytearray | memoryview = b"",
    flags: int = 0,
    generation: int = 0,
) -> list[bytes | bytearray | memoryview]:
    """Header and payload as separate buffers (for ``writelines``: no copy of the data)."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise InvalidArgument(f"payload of {n} bytes exceeds the limit of {MAX_PAYLOAD}")
    hdr = REQUEST.pack(REQUEST_MAGIC, op, flags, req_id, offset, length, n, generation)
    return [hdr, payload] if n else [hdr]


def encode_reply(
    req_id: int,
    status: int = STATUS_OK,
    generation: int = 0,
    payload: bytes | bytearray | memoryview = b"",
) -> list[bytes | bytearray | memoryview]:
    n = len(payload)
    hdr = REPLY.pack(REPLY_MAGIC, status, req_id, generation, n, 0)
    return [hdr, payload] if n else [hdr]


def encode_reply_parts(
    req_id: int, generation: int, parts: list[bytes | memoryview]
) -> list[bytes | bytearray | memoryview]:
    """A successful reply whose payload is several buffers (an extent stream, say)."""
    n = sum(len(p) for p in parts)
    return [REPLY.pack(REPLY_MAGIC, STATUS_OK, req_id, generation, n, 0), *parts]


@dataclass(frozen=True, slots=True)
class Checksums:
    """A CHECKSUMS result: per block (``digest_blocks`` 0) the CRC32C of what a read
    returns, or per window of ``digest_blocks`` blocks the CRC32C of those values."""

    lba: int  # first block covered
    count: int  # blocks covered
    digest_blocks: int  # 0: one value per block; else one per window of this many blocks
    values: bytes  # little-endian u32 values

    @property
    def n_values(self) -> int:
        return expected_values(self.count, self.digest_blocks)

    def as_list(self) -> list[int]:
        return list(struct.unpack(f"<{len(self.values) // 4}I", self.values))


def expected_values(count: int, digest_blocks: int) -> int:
    return count if digest_blocks == 0 else -(-count // digest_blocks)


def encode_checksums(
    lba: int, count: int, values: bytes | bytearray | memoryview, digest_blocks: int = 0
) -> list[bytes | bytearray | memoryview]:
    """A CHECKSUMS reply payload: header, then the u32 values (not copied)."""
    nbytes = memoryview(values).nbytes
    if not 0 <= count <= MAX_CHECKSUM_BLOCKS or digest_blocks < 0:
        raise InvalidArgument(f"checksum map of {count} blocks (window {digest_blocks})")
    if nbytes != 4 * expected_values(count, digest_blocks):
        raise InvalidArgument(
            f"{nbytes} bytes of checksums for {count} blocks (window {digest_blocks})"
        )
    flags = CHECKSUMS_FLAG_DIGESTS if digest_blocks else 0
    hdr = CHECKSUMS_HEADER.pack(
        CHECKSUMS_MAGIC, CHECKSUMS_VERSION, flags, lba, count, digest_blocks
    )
    return [hdr, values]


def decode_checksums(payload: bytes | bytearray | memoryview) -> Checksums:
    """Check and decode a CHECKSUMS reply payload (RemoteProtocolError saying what is wrong)."""
    mv = memoryview(payload).cast("B")
    if len(mv) < CHECKSUMS_HEADER.size:
        raise RemoteProtocolError(f"checksum map truncated: {len(mv)} bytes, no header")
    magic, version, flags, lba, count, window = CHECKSUMS_HEADER.unpack_from(mv, 0)
    if magic != CHECKSUMS_MAGIC:
        raise RemoteProtocolError(f"checksum map: bad magic {bytes(magic)!r}")
    if version != CHECKSUMS_VERSION:
        raise RemoteProtocolError(f"checksum map: version {version} not readable")
    if count > MAX_CHECKSUM_BLOCKS:
        raise RemoteProtocolError(f"checksum map of {count} blocks, at most {MAX_CHECKSUM_BLOCKS}")
    if bool(flags & CHECKSUMS_FLAG_DIGESTS) != bool(window) or flags & ~CHECKSUMS_FLAG_DIGESTS:
        raise RemoteProtocolError(f"checksum map: flags {flags} with digest window {window}")
    want = CHECKSUMS_HEADER.size + 4 * expected_values(count, window)
    if len(mv) != want:
        raise RemoteProtocolError(f"checksum map: {len(mv)} bytes, expected {want}")
    return Checksums(lba, count, window, bytes(mv[CHECKSUMS_HEADER.size :]))


# --- CHANGED with "generations" -----------------------------------------------------------
BLOCK = 4096  # offsets and lengths of the runs are whole blocks
MAX_GENERATION = (1 << 62) - 1  # what a block map's ``meta`` holds above its 2 state bits
GenerationRun = tuple[int, int, int, int]  # offset, length, generation, pending (0/1)
GenerationRuns = list[GenerationRun]


def generation_runs(extents: Any) -> list[GenerationRun]:
    """Check and decode the ``extents`` of a CHANGED reply asked with ``"generations":
    true``: ``[[offset, length, generation, pending], ...]``, whole blocks, lengths above 0,
    generations 1 to 2^62 - 1, pending 0 or 1, in order and not overlapping (adjacent runs
    differ in generation or pending). RemoteProtocolError saying what is wrong; Unsupported
    for the ``[offset, length]`` pairs of a server that does not know the option."""
    if not isinstance(extents, list):
        raise RemoteProtocolError(f"generation runs: a list expected, got {type(extents).__name__}")
    out: list[GenerationRun] = []
    end = 0
    for item in extents:
        if isinstance(item, list) and len(item) == 2:
            raise Unsupported("the replica server does not report generations in CHANGED")
        if not isinstance(item, list) or len(item) != 4 or not all(type(x) is int for x in item):
            raise RemoteProtocolError(f"generation run {item!r}: four integers expected")
        offset, length, generation, pending = item
        if offset % BLOCK or length % BLOCK or length <= 0 or offset < end:
            raise RemoteProtocolError(
                f"generation run {item!r}: whole blocks, in order, not overlapping (from {end})"
            )
        if not 0 < generation <= MAX_GENERATION or pending not in (0, 1):
            raise RemoteProtocolError(f"generation run {item!r}: bad generation or pending")
        if out and offset == end and out[-1][2:] == (generation, pending):
            raise RemoteProtocolError(f"generation run {item!r}: not joined with the one before")
        out.append((offset, length, generation, pending))
        end = offset + length
    return out


def encode_generation_runs(since: int, runs: Sequence[GenerationRun]) -> bytes:
    """The payload of a CHANGED reply with generations (what the server sends)."""
    return dump_json({"since": since, "extents": [list(r) for r in runs]})


# --- WRITE_BATCH (version 2) --------------------------------------------------------------
# request payload: magic, version, flags, count, reserved; then per write offset, length,
# flags, reserved, generation; then the writes' data, back to back in the same order
BATCH_MAGIC = b"CHWB"
BATCH_VERSION = 1
BATCH_VERSIONS_READ = frozenset({1})
BATCH_HEADER = struct.Struct("<4sHHII")  # 16 bytes
BATCH_ENTRY = struct.Struct("<QIHHQ")  # 24 bytes
# reply payload: magic, version, flags, count, reserved; then per write status, error
# length, generation; then the error bodies (JSON) of the writes that failed, in order
BATCH_REPLY_MAGIC = b"CHWR"
BATCH_RESULT = struct.Struct("<IIQ")  # 16 bytes
MAX_BATCH_WRITES = 1024
"""Writes one WRITE_BATCH carries at most (its payload is bounded by MAX_PAYLOAD too)."""


class BatchWrite(NamedTuple):
    """One write of a WRITE_BATCH: what a WRITE's header and payload would carry (a named
    tuple, not a frozen dataclass: a replica server makes one per write it is sent, and a
    tuple costs a fraction of a frozen dataclass's ``__init__``)."""

    offset: int
    flags: int
    generation: int
    data: memoryview


def encode_write_batch(
    req_id: int, writes: list[tuple[int, Any, int, int]]
) -> list[bytes | bytearray | memoryview]:
    """A WRITE_BATCH frame of ``writes`` = [(offset, data, flags, generation), ...]: the
    header and table in one buffer, then every write's data as it was given (not copied)."""
    count = len(writes)
    if not 0 < count <= MAX_BATCH_WRITES:
        raise InvalidArgument(f"a write batch holds 1 to {MAX_BATCH_WRITES} writes, not {count}")
    table = bytearray(BATCH_HEADER.size + BATCH_ENTRY.size * count)
    BATCH_HEADER.pack_into(table, 0, BATCH_MAGIC, BATCH_VERSION, 0, count, 0)
    pos = BATCH_HEADER.size
    total = 0
    pack = BATCH_ENTRY.pack_into
    for offset, data, flags, gen in writes:
        n = len(data)
        pack(table, pos, offset, n, flags, 0, gen)
        pos += BATCH_ENTRY.size
        total += n
    n = len(table) + total
    if n > MAX_PAYLOAD:
        raise InvalidArgument(f"write batch of {n} bytes exceeds the limit of {MAX_PAYLOAD}")
    hdr = REQUEST.pack(REQUEST_MAGIC, Op.WRITE_BATCH, 0, req_id, 0, total, n, 0)
    return [hdr, table, *(w[1] for w in writes)]


def decode_write_batch(payload: bytes | bytearray | memoryview) -> list[BatchWrite]:
    """The writes of a WRITE_BATCH payload (their data: slices of it, not copies). A
    malformed batch is a bad request (InvalidArgument, saying what is wrong): the server
    answers it with an error and goes on."""
    mv = memoryview(payload).cast("B")
    size = len(mv)
    if size < BATCH_HEADER.size:
        raise InvalidArgument(f"write batch of {size} bytes: shorter than its header")
    magic, version, flags, count, _ = BATCH_HEADER.unpack_from(mv, 0)
    if magic != BATCH_MAGIC:
        raise InvalidArgument(f"write batch: bad magic {bytes(magic)!r} (expected {BATCH_MAGIC!r})")
    if version not in BATCH_VERSIONS_READ:
        raise InvalidArgument(
            f"write batch: version {version} not readable (read: {sorted(BATCH_VERSIONS_READ)})"
        )
    if flags:
        raise InvalidArgument(f"write batch: unknown flags {flags:#x}")
    if not 0 < count <= MAX_BATCH_WRITES:
        raise InvalidArgument(f"write batch of {count} writes (1 to {MAX_BATCH_WRITES})")
    pos = BATCH_HEADER.size + BATCH_ENTRY.size * count
    if size < pos:
        raise InvalidArgument(f"write batch: {size} bytes, its table of {count} needs {pos}")
    out: list[BatchWrite] = []
    table = mv[BATCH_HEADER.size : pos]
    for offset, length, wflags, _, gen in BATCH_ENTRY.iter_unpack(table):
        end = pos + length
        if end > size:
            raise InvalidArgument(
                f"write batch: write {len(out)} of {length} bytes runs past the payload "
                f"({size} bytes)"
            )
        if wflags & ~FLAG_FUA:
            raise InvalidArgument(f"write batch: write {len(out)} has unknown flags {wflags:#x}")
        out.append(BatchWrite(offset, wflags, gen, mv[pos:end]))
        pos = end
    if pos != size:
        raise InvalidArgument(f"write batch: {size - pos} bytes after the last write's data")
    return out


def encode_batch_results(
    results: Sequence[tuple[int, int, bytes | bytearray | memoryview]],
) -> list[bytes | bytearray | memoryview]:
    """A WRITE_BATCH reply's payload from ``results`` = [(status, generation, error body)]."""
    count = len(results)
    table = bytearray(BATCH_HEADER.size + BATCH_RESULT.size * count)
    BATCH_HEADER.pack_into(table, 0, BATCH_REPLY_MAGIC, BATCH_VERSION, 0, count, 0)
    pos = BATCH_HEADER.size
    errors = []
    for status, gen, body in results:
        BATCH_RESULT.pack_into(table, pos, status, len(body), gen)
        pos += BATCH_RESULT.size
        if body:
            errors.append(body)
    return [table, *errors]


def decode_batch_results(
    payload: bytes | bytearray | memoryview, count: int, req_id: int = 0
) -> list[Reply]:
    """A WRITE_BATCH reply's payload, which must answer ``count`` writes (RemoteProtocolError
    saying what is wrong: the server broke the protocol): each write's answer as a WRITE's
    reply would say it (its status, generation and error body; ``req_id``: the batch's),
    made once here, as the client hands it on (one object per write per replica)."""
    mv = memoryview(payload).cast("B")
    size = len(mv)
    if size < BATCH_HEADER.size:
        raise RemoteProtocolError(f"write batch reply of {size} bytes: shorter than its header")
    magic, version, flags, n, _ = BATCH_HEADER.unpack_from(mv, 0)
    if magic != BATCH_REPLY_MAGIC:
        raise RemoteProtocolError(f"write batch reply: bad magic {bytes(magic)!r}")
    if version not in BATCH_VERSIONS_READ or flags:
        raise RemoteProtocolError(f"write batch reply: version {version}, flags {flags}")
    if n != count:
        raise RemoteProtocolError(f"write batch reply answers {n} writes, {count} were sent")
    pos = BATCH_HEADER.size + BATCH_RESULT.size * n
    if size < pos:
        raise RemoteProtocolError(f"write batch reply: {size} bytes, its table needs {pos}")
    out: list[Reply] = []
    for status, elen, gen in BATCH_RESULT.iter_unpack(mv[BATCH_HEADER.size : pos]):
        if status == STATUS_OK and elen:
            raise RemoteProtocolError("write batch reply: an error body for a write that succeeded")
        body = mv[pos : pos + elen] if elen else b""
        pos += elen
        out.append(Reply(status, req_id, gen, body))
    if pos != size:
        raise RemoteProtocolError(f"write batch reply: {size} bytes, expected {pos}")
    return out


class _FrameDecoder:
    """Turns a byte stream into frames. Frames that arrive whole in one chunk are sliced out
    without copying; a large frame that spans chunks is joined once, when complete."""

    _hdr: struct.Struct
    _magic: bytes
    _what: str

    def __init__(self) -> None:
        self._buf = StreamBuffer()

    def _make(self, fields: tuple[Any, ...], payload: memoryview) -> Any:
        raise NotImplementedError

    def _payload_len(self, fields: tuple[Any, ...]) -> int:
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        return self._buf.buffered

    def get_buffer(self, sizehint: int = 0) -> memoryview:
        """For owners that receive with readinto: where the next bytes go."""
        return self._buf.get_buffer(sizehint)

    def buffer_updated(self, n: int) -> list[Any]:
        """``n`` bytes arrived in the last ``get_buffer``: the events they complete."""
        data = self._buf.received(n)
        return [] if data is None else self.feed(data)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        joined = self._buf.take(data)
        if joined is None:
            return []
        data = joined
        hdr = self._hdr
        hs = hdr.size
        mv = memoryview(data)
        end = len(data)
        pos = 0
        out = []
        while end - pos >= hs:
            fields = hdr.unpack_from(data, pos)
            if fields[0] != self._magic:
                raise RemoteProtocolError(
                    f"bad {self._what} magic {fields[0]!r} (expected {self._magic!r})"
                )
            plen = self._payload_len(fields)
            if plen > MAX_PAYLOAD:
                raise RemoteProtocolError(
                    f"{self._what} payload of {plen} bytes exceeds the limit of {MAX_PAYLOAD}"
                )
            total = hs + plen
            if end - pos < total:
                self._buf.need = total
                break
            out.append(self._make(fields, mv[pos + hs : pos + total]))
            pos += total
        self._buf.keep(data, pos, hs)
        return out


class RequestDecoder(_FrameDecoder):
    """Server side: bytes from an engine in, ``Request`` events out."""

    _hdr = REQUEST
    _magic = REQUEST_MAGIC
    _what = "request"

    def _payload_len(self, fields: tuple[Any, ...]) -> int:
        n: int = fields[6]
        return n

    def _make(self, fields: tuple[Any, ...], payload: memoryview) -> Request:
        _, op, flags, rid, offset, length, _, gen = fields
        return Request(op, flags, rid, offset, length, payload, gen)


class ReplyDecoder(_FrameDecoder):
    """Client side: bytes from a replica server in, ``Reply`` events out."""

    _hdr = REPLY
    _magic = REPLY_MAGIC
    _what = "reply"

    def _payload_len(self, fields: tuple[Any, ...]) -> int:
        n: int = fields[4]
        return n

    def _make(self, fields: tuple[Any, ...], payload: memoryview) -> Reply:
        _, status, rid, gen, _, _ = fields
        return Reply(status, rid, gen, payload)
