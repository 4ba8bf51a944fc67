"""Each current replica's copy of a range, for a layer above the volume that found the
bytes wrong although their checksums hold: the encrypting device
(``frontend/encrypted_device.py``), for a block that fails authentication. It picks the
copy that authenticates and writes it back through the volume's ordinary write path.

Made by the engine's process wiring (``engine/daemon.py``) around its ``Volume``; types
against ``interface.VolumeCore`` only.
"""

from __future__ import annotations

from cargohold.engine.fanout import answers
from cargohold.engine.interface import VolumeCore
from cargohold.errors import CargoholdError, Fenced
from cargohold.protocol.replica_wire import Op


class ReplicaCopies:
    def __init__(self, vol: VolumeCore) -> None:
        self.vol = vol

    async def read_copies(self, offset: int, length: int) -> list[tuple[str, bytes]]:
        """(replica id, bytes) from every RW replica, the order reads try them. A replica
        that fails the read is left out (its checksum errors are the read path's
        business); Fenced is raised (a newer engine owns a replica)."""
        vol = self.vol
        vol.check_usable()
        out: list[tuple[str, bytes]] = []
        for link in vol.readers():
            client = link.client
            if client is None:
                continue
            try:
                fut = client.send(Op.READ, offset, length)
                await answers([fut], vol.settings.replica_timeout)
                out.append((link.spec.id, bytes(client.check(fut.result()).payload)))
            except Fenced:
                raise
            except (TimeoutError, CargoholdError, OSError):
                continue
        return out
