"""Defaults shared by several layers. Protocol constants live in their codec; tunables
live in ``settings``."""

from __future__ import annotations

BLOCK_SIZE = 4096
"""The logical block of every volume and replica: checksums and change tracking are per block."""

BLOCK_SHIFT = 12

MAX_VOLUME_SIZE = 256 * 1024**4
"""The largest volume (256 TiB): 64 data segments and a 1 TiB block map per layer."""

MAX_IO_BYTES = 32 * 1024 * 1024
"""The largest single read or write on the replica wire."""

STORE_WRITE_CHUNK = 128 * 1024
"""Bytes per ``pwrite`` of a replica store's large writes (``store.layer.pieces``): the
kernel sizes page-cache folios by the write, and small writes into large folios are dear."""

DEFAULT_REPLICA_PORT = 9500
DEFAULT_NBD_PORT = 10809  # NBD's IANA port

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

MAX_EPOCH_STEP = 1 << 16
"""How far above its persisted epoch a replica accepts an OPEN (65,536). The manager bumps a
volume's epoch by one per engine it starts, so a replica that was away for 65,536 attaches in
a row is the only legitimate case beyond it (an engine restart every second for 18 hours);
anything further is a bogus or hostile epoch that would fence the volume for ever. An OPEN
with ``"jump": true`` (sent only by an engine the manager started after ``volume
recover-epoch``) may go further."""

MAX_EPOCH = (1 << 63) - 1
"""Epochs are persisted and compared as signed 64-bit integers everywhere (SQLite, etcd)."""

# What a replica server logs around the recovery of a replica after a machine crash, which
# reads the head's written data and can take minutes (replica/registry.py): the node agent
# waits for the server's LIST as long as a RECOVERING line has no RECOVERED line after it
# (agent/processes.py)
RECOVERING = "machine-crash recovery of replica"
RECOVERED = "machine-crash recovery done for replica"
