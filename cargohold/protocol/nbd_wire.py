"""The NBD wire vocabulary: magic numbers, flags, option, reply and command codes, the
errno values the spec allows, limits, and the fixed-size structs of every message. No logic
beyond two lookups (``wire_errno``, ``command_name``).

Shared by the server codec (``nbd_handshake`` for the option phase, ``nbd`` for the
transmission phase) and re-exported by ``cargohold.protocol.nbd``, where callers import
them from. Spec: NetworkBlockDevice/nbd doc/proto.md; what we support: docs/formats/nbd.md.
"""

from __future__ import annotations

import errno as _errno
import struct

# --- magic numbers ------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags --------------------------------------------------------------------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# --- transmission flags -------------------------------------------------------------------
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# --- options and option replies -------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 2**31 + 1
REP_ERR_POLICY = 2**31 + 2
REP_ERR_INVALID = 2**31 + 3
REP_ERR_PLATFORM = 2**31 + 4
REP_ERR_TLS_REQD = 2**31 + 5
REP_ERR_UNKNOWN = 2**31 + 6
REP_ERR_SHUTDOWN = 2**31 + 7
REP_ERR_BLOCK_SIZE_REQD = 2**31 + 8
REP_ERR_TOO_BIG = 2**31 + 9

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- commands, command flags, reply types --------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = 2**15 + 1
REPLY_TYPE_ERROR_OFFSET = 2**15 + 2

STATE_HOLE = 1 << 0  # base:allocation
STATE_ZERO = 1 << 1

# --- error values on the wire (the only ones the spec allows) ------------------------------
EPERM, EIO, ENOMEM, EINVAL, ENOSPC = 1, 5, 12, 22, 28
EOVERFLOW, ENOTSUP, ESHUTDOWN = 75, 95, 108
_ERRNO_TO_WIRE = {
    _errno.EPERM: EPERM,
    _errno.EROFS: EPERM,
    _errno.EACCES: EPERM,
    _errno.EIO: EIO,
    _errno.ENOMEM: ENOMEM,
    _errno.EINVAL: EINVAL,
    _errno.ENOENT: EINVAL,
    _errno.ENOSPC: ENOSPC,
    _errno.EDQUOT: ENOSPC,
    _errno.EFBIG: ENOSPC,
    _errno.EOVERFLOW: EOVERFLOW,
    _errno.EOPNOTSUPP: ENOTSUP,
    _errno.ENOTSUP: ENOTSUP,
    _errno.ESHUTDOWN: ESHUTDOWN,
}

BASE_ALLOCATION = "base:allocation"
META_CONTEXT_ID = 1  # the id of base:allocation once selected
MAX_OPTION_BYTES = 64 * 1024  # larger option data: hard disconnect (denial of service)
MAX_OPTIONS = 1024  # options per connection before we hang up on a looping client
MAX_STRING = 4096  # the spec's limit on names and queries
MAX_ERROR_MESSAGE = 4096
MAX_BLOCK_STATUS_EXTENTS = 1024  # descriptors per BLOCK_STATUS reply (the spec lets us stop)
# A growable export (``Export.growable``): the same volume under NAME + GROWABLE_SUFFIX,
# advertised at GROWABLE_CEILING (the largest volume the manager makes) while requests are
# still checked against the live size. For clients whose size is fixed at connect (nbdfuse):
# the CSI node limits the device above it to the real size and raises the limit on expansion.
GROWABLE_SUFFIX = "+growable"
GROWABLE_CEILING = 256 << 40

OPT_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPT_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
CHUNK_DATA = struct.Struct(">IHHQIQ")  # ... + offset of OFFSET_DATA
GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
_CMD_NAMES = {
    CMD_READ: "READ",
    CMD_WRITE: "WRITE",
    CMD_DISC: "DISC",
    CMD_FLUSH: "FLUSH",
    CMD_TRIM: "TRIM",
    CMD_CACHE: "CACHE",
    CMD_WRITE_ZEROES: "WRITE_ZEROES",
    CMD_BLOCK_STATUS: "BLOCK_STATUS",
}
# command flags each command accepts (FUA is valid on every command once advertised)
ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA | CMD_FLAG_DF,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_DISC: CMD_FLAG_FUA,
    CMD_FLUSH: CMD_FLAG_FUA,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_CACHE: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
    CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
}
WRITE_COMMANDS = frozenset({CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES})


def wire_errno(err: int) -> int:
    """Map a local errno onto the values the NBD spec allows (EIO when unsure)."""
    return _ERRNO_TO_WIRE.get(err, EIO)


def command_name(cmd: int) -> str:
    return _CMD_NAMES.get(cmd, f"command {cmd}")
