"""Which generations of an encrypted volume's data key are kept, and why (docs/keys.md,
"Rotating the data key"). Pure functions over the records; the key service
(service_keys.py), the engine reports (engine_reports.py) and snapshot results
(operation_results.py) call them.

A data-key rotation puts a new generation first; the volume's engine rewrites every block
of the volume under it in the background (its "sweep"). An older generation is kept while
something may still hold blocks under it:

- the volume itself (``head_generations``: every kept generation until a sweep under the
  newest one finished; a revert to an older snapshot brings the snapshot's back);
- a snapshot taken before the sweep finished (``Snapshot.key_generations``; [] on a
  snapshot whose generations are not known, e.g. one recorded before rotation existed:
  it keeps every generation, nothing is dropped on absence of evidence).

The newest generation is always kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from cargohold.control.model import Snapshot, VolumeEncryption, WrappedDataKey
from cargohold.encryption.block_cipher import MAX_KEYS  # the engine takes 1..MAX_KEYS
from cargohold.errors import InvalidArgument, KeyUnavailable, WrongState


def generations(enc: VolumeEncryption) -> list[int]:
    """The kept generations, newest first."""
    return [k.generation for k in enc.keys]


def newest(enc: VolumeEncryption) -> int:
    return enc.keys[0].generation if enc.keys else 0


def head(enc: VolumeEncryption) -> set[int]:
    """The generations the volume's own blocks may be under."""
    return set(enc.head_generations) if enc.head_generations else set(generations(enc))


def reasons(enc: VolumeEncryption, snapshots: Iterable[Snapshot]) -> dict[int, list[str]]:
    """Generation -> what still needs it (the volume's blocks, snapshots by name)."""
    out: dict[int, list[str]] = {}
    kept = generations(enc)
    for g in head(enc):
        out.setdefault(g, []).append("the volume's blocks")
    for s in snapshots:
        for g in s.key_generations or kept:
            out.setdefault(g, []).append(f"snapshot {s.name}")
    return out


def prune(
    enc: VolumeEncryption, snapshots: Iterable[Snapshot]
) -> tuple[VolumeEncryption, list[int]]:
    """``enc`` without the older generations nothing needs, each kept one saying why it is
    kept; -> (the new record, the generations dropped). The newest is never dropped."""
    why = reasons(enc, snapshots)
    keep: list[WrappedDataKey] = []
    dropped: list[int] = []
    for i, k in enumerate(enc.keys):
        if i == 0:
            keep.append(k.model_copy(update={"kept_for": ""}))
        elif k.generation in why:
            keep.append(k.model_copy(update={"kept_for": ", ".join(why[k.generation])}))
        else:
            dropped.append(k.generation)
    return with_keys(enc, keep), dropped


def with_keys(
    enc: VolumeEncryption, keys: list[WrappedDataKey], **update: object
) -> VolumeEncryption:
    """``enc`` with these keys (newest first) and ``wrapped_key`` mirroring the newest."""
    return enc.model_copy(
        update={"keys": keys, "wrapped_key": keys[0].wrapped_key if keys else "", **update}
    )


def check_can_rotate(name: str, enc: VolumeEncryption) -> None:
    """WrongState (409) naming why a new rotation cannot start now."""
    if not enc.keys:
        raise WrongState(
            f"the data key of volume {name} was destroyed (volume delete --shred): "
            "there is nothing to rotate"
        )
    if enc.rotation is not None and enc.rotation.state == "running":
        raise WrongState(
            f"volume {name}: the rotation to data key generation {enc.rotation.generation} "
            "is still running; wait until it finished (volume get shows its progress)"
        )
    if len(enc.keys) >= MAX_KEYS:
        held = ", ".join(f"{k.generation} ({k.kept_for or 'newest'})" for k in enc.keys)
        raise WrongState(
            f"volume {name} keeps {len(enc.keys)} data keys, the most an engine takes "
            f"({held}): delete the snapshots that keep old generations first"
        )


