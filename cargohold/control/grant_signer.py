"""The manager's read grants for clones (``security/grants.py``): made with the manager's
own certificate and key (its ``--tls-dir``), one per clone operation, cached so that the
node's assignments (and their revision) stay the same until the grant is half spent.

Called by ``assignments.py`` when it hands a node the CLONE operation of an engine there:
the grant names that engine (the clone), the source volume and the snapshot. A manager run
``--plaintext`` has no key: its clones carry no grant (its data path is plaintext too).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from cargohold.errors import CargoholdError
from cargohold.security import grants
from cargohold.security.tls import CERT_FILE, KEY_FILE

log = logging.getLogger("cargohold.control")


class GrantSigner:
    def __init__(self, tls_dir: Path | str, ttl: float = grants.DEFAULT_TTL) -> None:
        self.tls_dir = Path(tls_dir)
        self.ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}  # operation id -> (grant, expiry)

    def clone(
        self, op_id: str, cluster: str, engine: str, volume: str, snapshot: str
    ) -> str | None:
        """The grant for operation ``op_id``: ``engine/<engine>`` reads ``snapshot`` of
        ``volume`` (None, logged, when it cannot be made: the import then fails over TLS
        with the replica server's refusal, and the next heartbeat tries again)."""
        now = time.time()
        hit = self._cache.get(op_id)
        if hit is not None and hit[1] - now > self.ttl / 2:
            return hit[0]
        try:
            token = grants.issue(
                (self.tls_dir / KEY_FILE).read_bytes(),
                (self.tls_dir / CERT_FILE).read_bytes(),
                cluster,
                engine,
                volume,
                snapshot,
                self.ttl,
                now,
            )
        except (OSError, ValueError, CargoholdError) as e:
            log.warning("cannot make the read grant of clone %s: %s", op_id, e)
            return None
        if len(self._cache) > 1000:  # finished operations' grants: forget them all
            self._cache.clear()
        self._cache[op_id] = (token, now + self.ttl)
        return token
