"""The digests the heartbeat exchange carries, computed the same way on both ends: the
manager (cargohold/control/heartbeat.py) and the node agent (cargohold/agent/agent.py).

- ``revision``: of an answer's assignments. The agent sends it back; the manager holds the
  next heartbeat (a long poll) while the node's assignments still have it.
- ``report_digest``: of what a heartbeat reports (``REPORT``, not its long-poll fields). An
  agent whose report is the same as the last one the manager took in sends the digest alone.

Both are 8-byte BLAKE2b digests in hex of the models' JSON; see docs/control-plane.md.
"""

from __future__ import annotations

import hashlib

from cargohold.control.model import Assignments, Heartbeat

REPORT = {"replica_port", "replicas", "engines", "operations", "refusal", "disk_checks"}


def revision(a: Assignments) -> str:
    """The digest of an answer's content: the agent sends it back, and the manager holds
    the next heartbeat while its node's assignments still have it."""
    body = a.model_dump_json(exclude={"revision", "unchanged", "resend"}).encode()
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def report_digest(hb: Heartbeat) -> str:
    """The digest of what a heartbeat reports (not of its long-poll fields)."""
    return hashlib.blake2b(hb.model_dump_json(include=REPORT).encode(), digest_size=8).hexdigest()
