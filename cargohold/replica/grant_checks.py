"""A replica-server session's read grants (docs/formats/replica-wire.md, "Read grants"): the
grant a request carries checked against the server's trusted CAs, an OPEN under a grant
(read-only, at the replica's own epoch), and every later request on such a connection held
to ``policy.grant_allows``. A mixin of ``Session`` (``replica/session.py``), which calls
these from OPEN, LIST and its dispatch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cargohold.errors import Fenced, InvalidArgument, PermissionDenied, ReplicaIOError, RequestError
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op, Request
from cargohold.security.policy import GRANT_SNAPSHOT_OPS, grant_allows
from cargohold.security.tls import CA_FILE, CRL_FILE

if TYPE_CHECKING:
    from cargohold.replica.registry import OpenReplica
    from cargohold.security.grants import ReadGrant
    from cargohold.security.identity import Identity

log = logging.getLogger("cargohold.replica")


class GrantChecks:
    if TYPE_CHECKING:
        server: Any  # session.Host
        guarded: bool
        ident: Identity | None
        peer: str
        grant: ReadGrant | None

    def _read_grant(self, args: dict[str, Any]) -> ReadGrant | None:
        """The verified read grant a request carries (``grant``), or None without one or on
        a plain connection; a bad, forged or expired one is refused (counted, logged)."""
        token = args.get("grant")
        creds = self.server.creds
        if token is None or not self.guarded or creds is None or self.server.cluster is None:
            return None
        from cargohold.security import grants

        try:
            trust = creds.path(CA_FILE).read_bytes()
            try:
                crl: bytes | None = creds.path(CRL_FILE).read_bytes()
            except FileNotFoundError:
                crl = None
            return grants.verify(token, trust, crl, self.server.cluster)
        except OSError as e:
            raise ReplicaIOError(f"cannot read the trusted CAs to check a grant: {e}") from None
        except RequestError as e:  # InvalidArgument, PermissionDenied
            self.server.counters["refused"] += 1
            log.warning("refused a read grant from %s (%s): %s", self.peer, self.ident, e)
            raise

    def _check_grant(self, req: Request, volume: str | None) -> None:
        """On a connection opened with a read grant: only ``policy.GRANT_OPS``, and data
        reads only of the granted snapshot (``volume``: of the replica open here)."""
        assert self.grant is not None and self.ident is not None
        op = Op(req.op).name if req.op in wire.OPS else str(req.op)
        snapshot = None
        if op in GRANT_SNAPSHOT_OPS:
            snapshot = self._snapshot_arg(req)
        if op == "OPEN" or grant_allows(self.ident, self.grant, op, volume, snapshot):
            return  # OPEN decides again with what it carries
        self.server.counters["refused"] += 1
        log.warning("refused %s from %s (%s): read grant only", op, self.peer, self.ident)
        what = f" of snapshot {snapshot}" if op in GRANT_SNAPSHOT_OPS else ""
        raise PermissionDenied(
            f"{self.ident} opened this replica with a {self.grant}: it may not {op}{what}"
        )

    @staticmethod
    def _snapshot_arg(req: Request) -> str | None:
        try:
            value = req.args().get("snapshot") if req.payload else None
        except InvalidArgument:
            return None  # not JSON (a READ without args): the live head
        return value if isinstance(value, str) else None

    def _grant_open(
        self, ident: Identity, grant: ReadGrant, rep: OpenReplica, epoch: int, volume: str | None
    ) -> None:
        """May ``ident`` OPEN ``rep`` (of ``volume``) at ``epoch`` under ``grant``? Read-only:
        the grant never moves the replica's epoch, so it never fences the volume's engine."""
        if not grant_allows(ident, grant, "OPEN", volume):
            self.server.counters["refused"] += 1
            raise PermissionDenied(
                f"{ident} may not OPEN a replica of volume {volume}: its {grant} is not "
                "for this engine or this volume"
            )
        # read-only: the grant never moves the replica's epoch (never fences its engine)
        if epoch > rep.store.epoch:
            self.server.counters["refused"] += 1
            raise PermissionDenied(
                f"replica {rep.id}: a read grant opens at the replica's epoch "
                f"{rep.store.epoch} or older, not {epoch}: it never takes a replica over"
            )
        if epoch < rep.store.epoch:
            self.server.counters["fenced"] += 1
            raise Fenced(
                f"replica {rep.id}: epoch {epoch} is older than {rep.store.epoch}",
                epoch=rep.store.epoch,
            )
