"""Garbage collection of a backup repository: mark and sweep, safe beside running backups.

Called by ``Repository.gc()`` (the manager's recurring job or an operator). GC may LIST (it is
the only writer-side caller that does). The rules (docs/formats/backup-repository.md, "GC"):

1. Mark: every chunk named by any manifest in ``backups/`` (found by LIST, not from the
   catalog, so a backup missing from a damaged catalog still protects its chunks) is live. A
   pack is dead when no index names it (an orphan: a writer crashed or is still running) or
   none of its indexed chunks is live. A manifest or index that cannot be read stops GC: it
   deletes nothing it cannot prove dead.
2. Candidates are first written to the ``gc-pending`` object, then GC lists the leases
   (``locks/``): the set S of backup/restore leases alive at that moment. A backup that
   starts later takes its lease, then reads ``gc-pending`` and never reuses a chunk of a
   pending pack, so only the holders of S can still come to reference a candidate.
3. Sweep, once no lease of S is alive (at once when S is empty, else at a later run): mark
   again, delete the candidates that are still dead (batched), write one merged index without
   them, point the catalog at it and delete the index objects it replaces.

Packs that are mostly dead are not rewritten (a pack is deleted only when all of it is dead);
compaction of such packs is left for later. A lease is taken as alive until its expiry plus
``SKEW`` seconds (clock differences between hosts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cargohold.backup import format as fmt
from cargohold.backup.catalog import Catalog
from cargohold.backup.chunk_map import ChunkMap
from cargohold.backup.index import PREFIX as INDEX_PREFIX
from cargohold.backup.index import read_index, write_index
from cargohold.backup.leases import read_leases
from cargohold.backup.packs import PREFIX as PACK_PREFIX
from cargohold.errors import Busy, CargoholdError, FormatError, NotFound

if TYPE_CHECKING:
    from cargohold.backup.repository import Repository

SKEW = 60.0
PENDING = "gc-pending"
MANIFEST_PREFIX = "backups/"
MERGE_ABOVE = 16  # index objects beyond which GC merges them even when it deletes nothing


@dataclass
class Marks:
    """What a mark pass found."""

    backups: int = 0
    live: set[bytes] = field(default_factory=set)
    packs: set[str] = field(default_factory=set)
    indexes: dict[str, dict[bytes, fmt.Location]] = field(default_factory=dict)
    chunk_packs: dict[bytes, set[str]] = field(default_factory=dict)
    pack_bytes: dict[str, int] = field(default_factory=dict)

    def dead(self, avoid: set[str] | frozenset[str] = frozenset()) -> set[str]:
        """Packs no live chunk needs. A chunk stored in several packs (two writers uploaded
        it at once, or a writer wrote again a chunk of a pending pack) needs one of them:
        the first by name that is not in ``avoid``, else the first by name."""
        needed = set()
        for cid in self.live:
            locs = self.chunk_packs.get(cid, set()) & self.packs
            if locs:
                needed.add(min(locs, key=lambda p: (p in avoid, p)))
        return self.packs - needed


def mark(repo: Repository) -> Marks:
    t, keys = repo.target, repo.keys
    m = Marks()
    m.packs = set(t.list(PACK_PREFIX))  # packs first: an index or manifest seen later covers them
    for name in t.list(INDEX_PREFIX):
        try:
            m.indexes[name] = read_index(t, keys, name)
        except NotFound:
            continue  # merged away by another GC meanwhile
        except CargoholdError as e:
            raise FormatError(
                f"GC stops: index {name} is unreadable ({e}); run verify", object=name
            ) from e
    for entries in m.indexes.values():
        for cid, loc in entries.items():
            m.chunk_packs.setdefault(cid, set()).add(loc.pack)
            m.pack_bytes[loc.pack] = max(m.pack_bytes.get(loc.pack, 0), loc.offset + loc.length)
    for name in t.list(MANIFEST_PREFIX):
        try:
            data = t.get(name)
        except NotFound:
            continue  # deleted meanwhile
        try:
            _, _, raw = fmt.decode_manifest(keys.open(fmt.KIND_MANIFEST, name, data), name)
            m.live |= ChunkMap.decode(raw, name).chunks()
        except CargoholdError as e:
            raise FormatError(
                f"GC stops: manifest {name} is unreadable ({e}); run verify", object=name
            ) from e
        m.backups += 1
    return m


def _read_pending(repo: Repository) -> dict[str, Any] | None:
    try:
        data = repo.target.get(PENDING)
    except NotFound:
        return None
    doc = fmt.decode_json(repo.keys.open(fmt.KIND_PENDING, PENDING, data), PENDING)
    if not isinstance(doc.get("packs"), list) or not isinstance(doc.get("leases"), list):
        raise FormatError(f"{PENDING}: bad layout", object=PENDING)
    return doc


def _write_pending(
    repo: Repository, packs: set[str], leases: set[str], complete: bool = True
) -> None:
    """``complete`` False: the lease set is not known yet (a GC that dies before it writes
    the set leaves this; the next run then waits for every lease alive)."""
    doc = {
        "packs": sorted(packs),
        "leases": sorted(leases),
        "complete": complete,
        "written": time.time(),
    }
    repo.target.put(PENDING, repo.keys.seal(fmt.KIND_PENDING, PENDING, fmt.encode_json(doc)))


def _alive_leases(repo: Repository, own: str) -> tuple[set[str], set[str]]:
    """Names of the unexpired backup/restore leases, and of other GCs' leases. A standby's
    pin (kind ``dr``) does not hold the sweep back (leases.py): its backups keep their
    manifests, so their chunks stay marked."""
    now = time.time()
    records, unreadable = read_leases(repo.target, repo.keys)
    alive = {
        r.name for r in records if r.expires + SKEW > now and r.name != own and r.kind != "dr"
    } | set(unreadable)
    gcs = {r.name for r in records if r.name in alive and r.kind == "gc"}
    return alive - gcs, gcs


def sweep(repo: Repository, candidates: set[str]) -> dict[str, int]:
    """Delete the candidates still dead now; merge the index without them."""
    m = mark(repo)
    doomed = candidates & m.dead(avoid=candidates)
    merge = bool(doomed) or len(m.indexes) > MERGE_ABOVE
    out = {"packs_deleted": 0, "bytes_freed": 0, "index_merged": 0}
    if not merge:
        return out
    merged: dict[bytes, fmt.Location] = {}
    for entries in m.indexes.values():
        for cid, loc in entries.items():
            if loc.pack not in doomed and loc.pack in m.packs:
                merged.setdefault(cid, loc)
    new = write_index(repo.target, repo.keys, merged) if merged else None
    old = set(m.indexes)

    def repoint(cat: Catalog) -> None:
        cat.indexes = sorted((set(cat.indexes) - old) | ({new} if new else set()))

    repo._update_catalog(repoint)
    repo.target.delete(sorted(doomed))
    repo.target.delete(sorted(old))
    out["packs_deleted"] = len(doomed)
    out["bytes_freed"] = sum(m.pack_bytes.get(p, 0) for p in doomed)
    out["index_merged"] = len(old)
    return out


def collect(repo: Repository, lease_ttl: float = 600.0) -> dict[str, Any]:
    """One GC run; returns counts (and ``deferred`` when leases held the sweep back)."""
    with repo.lease("gc", lease_ttl) as own:
        alive, gcs = _alive_leases(repo, own.name)
        if gcs:
            raise Busy(f"another GC is running on {repo.target.describe()} ({sorted(gcs)[0]})")
        result: dict[str, Any] = {"packs_deleted": 0, "bytes_freed": 0, "index_merged": 0}
        pending = _read_pending(repo)
        carried: set[str] = set()
        held: set[str] = set()
        if pending is not None:
            waiting = set(map(str, pending["leases"])) & alive
            if pending.get("complete") is not True:
                waiting = set(alive)
            if waiting:  # holders of S still run: keep the old candidates for a later run
                carried, held = set(map(str, pending["packs"])), waiting
            else:
                for k, v in sweep(repo, set(map(str, pending["packs"]))).items():
                    result[k] += v
        m = mark(repo)
        candidates = m.dead(avoid=carried) | carried
        _write_pending(repo, candidates, held, complete=False)
        s, _ = _alive_leases(repo, own.name)  # after the pending list is visible
        _write_pending(repo, candidates, held | s)
        deferred = bool(candidates) and bool(held | s)
        if candidates and not (held | s):
            for k, v in sweep(repo, candidates).items():
                result[k] += v
            _write_pending(repo, set(), set())
            candidates = set()
        result.update(
            backups=m.backups,
            chunks_live=len(m.live),
            packs=len(m.packs) - result["packs_deleted"],
            packs_pending=len(candidates),
            leases=len(alive | s),
            deferred=deferred,
        )
        return result