def snapshot_generations(enc: VolumeEncryption | None, *more: Iterable[int]) -> list[int]:
    """What a snapshot taken now records: the volume's head generations (and ``more``)."""
    if enc is None:
        return []
    out = head(enc)
    for m in more:
        out |= set(m)
    return sorted(out, reverse=True)


def rekey_done(status: object, generation: int) -> bool:
    """An engine's ``rekey`` status (as its agent reports it, with the generation it gave
    the engine first) says every block is under ``generation``."""
    return (
        isinstance(status, dict)
        and status.get("state") == "done"
        and status.get("generation") == generation
    )


def for_copy(enc: VolumeEncryption, needed: Iterable[int] | None) -> VolumeEncryption:
    """The key record of a clone or restore of a volume with ``enc``: the same id and the
    generations its copied blocks may be under (``needed``; None or empty: every kept
    one), no rotation of its own. Those generations stay until the copy's own rotation
    finishes (``volume rekey --data-key`` on it)."""
    want = set(needed or ()) or set(generations(enc))
    missing = want - set(generations(enc))
    if missing or not enc.keys:
        raise KeyUnavailable(
            f"data key generation(s) {sorted(missing)} of encryption id {enc.id} are gone: "
            "the blocks to copy cannot be read"
        )
    keys = [k.model_copy(update={"kept_for": ""}) for k in enc.keys if k.generation in want]
    return with_keys(
        enc,
        keys,
        head_generations=[k.generation for k in keys] if len(keys) > 1 else [],
        rotation=None,
    )


def merge_for_standby(
    current: VolumeEncryption, incoming: VolumeEncryption
) -> tuple[VolumeEncryption, list[int]]:
    """A standby's key record (``current``) holding every generation a newer backup's
    label carries (``incoming``) as well as its own (its applied state, the one a failed
    apply is reverted to, may be under them): -> (the record, the generations added).
    Newest first, no duplicates, the standby's id kept. The standby needs no clear key to
    write the backup's ciphertext; its engine needs them all to serve it
    (docs/disaster-recovery.md, "Encrypted volumes"). InvalidArgument when the backup is
    of another data key (another id), when its keys are wrapped under another KEK than
    the standby's while the standby holds generations the backup no longer carries (one
    record names one KEK: rewrap the standby first, ``volume rekey``), or when the union
    is more than an engine takes."""
    if incoming.id != current.id:
        raise InvalidArgument(
            f"the backup is of encryption id {incoming.id}, the standby's is {current.id}: "
            "it is a backup of another volume's data"
        )
    mine = {k.generation: k for k in current.keys}
    theirs = {k.generation: k for k in incoming.keys}
    added = sorted(set(theirs) - set(mine), reverse=True)
    same_kek = (incoming.provider, incoming.key_ref) == (current.provider, current.key_ref)
    if not same_kek:
        if not added and all(mine[g].wrapped_key == theirs[g].wrapped_key for g in mine):
            return current, []
        if set(mine) - set(theirs):
            raise InvalidArgument(
                f"the backup's data keys are wrapped under {incoming.provider} key "
                f"{incoming.key_ref}, the standby's under {current.provider} key "
                f"{current.key_ref}, and the standby holds generation(s) "
                f"{sorted(set(mine) - set(theirs))} the backup does not carry"
            )
        keys = [theirs[g] for g in sorted(theirs, reverse=True)]
        merged = with_keys(current, keys, provider=incoming.provider, key_ref=incoming.key_ref)
        return merged, added
    if not added:
        return current, []
    union = {**theirs, **mine}  # the standby's own wrapping wins for a generation both hold
    if len(union) > MAX_KEYS:
        raise InvalidArgument(
            f"the standby would hold {len(union)} data key generations "
            f"({sorted(union, reverse=True)}), more than an engine takes ({MAX_KEYS})"
        )
    keys = [union[g].model_copy(update={"kept_for": ""}) for g in sorted(union, reverse=True)]
    head_gens = sorted(head(current) | set(added), reverse=True)
    return with_keys(current, keys, head_generations=head_gens if len(keys) > 1 else []), added
