"""Offline verification of a backup repository: needs only the target and the key.

``verify(repo, backup=None, read_data=False)`` checks the structure (the catalog decodes and
agrees with the manifests; every manifest and index object decodes; every chunk a manifest
references is in an index and its pack exists) and, with ``read_data``, reads every pack the
checked backups use: the pack's trailer must agree with the index, and every blob they
reference is decrypted (which checks its authentication tag), decompressed and hashed again to
its chunk id. Every problem is named (object, chunk, backup) in the report; verify never
stops at the first one and never changes the repository. The CLI's ``backup verify`` and the
tests call it; it LISTs (it is not on the hot path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cargohold.backup import format as fmt
from cargohold.backup.chunk_map import ChunkMap
from cargohold.backup.index import PREFIX as INDEX_PREFIX
from cargohold.backup.index import read_index
from cargohold.backup.packs import PREFIX as PACK_PREFIX
from cargohold.backup.packs import read_trailer
from cargohold.errors import CargoholdError, NotFound

if TYPE_CHECKING:
    from cargohold.backup.repository import Repository

MANIFEST_PREFIX = "backups/"


@dataclass
class VerifyReport:
    """What verify found. ``ok`` is True when ``errors`` is empty."""

    target: str = ""
    backups: int = 0
    chunks: int = 0
    packs: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing_chunks: list[str] = field(default_factory=list)  # chunk ids (hex)
    bad_chunks: list[dict[str, str]] = field(default_factory=list)  # {"chunk", "object"}
    bad_objects: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def error(self, message: str, obj: str | None = None) -> None:
        self.errors.append(message)
        if obj is not None and obj not in self.bad_objects:
            self.bad_objects.append(obj)


def verify(repo: Repository, backup: str | None = None, read_data: bool = False) -> VerifyReport:
    t, keys = repo.target, repo.keys
    rep = VerifyReport(target=t.describe())
    # the catalog
    catalog_ids: set[str] | None = None
    cat = None
    try:
        cat = repo._catalog()
        catalog_ids = set(cat.backups)
    except CargoholdError as e:
        rep.error(f"catalog: {e}", "catalog")
    # the manifests
    if backup is not None:
        names = [MANIFEST_PREFIX + backup]
    else:
        names = t.list(MANIFEST_PREFIX)
        listed = {n[len(MANIFEST_PREFIX) :] for n in names}
        for missing in sorted((catalog_ids or set()) - listed):
            rep.error(
                f"backup {missing}: listed in the catalog but its manifest is missing",
                MANIFEST_PREFIX + missing,
            )
    maps: dict[str, ChunkMap] = {}
    for name in names:
        bid = name[len(MANIFEST_PREFIX) :]
        try:
            info, _, chunk_map = repo.manifest(bid)
        except CargoholdError as e:
            rep.error(f"backup {bid}: {e}", name)
            continue
        maps[bid] = chunk_map
        if cat is not None and bid in cat.backups and cat.backups[bid] != info:
            rep.error(f"backup {bid}: the catalog's record differs from its manifest's", "catalog")
        if catalog_ids is not None and bid not in catalog_ids:
            rep.warnings.append(
                f"backup {bid}: has a manifest but is not in the catalog (not listed)"
            )
    rep.backups = len(maps)
    # the index
    index: dict[bytes, fmt.Location] = {}
    for name in t.list(INDEX_PREFIX):
        try:
            index.update(read_index(t, keys, name))
        except CargoholdError as e:
            rep.error(f"index {name}: {e}", name)
    packs = set(t.list(PACK_PREFIX))
    rep.packs = len(packs)
    # every referenced chunk
    users: dict[bytes, list[str]] = {}
    for bid, chunk_map in maps.items():
        for cid in chunk_map.chunks():
            users.setdefault(cid, []).append(bid)
    rep.chunks = len(users)
    wanted: dict[str, list[tuple[bytes, fmt.Location]]] = {}
    for cid, bids in sorted(users.items()):
        loc = index.get(cid)
        if loc is None or loc.pack not in packs:
            where = "is in no index" if loc is None else f"is in pack {loc.pack}, which is missing"
            rep.missing_chunks.append(cid.hex())
            rep.error(
                f"chunk {cid.hex()} (backups {', '.join(sorted(bids))}) {where}",
                loc.pack if loc else None,
            )
            continue
        wanted.setdefault(loc.pack, []).append((cid, loc))
    if read_data:
        for pack, blobs in sorted(wanted.items()):
            _read_pack(repo, rep, pack, blobs, users)
    return rep


def _read_pack(
    repo: Repository,
    rep: VerifyReport,
    pack: str,
    blobs: list[tuple[bytes, fmt.Location]],
    users: dict[bytes, list[str]],
) -> None:
    try:
        data = repo.target.get(pack)
    except NotFound:
        rep.error(f"pack {pack}: vanished during verify", pack)
        return
    rep.bytes_read += len(data)
    try:
        trailer = {e.id: e for e in read_trailer(repo.keys, pack, data)}
    except CargoholdError as err:
        rep.error(f"pack {pack}: {err}", pack)
        trailer = None
    for cid, loc in blobs:
        if trailer is not None:
            entry = trailer.get(cid)
            if entry is None or (entry.offset, entry.length, entry.flags, entry.raw) != (
                loc.offset,
                loc.length,
                loc.flags,
                loc.raw,
            ):
                rep.error(
                    f"pack {pack}: its trailer disagrees with the index about chunk {cid.hex()}",
                    pack,
                )
        rep.blobs_read += 1
        try:
            repo.keys.open_blob(
                cid, loc.flags, loc.raw, data[loc.offset : loc.offset + loc.length], pack
            )
        except CargoholdError as e:
            rep.bad_chunks.append({"chunk": cid.hex(), "object": pack})
            rep.error(f"{e} (backups {', '.join(sorted(users[cid]))})", pack)
