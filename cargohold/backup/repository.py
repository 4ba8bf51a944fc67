"""Repository: a backup repository in a target (docs/formats/backup-repository.md).

The library's face: ``Repository.init`` / ``open`` (with the user's 32-byte key),
``start_backup`` (-> BackupWriter), ``backups`` (one GET of the catalog), ``backup``,
``delete``, ``restore_reader`` (-> BackupReader), ``lease``, ``gc`` (gc.py) and, beside it,
``verify.verify``. Calls are synchronous and thread-safe; async code runs them with
``asyncio.to_thread``. The engine's backup and restore operations, the CLI's offline verify
and the tests call it. No call on the backup, restore or listing path issues a LIST.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from cargohold.backup import format as fmt
from cargohold.backup.catalog import CATALOG, BackupInfo, Catalog
from cargohold.backup.chunk_map import ChunkMap
from cargohold.backup.gc import PENDING, SKEW, collect
from cargohold.backup.index import PREFIX as INDEX_PREFIX
from cargohold.backup.index import read_index, write_index
from cargohold.backup.keys import KEY_OBJECT, RepoKeys, check_user_key, unwrap_master, wrap_master
from cargohold.backup.leases import Lease, pin_name, pinned, put_pin
from cargohold.backup.packs import PACK_BYTES, read_trailer
from cargohold.backup.packs import PREFIX as PACK_PREFIX
from cargohold.backup.reader import BackupReader
from cargohold.backup.targets import Target
from cargohold.backup.writer import BackupWriter
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    ChecksumError,
    FormatError,
    InvalidArgument,
    NotFound,
)

MANIFEST_PREFIX = "backups/"
LEASE_TTL = 300.0


def new_backup_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ-", time.gmtime()) + os.urandom(4).hex()


def check_backup_id(backup: str) -> str:
    if (
        not isinstance(backup, str)
        or not backup
        or len(backup) > 128
        or not all(ch.isalnum() or ch in "-_." for ch in backup)
        or backup[0] == "."
    ):
        raise InvalidArgument(f"bad backup id {backup!r}")
    return backup


class Repository:
    """An open repository. Thread-safe."""

    def __init__(
        self,
        target: Target,
        keys: RepoKeys,
        repository: str,
        *,
        uploads: int = 4,
        pack_bytes: int = PACK_BYTES,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        if uploads < 1:
            raise InvalidArgument("uploads must be at least 1")
        self.target, self.keys, self.id = target, keys, repository
        self.uploads, self.pack_bytes, self.lease_ttl = uploads, pack_bytes, lease_ttl
        self._lock = threading.RLock()
        self._index_cache: dict[str, dict[bytes, fmt.Location]] = {}

    # --- init / open --------------------------------------------------------------------------
    @classmethod
    def init(cls, target: Target, key: bytes, **kw: Any) -> Repository:
        """Create a repository in an empty place of ``target``; AlreadyExists if one is there."""
        check_user_key(key)
        if target.exists(KEY_OBJECT):
            raise AlreadyExists(f"{target.describe()} already holds a backup repository")
        repository = uuid.uuid4().hex
        master = os.urandom(32)
        preamble = {
            "repository": repository,
            "created": time.time(),
            "format": fmt.VERSION,
            "kdf": "hkdf-sha256",
            "wrap": "aes-256-gcm",
            "cell": fmt.CELL,
        }
        repo = cls(target, RepoKeys(master, repository), repository, **kw)
        repo._put_catalog(Catalog(repository=repository))
        target.put(KEY_OBJECT, wrap_master(key, master, preamble))
        return repo

    @classmethod
    def open(cls, target: Target, key: bytes, **kw: Any) -> Repository:
        """Open the repository; PermissionDenied on a wrong key, NotFound when there is none."""
        check_user_key(key)
        try:
            data = target.get(KEY_OBJECT)
        except NotFound as e:
            if "bucket" in e.detail:  # the bucket itself is gone: say so, not "no repository"
                raise
            raise NotFound(
                f"{target.describe()} holds no backup repository (no {KEY_OBJECT})"
            ) from None
        master, pre = unwrap_master(key, data)
        return cls(target, RepoKeys(master, pre["repository"]), pre["repository"], **kw)

    # --- catalog ------------------------------------------------------------------------------
    def _catalog(self) -> Catalog:
        try:
            data = self.target.get(CATALOG)
        except NotFound:
            raise NotFound(
                f"{self.target.describe()}: the repository's catalog is missing (repair rebuilds it from the manifests)"
            ) from None
        return Catalog.decode(self.keys.open(fmt.KIND_CATALOG, CATALOG, data))

    def _put_catalog(self, cat: Catalog) -> None:
        self.target.put(CATALOG, self.keys.seal(fmt.KIND_CATALOG, CATALOG, cat.encode()))

    def _update_catalog(self, change: Callable[[Catalog], None]) -> None:
        """Read, change, write. Serialised in this process; across processes the manager
        keeps one writer of a target at a time (a lost update is repaired from manifests)."""
        with self._lock:
            cat = self._catalog()
            change(cat)
            self._put_catalog(cat)

    def backups(self) -> list[BackupInfo]:
        """Every backup, oldest first: one GET."""
        return sorted(self._catalog().backups.values(), key=lambda b: (b.created, b.id))

    def backup(self, backup: str) -> BackupInfo:
        info = self._catalog().backups.get(check_backup_id(backup))
        if info is None:
            raise NotFound(f"no backup {backup} in {self.target.describe()}", backup=backup)
        return info

    # --- manifests ------------------------------------------------------------------------------
    def manifest(self, backup: str) -> tuple[BackupInfo, list[str], ChunkMap]:
        name = MANIFEST_PREFIX + check_backup_id(backup)
        try:
            data = self.target.get(name)
        except NotFound:
            raise NotFound(
                f"no backup {backup} in {self.target.describe()}", backup=backup
            ) from None
        info_d, indexes, raw = fmt.decode_manifest(
            self.keys.open(fmt.KIND_MANIFEST, name, data), name
        )
        info = BackupInfo.from_dict(info_d, name)
        if info.id != backup:
            raise FormatError(f"manifest {name} describes backup {info.id}", object=name)
        chunk_map = ChunkMap.decode(raw, name)
        if chunk_map.size != info.size:
            raise FormatError(
                f"manifest {name}: map size {chunk_map.size} != {info.size}", object=name
            )
        return info, indexes, chunk_map

    def _record(
        self, info: BackupInfo, indexes: list[str], chunk_map: ChunkMap, mine: list[str]
    ) -> None:
        """Commit: the manifest first, then the catalog entry (then the backup exists)."""
        name = MANIFEST_PREFIX + info.id
        payload = fmt.encode_manifest(info.to_dict(), indexes, chunk_map.encode())
        self.target.put(name, self.keys.seal(fmt.KIND_MANIFEST, name, payload))

        def add(cat: Catalog) -> None:
            cat.backups[info.id] = info
            cat.indexes = sorted(set(cat.indexes) | set(mine))

        try:
            self._update_catalog(add)
        except BaseException:
            with contextlib.suppress(CargoholdError):
                self.target.delete([name])
            raise

    # --- index ----------------------------------------------------------------------------------
    def _load_index(self, names: list[str]) -> tuple[dict[bytes, fmt.Location], list[str]]:
        """The merged index of the named objects (cached: they never change), and the names
        that are gone (GC merged them away)."""
        out: dict[bytes, fmt.Location] = {}
        gone = []
        for name in names:
            part = self._index_cache.get(name)
            if part is None:
                try:
                    part = read_index(self.target, self.keys, name)
                except NotFound:
                    gone.append(name)
                    continue
                with self._lock:
                    self._index_cache[name] = part
            out.update(part)
        return out, gone

    def _pending_packs(self) -> set[str]:
        try:
            data = self.target.get(PENDING)
        except NotFound:
            return set()
        doc = fmt.decode_json(self.keys.open(fmt.KIND_PENDING, PENDING, data), PENDING)
        packs = doc.get("packs", [])
        if not isinstance(packs, list):
            raise FormatError(f"{PENDING}: bad pack list", object=PENDING)
        return {str(p) for p in packs}

    # --- backup ---------------------------------------------------------------------------------
    def lease(self, kind: str, ttl: float) -> Lease:
        """A held lease (a context manager), renewed until released."""
        return Lease(self.target, self.keys, kind, ttl).acquire()

    def start_backup(
        self,
        volume: str,
        volume_id: str,
        size: int,
        snapshot: str,
        generation: int,
        labels: dict[str, str],
        parent: str | None,
    ) -> BackupWriter:
        """A writer for a new backup; with ``parent``, an incremental one starting from the
        parent's chunk map (write only what changed; zero() what became zeros)."""
        if not isinstance(size, int) or size <= 0 or size % fmt.BLOCK:
            raise InvalidArgument(f"volume size {size} must be a positive multiple of {fmt.BLOCK}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise InvalidArgument("labels are str -> str")
        if generation < 0:
            raise InvalidArgument(f"bad generation {generation}")
        lease = self.lease("backup", self.lease_ttl)  # before reading the pending list (gc.py)
        try:
            pending = self._pending_packs()
            cat = self._catalog()
            index, gone = self._load_index(cat.indexes)
            if gone:  # GC merged them meanwhile: read the catalog again
                cat = self._catalog()
                index, _ = self._load_index(cat.indexes)
            known = {cid: loc for cid, loc in index.items() if loc.pack not in pending}
            if parent is not None:
                _, _, p_map = self.manifest(parent)
                base = p_map.copy(size)
            else:
                base = ChunkMap(size)
            info = BackupInfo(
                id=new_backup_id(),
                volume=volume,
                volume_id=volume_id,
                size=size,
                snapshot=snapshot,
                generation=generation,
                parent=parent,
                labels=dict(labels),
                mode="incremental" if parent else "full",
            )
            return BackupWriter(
                self, info, base, lease, known, sorted(set(cat.indexes) - set(gone))
            )
        except BaseException:
            lease.release()
            raise

    def delete(self, backup: str, force: bool = False) -> None:
        """Forget a backup: its catalog entry, then its manifest. GC frees its chunks.
        ``Busy`` when a standby's pin names it (unless ``force``): a standby applies it or
        needs it as the base of its next apply (docs/disaster-recovery.md)."""
        check_backup_id(backup)
        if not force:
            held = self.pinned()
            if backup in held or "?" in held:
                who = held.get(backup) or held["?"]
                raise Busy(
                    f"backup {backup} is pinned by a standby volume ({who[0]}): it is applying "
                    "it or will apply the next backup on top of it; it can be deleted once the "
                    "standby has moved on (or was activated or deleted)",
                    backup=backup,
                )

        def drop(cat: Catalog) -> None:
            cat.backups.pop(backup, None)

        self._update_catalog(drop)
        self.target.delete([MANIFEST_PREFIX + backup])

    # --- pins (standby volumes) ----------------------------------------------------------
    def pin(self, holder: str, backups: list[str], ttl: float) -> str:
        """Write ``holder``'s pin on ``backups`` (one PUT; leases.py): the object's name."""
        for b in backups:
            check_backup_id(b)
        return put_pin(self.target, self.keys, holder, backups, ttl)

    def unpin(self, holder: str) -> None:
        self.target.delete([pin_name(holder)])

    def pinned(self) -> dict[str, list[str]]:
        """Backup id -> the unexpired pins naming it (a LIST of ``locks/``)."""
        return pinned(self.target, self.keys, SKEW)

    # --- restore --------------------------------------------------------------------------------
    def restore_reader(self, backup: str) -> BackupReader:
        lease = self.lease("restore", self.lease_ttl)
        try:
            info, indexes, chunk_map = self.manifest(backup)
            cat = self._catalog()
            index, _ = self._load_index(sorted(set(indexes) | set(cat.indexes)))
            lock = threading.Lock()

            def locate(cid: bytes, refresh: bool) -> fmt.Location:
                """Where a chunk is; ``refresh`` (its pack was not found, or it is in no
                index we read): read the catalog's index again, then every index (LIST)."""
                loc = None if refresh else index.get(cid)
                if loc is None:
                    with lock:
                        again, _ = self._load_index(self._catalog().indexes)
                        loc = again.get(cid)
                        if loc is None:  # a lost catalog update: read every index object
                            again, _ = self._load_index(self.target.list(INDEX_PREFIX))
                            loc = again.get(cid)
                        if loc is not None:
                            index[cid] = loc
                if loc is None:
                    raise NotFound(
                        f"chunk {cid.hex()} of backup {backup} is in no index (run verify)",
                        chunk=cid.hex(),
                    )
                return loc

            return BackupReader(
                self.target, self.keys, info, chunk_map, locate, lease, self.uploads
            )
        except BaseException:
            lease.release()
            raise

    def repair(self) -> dict[str, int]:
        """Rebuild the catalog from the manifests and index objects (LIST): after a lost
        catalog update (verify warns of a manifest not in the catalog) or a damaged catalog.
        Packs that no readable index names (an index object lost or damaged, or a crashed
        writer's packs) are read and indexed again from their trailers. Adds and drops catalog
        entries; never deletes a manifest, index or pack."""
        found: dict[str, BackupInfo] = {}
        for name in self.target.list(MANIFEST_PREFIX):
            info, _, _ = self.manifest(name[len(MANIFEST_PREFIX) :])
            found[info.id] = info
        indexes, covered = [], set()
        for name in self.target.list(INDEX_PREFIX):
            try:
                entries = read_index(self.target, self.keys, name)
            except (FormatError, ChecksumError):
                continue  # damaged: its packs are indexed again below
            indexes.append(name)
            covered |= {loc.pack for loc in entries.values()}
        recovered: dict[bytes, fmt.Location] = {}
        for pack in self.target.list(PACK_PREFIX):
            if pack not in covered:
                for e in read_trailer(self.keys, pack, self.target.get(pack)):
                    recovered[e.id] = fmt.Location(pack, e.offset, e.length, e.raw, e.flags)
        if recovered:
            indexes.append(write_index(self.target, self.keys, recovered))
        counts = {"added": 0, "dropped": 0, "chunks_indexed": len(recovered)}

        with self._lock:
            try:
                cat = self._catalog()
            except (NotFound, FormatError, ChecksumError):
                cat = Catalog(repository=self.id)
            counts["added"] = len(set(found) - set(cat.backups))
            counts["dropped"] = len(set(cat.backups) - set(found))
            cat.backups, cat.indexes = found, sorted(indexes)
            self._put_catalog(cat)
        return counts

    def gc(self) -> dict[str, Any]:
        """Mark and sweep (gc.py states the rules); returns counts."""
        return collect(self)
