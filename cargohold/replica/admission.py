"""Which connections a replica server takes: bounded so that a flood can neither use up its
file descriptors nor lock out the node's own agent and engines (issue #14; invariant 6).

- **Limit.** At most ``max_connections`` sessions, and never more than ``RLIMIT_NOFILE``
  minus ``fd_headroom``: past the descriptor limit ``accept`` fails (EMFILE), asyncio stops
  accepting for a second at a time and nobody gets in, the node's agent included. A refused
  connection is accepted and closed at once, so it costs a descriptor for microseconds.
- **Reserve.** The last ``reserved_connections`` places go only to the node's own peers.
  Before peers authenticate (issue #16 brings mutual TLS), "own" is told by address: the
  unix socket, the address the server listens on (the node's address: its agent and its
  engines connect from it), and ``trusted_addresses``. A source address cannot be forged
  on an established TCP connection, so a flood from elsewhere cannot take these places.
- **Per address.** At most ``max_connections_per_address`` from one address other than
  the node's own.
- **Making room.** At a limit, a connection that wastes its place makes room for the new
  one: one that has sent no request for ``FIRST_REQUEST_EVICT_AFTER`` seconds since it
  connected; at the limit for all, then (fair shares) the longest silent one of an address
  holding at least two more connections than the newcomer's; else the longest silent one,
  silent for ``evict_idle_after``. Only sessions with no replica open at the replica's
  current epoch and nothing in flight are closed this way: engines never are (a session
  left behind by a newer engine's OPEN is fenced, and may go), nor are the node's own.
  Only when there is no such connection is the new one refused.
- **Silence.** A connection that sends no complete request within
  ``first_request_timeout`` is closed (``Session``).

Refusals are logged at most once per ``REFUSAL_LOG_EVERY`` seconds, with a count.
"""

from __future__ import annotations

import logging
import random
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from cargohold.settings import ReplicaServerSettings

log = logging.getLogger("cargohold.replica")

FIRST_REQUEST_EVICT_AFTER = 2.0  # at a limit, a connection silent since it came, this long
REFUSAL_LOG_EVERY = 10.0
NO_VICTIM_RECHECK = 0.1  # seconds before looking again for a connection to make room
FAIR_IDLE_AFTER = 0.1  # at the limit, busy addresses' connections silent this long go first
SAMPLE = 32  # connections looked at for a victim before (rarely) looking at all of them
_WILDCARD = {"", "0.0.0.0", "::"}


class Member(Protocol):
    address: str
    trusted: bool
    started: float  # time.monotonic()
    last_active: float
    requests: int

    def evictable(self) -> bool: ...

    def evict(self, why: str) -> None: ...


T = TypeVar("T")


class SampledSet(Generic[T]):
    """A set with O(1) add, discard and random sample. Choosing whom to evict by looking
    at every connection cost a flood of thousands of connections a scan of all of them
    per new one (quadratic: seconds of CPU); a random sample of ``SAMPLE`` finds a
    flood's connections at once (they are most of them), as Redis picks keys to evict."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._pos: dict[T, int] = {}

    def add(self, x: T) -> None:
        if x not in self._pos:
            self._pos[x] = len(self._items)
            self._items.append(x)

    def discard(self, x: T) -> None:
        i = self._pos.pop(x, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i

    def sample(self, k: int) -> list[T]:
        n = len(self._items)
        if n <= k:
            return list(self._items)
        return [self._items[random.randrange(n)] for _ in range(k)]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, x: object) -> bool:
        return x in self._pos

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))


def connection_limit(settings: ReplicaServerSettings) -> int:
    """``max_connections``, lowered to fit under the descriptor limit with headroom."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    return max(1, min(settings.max_connections, soft - settings.fd_headroom))


