"""A data-key rotation's progress and end in the records, and the dropping of older data-key
generations nothing needs any more (docs/keys.md, "Rotating the data key").

Called by engine_reports.py (the engine's ``rekey`` status in its node's heartbeat) and
operation_results.py (snapshots taken, deleted, reverted); the policy is in
key_generations.py.
"""

from __future__ import annotations

import logging
from typing import Any

from cargohold.control import key_generations as gens
from cargohold.control.model import EventKind, Snapshot, Volume
from cargohold.control.repository import Repository, now
from cargohold.errors import NotFound

log = logging.getLogger("cargohold.manager")

PROGRESS_FIELDS = ("state", "keys", "groups_done", "groups_total", "blocks_rewritten", "error")


def progress_of(status: object) -> dict[str, Any]:
    """The part of an engine's ``rekey`` status the manager keeps (an engine's status is
    not trusted to be well formed: what is not a number or a short string is left out)."""
    if not isinstance(status, dict):
        return {}
    out: dict[str, Any] = {}
    for k in (*PROGRESS_FIELDS, "generation"):
        v = status.get(k)
        if isinstance(v, bool):
            continue
        if isinstance(v, int) or (isinstance(v, str) and len(v) <= 500):
            out[k] = v
    return out


async def engine_rekey(repo: Repository, vol: Volume, status: object) -> None:
    """The running engine's ``rekey`` status, into the volume's running rotation: its
    progress, and once it says every block is under the rotation's generation, the end of
    the rotation (the volume's blocks need only that generation now; older ones are
    dropped unless snapshots need them)."""
    enc = vol.encryption
    rot = enc.rotation if enc is not None else None
    if enc is None or rot is None or rot.state != "running":
        return
    progress = progress_of(status)
    if progress.get("generation") not in (None, rot.generation):
        return  # about keys the engine had before: not this rotation's progress
    done = gens.rekey_done(status, rot.generation)
    if not done and progress == rot.progress:
        return

    def change(v: Volume) -> Volume | None:
        e = v.encryption
        if e is None or e.rotation is None or e.rotation != rot:
            return None  # another rotation meanwhile: its own reports decide
        r = e.rotation.model_copy(update={"progress": progress})
        if done:
            r.state, r.finished = "finished", now()
            head = sorted({rot.generation, *e.rotation.reverted}, reverse=True)
            v.encryption = e.model_copy(update={"rotation": r, "head_generations": head})
        else:
            v.encryption = e.model_copy(update={"rotation": r})
        return v

    try:
        await repo.update_volume(vol.name, change)
    except NotFound:
        return
    if done:
        await repo.add_event(
            EventKind.DATA_KEY_ROTATION_FINISHED,
            f"data key rotation to generation {rot.generation} finished: every block of "
            f"the volume is under it ({progress.get('blocks_rewritten', 0)} rewritten)",
            volume=vol.name,
        )
        log.info("volume %s: data key rotation to generation %d finished", vol.name, rot.generation)
        await drop_unneeded(repo, vol.name)


async def drop_unneeded(repo: Repository, volume: str) -> list[int]:
    """Destroy the volume's older data-key generations that neither its blocks nor any of
    its snapshots need (and note on the others why they are kept); -> those dropped."""
    snaps = await repo.snapshots(volume)
    dropped: list[int] = []

    def change(v: Volume) -> Volume | None:
        if v.encryption is None or len(v.encryption.keys) < 1:
            return None
        new, gone = gens.prune(v.encryption, snaps)
        if new == v.encryption:
            return None
        dropped[:] = gone
        v.encryption = new
        return v

    try:
        await repo.update_volume(volume, change)
    except NotFound:
        return []
    if dropped:
        await repo.add_event(
            EventKind.DATA_KEY_DROPPED,
            f"data key generation(s) {', '.join(map(str, dropped))} destroyed: no block of "
            "the volume or of its snapshots is under them any more",
            volume=volume,
        )
        log.info("volume %s: dropped data key generations %s", volume, dropped)
    return dropped


async def snapshot_taken(repo: Repository, volume: str, name: str) -> None:
    """A snapshot was taken: it needs the generations recorded at its request and those
    the volume's blocks may be under now (a rotation may have started meanwhile)."""
    try:
        vol = await repo.volume(volume)
    except NotFound:
        return
    if vol.encryption is None:
        return
    enc = vol.encryption

    def change(s: Snapshot) -> Snapshot | None:
        if not s.key_generations:
            return None  # not known: it keeps every generation
        want = gens.snapshot_generations(enc, s.key_generations)
        if want == s.key_generations:
            return None
        s.key_generations = want
        return s

    try:
        await repo.update_snapshot(volume, name, change)
    except NotFound:
        pass


async def snapshot_reverted(repo: Repository, volume: str, name: str) -> None:
    """The volume was reverted to snapshot ``name``: its blocks may be under that
    snapshot's generations again (kept until the volume's next rotation finishes)."""
    try:
        snap = await repo.snapshot(volume, name)
    except NotFound:
        snap = None

    def change(v: Volume) -> Volume | None:
        e = v.encryption
        if e is None or not e.keys:
            return None
        kept = set(gens.generations(e))
        extra = (set(snap.key_generations or kept) if snap is not None else kept) & kept
        head = sorted(gens.head(e) | extra, reverse=True)
        update: dict[str, object] = {"head_generations": head}
        rot = e.rotation
        if rot is not None and rot.state == "running":  # its "done" may be from before
            reverted = sorted(set(rot.reverted) | extra, reverse=True)
            update["rotation"] = rot.model_copy(update={"reverted": reverted})
        v.encryption = e.model_copy(update=update)
        return v

    try:
        await repo.update_volume(volume, change)
    except NotFound:
        pass