class Admission:
    def __init__(self, settings: ReplicaServerSettings) -> None:
        self.settings = settings
        self.limit = connection_limit(settings)
        self.reserve = min(settings.reserved_connections, self.limit - 1)
        self.trusted = {"unix", *settings.trusted_addresses}
        if settings.host not in _WILDCARD:
            self.trusted.add(settings.host)
        self.members: SampledSet[Member] = SampledSet()
        self.per_address: dict[str, int] = {}
        self.accepted = self.refused = self.evicted = 0
        # after a full search found no victim, none is searched for again this soon (per
        # address; for the newcomers of any address: until when, and from which share up)
        self._none_until: dict[str, float] = {}
        self._none_shares: tuple[float, int] = (0.0, 0)
        self._unlogged = 0
        self._logged_at = -REFUSAL_LOG_EVERY

    def is_trusted(self, address: str) -> bool:
        return address in self.trusted

    def admit(self, m: Member) -> bool:
        """Count ``m`` in, making room if needed. False: refuse it (the caller closes it)."""
        n = len(self.members)
        if not m.trusted:
            have = self.per_address.get(m.address, 0)
            if have >= self.settings.max_connections_per_address and not self._make_room(
                m.address, f"{have} connections from {m.address} (the per-address limit)"
            ):
                return self._refuse(m, f"{have} connections from {m.address}")
            n = len(self.members)
            if n >= self.limit - self.reserve and not self._make_room(
                None,
                f"{n} connections (the limit for other nodes' peers)",
                self.per_address.get(m.address, 0),
            ):
                return self._refuse(
                    m, f"{n} connections, the last {self.reserve} places kept for this node"
                )
        elif n >= self.limit and not self._make_room(None, f"{n} connections (the limit)"):
            return self._refuse(m, f"{n} connections (the limit)")
        self.members.add(m)
        self.per_address[m.address] = self.per_address.get(m.address, 0) + 1
        self.accepted += 1
        return True

    def forget(self, m: Member) -> None:
        if m not in self.members:
            return
        self.members.discard(m)
        left = self.per_address.get(m.address, 1) - 1
        if left > 0:
            self.per_address[m.address] = left
        else:
            self.per_address.pop(m.address, None)

    def victim(self, address: str | None, mine: int = 0) -> Member | None:
        """Among ``address``'s connections, or all but the node's own (None): the oldest
        that has sent nothing for FIRST_REQUEST_EVICT_AFTER; for all, then — fair shares —
        the longest silent evictable one (no replica open at the replica's epoch, nothing in
        flight; silent FAIR_IDLE_AFTER) of an address holding more than ``mine`` + 1 (the
        newcomer's address holds ``mine``); else the longest silent evictable one, silent
        for ``evict_idle_after``. First among a random sample of SAMPLE connections; only
        if none of those can go, among all — and after a search of all found none, not
        again for NO_VICTIM_RECHECK seconds."""
        now = time.monotonic()
        found = self._best(self.members.sample(SAMPLE), address, mine, now)
        if found is not None:
            return found
        if address is not None:
            if self._none_until.get(address, 0.0) > now:
                return None
        else:
            until, share = self._none_shares
            if until > now and mine >= share:  # fewer candidates for a larger share
                return None
        found = self._best(self.members, address, mine, now)
        if found is None:
            if address is not None:
                if len(self._none_until) > 1024:
                    self._none_until.clear()
                self._none_until[address] = now + NO_VICTIM_RECHECK
            else:
                self._none_shares = (now + NO_VICTIM_RECHECK, mine)
        return found

    def _best(
        self, among: Iterable[Member], address: str | None, mine: int, now: float
    ) -> Member | None:
        silent: Member | None = None
        fair: Member | None = None
        idlest: Member | None = None
        after = self.settings.evict_idle_after
        for m in among:
            if m.trusted or (address is not None and m.address != address):
                continue
            if not m.requests and now - m.started >= FIRST_REQUEST_EVICT_AFTER:
                if silent is None or m.started < silent.started:
                    silent = m
                continue
            if not m.evictable():
                continue
            quiet = now - m.last_active
            if (
                address is None
                and quiet >= FAIR_IDLE_AFTER
                and self.per_address.get(m.address, 0) > mine + 1
                and (fair is None or m.last_active < fair.last_active)
            ):
                fair = m
            if (
                after > 0
                and quiet >= after
                and (idlest is None or m.last_active < idlest.last_active)
            ):
                idlest = m
        return silent or fair or idlest

    def _make_room(self, address: str | None, why: str, mine: int = 0) -> bool:
        v = self.victim(address, mine)
        if v is None:
            return False
        self.evicted += 1
        self.forget(v)
        v.evict(f"making room: {why}")
        return True

    def _refuse(self, m: Member, why: str) -> bool:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            log.warning(
                "refusing connections: %s (from %s now); %d refused since the last warning, "
                "%d in all (limit %d, %d reserved for this node, %d per address; "
                "CARGOHOLD_REPLICA_* settings)",
                why,
                m.address,
                self._unlogged,
                self.refused,
                self.limit,
                self.reserve,
                self.settings.max_connections_per_address,
            )
            self._unlogged = 0
            self._logged_at = now
        return False
