"""``Service``'s calls on the keys of encrypted volumes (issue 19, docs/keys.md): a new
volume's data key and its wrapping, the key an agent fetches to start an engine, the
rewrap under another key-encryption key (``volume rekey``), and crypto-shredding.

The manager holds clear data keys only in memory, for the length of one call: it unwraps a
volume's key with its provider (keys/) and hands it to the agent of the node the volume's
engine is to run on, over the API's mutual TLS; the agent passes it to the engine through a
pipe. Records keep only the wrapped key. Provider calls block (files, KMS): they run in a
worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from cargohold.control import key_generations as gens
from cargohold.control.model import (
    EventKind,
    KeyRotation,
    Volume,
    VolumeEncryption,
    WrappedDataKey,
)
from cargohold.control.repository import now
from cargohold.control.requests import DataKeyRequest, KeyChoice
from cargohold.control.service_base import ServiceBase
from cargohold.errors import InvalidArgument, KeyUnavailable, PermissionDenied, WrongState
from cargohold.keys.data_keys import DataKey, WrappedKey, new_data_key, new_encryption_id
from cargohold.keys.kms import KmsProvider
from cargohold.keys.providers import FILE, KMS, FileProvider, KeyProvider, Keyring
from cargohold.security.identity import Identity, Role

log = logging.getLogger("cargohold.manager")

SHREDDED = "/shredded/"  # /shredded/<encryption id> -> {"volume", "at"}: keys destroyed
# a backup's label carrying its volume's key record (wrapped key, provider, KEK, id): what a
# restore (here or in another cluster with the same KEK) needs (docs/keys.md)
ENCRYPTION_LABEL = "cargohold.io/encryption"
DEFAULT_KEY = "default"


def keyring_for(key_dir: str | None, kms_endpoint: str | None, kms_region: str | None) -> Keyring:
    """The manager's providers, from its settings: ``file`` with a key directory, ``kms``
    with an endpoint or a region."""
    providers: list[KeyProvider] = []
    if key_dir:
        providers.append(FileProvider(key_dir))
    if kms_endpoint or kms_region:
        providers.append(KmsProvider(kms_endpoint, kms_region))
    return Keyring(providers)


def choice(key: str | None, kms_key: str | None) -> tuple[str, str]:
    """(provider, key_ref) of a request's ``key`` / ``kms_key`` (default: file 'default')."""
    if kms_key is not None:
        return KMS, kms_key
    return FILE, key or DEFAULT_KEY


def encryption_label(enc: VolumeEncryption) -> str:
    """A backup's ENCRYPTION_LABEL: the key record with every kept generation wrapped
    (``wrapped_key``: the newest, what readers before data-key rotation take)."""
    return json.dumps(
        {
            "id": enc.id,
            "provider": enc.provider,
            "key_ref": enc.key_ref,
            "wrapped_key": enc.wrapped_key,
            "keys": [
                {"generation": k.generation, "wrapped_key": k.wrapped_key, "created": k.created}
                for k in enc.keys
            ],
        },
        sort_keys=True,
    )


def encryption_of_label(text: str) -> VolumeEncryption:
    """The key record a backup's ENCRYPTION_LABEL carries (InvalidArgument if broken)."""
    try:
        d = json.loads(text)
        keys = [
            WrappedDataKey(
                generation=int(k["generation"]),
                wrapped_key=str(k["wrapped_key"]),
                created=float(k.get("created") or 0.0),
            )
            for k in d.get("keys") or []
        ]
        return VolumeEncryption(
            id=d["id"],
            provider=d["provider"],
            key_ref=d["key_ref"],
            wrapped_key=d["wrapped_key"],
            created=now(),
            keys=keys,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidArgument(f"the backup's encryption label is broken: {e}") from None


class KeyCalls(ServiceBase):
    """The key calls (module docstring). ``keyring``: the providers (tests set their own)."""

    _keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            s = self.settings
            self._keyring = keyring_for(s.key_dir, s.kms_endpoint, s.kms_region)
        return self._keyring

    @keyring.setter
    def keyring(self, value: Keyring) -> None:
        self._keyring = value

    async def new_encryption(self, key: str | None, kms_key: str | None) -> VolumeEncryption:
        """A new data key and id, wrapped under the chosen KEK and unwrapped once to prove
        the KEK works: KeyUnavailable / KeyRefused before anything is stored."""
        provider, ref = choice(key, kms_key)
        p = self.keyring.get(provider)
        dek, eid = new_data_key(), new_encryption_id()

        def work() -> WrappedKey:
            p.check(ref)
            wrapped = p.wrap(dek, ref, eid)
            if p.unwrap(wrapped, eid).key != dek.key:  # pragma: no cover - a broken provider
                raise KeyUnavailable(f"key {ref!r} does not give back the data key it wrapped")
            return wrapped

        wrapped = await asyncio.to_thread(work)
        t = now()
        first = WrappedDataKey(generation=1, wrapped_key=wrapped.b64, created=t)
        return VolumeEncryption(id=eid, provider=provider, key_ref=ref, created=t, keys=[first])

    async def unwrap(self, name: str, enc: VolumeEncryption) -> DataKey:
        """The newest data key of ``enc`` in clear (KeyUnavailable once shredded)."""
        return (await self.unwrap_all(name, enc))[0][1]

    async def unwrap_all(self, name: str, enc: VolumeEncryption) -> list[tuple[int, DataKey]]:
        """Every kept generation's data key in clear, newest first: (generation, key)."""
        if not enc.keys:
            raise KeyUnavailable(
                f"the data key of volume {name} was destroyed (volume delete --shred): its "
                "data, snapshots and backups cannot be read"
            )
        p = self.keyring.get(enc.provider)

        def work() -> list[tuple[int, DataKey]]:
            return [
                (
                    k.generation,
                    p.unwrap(WrappedKey.from_b64(enc.provider, enc.key_ref, k.wrapped_key), enc.id),
                )
                for k in enc.keys
            ]

        return await asyncio.to_thread(work)

    async def rewrap(
        self, name: str, enc: VolumeEncryption, key: str | None, kms_key: str | None
    ) -> VolumeEncryption:
        """``enc`` with its data keys (same keys, same id, every generation) wrapped under
        another KEK: the old KEK must still unwrap them. No data is rewritten."""
        deks = await self.unwrap_all(name, enc)
        provider, ref = choice(key, kms_key)
        p = self.keyring.get(provider)

        def work() -> list[WrappedKey]:
            p.check(ref)
            return [p.wrap(dek, ref, enc.id) for _, dek in deks]

        wrapped = await asyncio.to_thread(work)
        keys = [
            k.model_copy(update={"wrapped_key": w.b64})
            for k, w in zip(enc.keys, wrapped, strict=True)
        ]
        return gens.with_keys(enc, keys, provider=provider, key_ref=ref, rekeyed_at=now())

    async def data_key(
        self, name: str, req: DataKeyRequest, who: Identity, plaintext: bool = False
    ) -> dict[str, Any]:
        """The clear data key of ``name`` for the agent of the node its engine is to run
        on (``plaintext``: a manager without authentication, whose callers are anonymous).
        Anyone else: PermissionDenied, the same for every volume (no existence leaks)."""
        if not plaintext and (who.role is not Role.AGENT or who.name != req.node):
            raise PermissionDenied(f"{who} may not fetch data keys for node {req.node}")
        vol = await self.repo.volume(name)
        eng = vol.engine
        if vol.encryption is None:
            raise WrongState(f"volume {name} is not encrypted: it has no data key")
        if eng is None or eng.node != req.node:
            raise PermissionDenied(
                f"node {req.node} runs no engine of volume {name}: only the agent of the "
                "engine's node gets its data key"
            )
        if eng.epoch != req.epoch:
            raise WrongState(
                f"volume {name}'s engine is at epoch {eng.epoch}, not {req.epoch}: ask again "
                "with the current assignment"
            )
        deks = await self.unwrap_all(name, vol.encryption)
        await self.repo.add_event(
            EventKind.DATA_KEY_ISSUED,
            f"data key given to agent/{req.node} for the engine of epoch {req.epoch} "
            f"(key {vol.encryption.provider}:{vol.encryption.key_ref}, generations "
            f"{', '.join(str(g) for g, _ in deks)})",
            volume=name,
            node=req.node,
        )
        log.info("volume %s: data key given to agent/%s (epoch %d)", name, req.node, req.epoch)
        return {
            "volume": name,
            "epoch": req.epoch,
            "encryption_id": vol.encryption.id,
            "data_key": base64.b64encode(deks[0][1].key).decode(),
            "generation": deks[0][0],
            # every generation the engine needs, newest first (docs/keys.md)
            "keys": [
                {"generation": g, "data_key": base64.b64encode(k.key).decode()} for g, k in deks
            ],
        }

    async def rekey(self, name: str, req: KeyChoice, who: Identity | None = None) -> dict[str, Any]:
        """Rewrap the volume's data keys under the KEK ``req`` names (KEK rotation), and/or
        with ``req.data_key`` start a data-key rotation (``rotate``)."""
        vol = await self._volume(name, who)
        if vol.encryption is None:
            what = "data key to rotate" if req.data_key else "key to rewrap"
            raise WrongState(f"volume {name} is not encrypted: there is no {what}")
        if vol.deleting:
            raise WrongState(f"volume {name} is being deleted")
        old = vol.encryption
        if req.data_key:
            gens.check_can_rotate(name, old)
        if req.key is not None or req.kms_key is not None:
            new = await self.rewrap(name, old, req.key, req.kms_key)
        else:
            new = old
        if req.data_key:
            new = await self._rotated(new)

        def wrapped(e: VolumeEncryption) -> list[tuple[int, str]]:
            return [(k.generation, k.wrapped_key) for k in e.keys]

        def state(e: VolumeEncryption) -> tuple[str, int] | None:
            return (e.rotation.state, e.rotation.generation) if e.rotation else None

        def change(v: Volume) -> Volume | None:  # only over the keys the rewrap read
            cur = v.encryption
            if cur is None or wrapped(cur) != wrapped(old):
                raise WrongState(f"volume {name}'s key changed meanwhile; try again")
            if state(cur) != state(old):
                raise WrongState(f"volume {name}'s key rotation changed meanwhile; try again")
            if req.data_key:
                v.encryption = new
            else:  # the rewrap only: what the heartbeat changed meanwhile (progress) stays
                keys = [
                    k.model_copy(update={"wrapped_key": n.wrapped_key})
                    for k, n in zip(cur.keys, new.keys, strict=True)
                ]
                v.encryption = gens.with_keys(
                    cur, keys, provider=new.provider, key_ref=new.key_ref, rekeyed_at=new.rekeyed_at
                )
            return v

        vol2 = await self.repo.update_volume(name, change)
        if req.key is not None or req.kms_key is not None:
            await self.repo.add_event(
                EventKind.VOLUME_REKEYED,
                f"data keys rewrapped: {old.provider}:{old.key_ref} -> "
                f"{new.provider}:{new.key_ref}",
                volume=name,
            )
            log.info("volume %s: data keys rewrapped under %s:%s", name, new.provider, new.key_ref)
        if req.data_key:
            g = gens.newest(new)
            where = (
                "its engine rewrites every block now"
                if vol2.engine is not None
                else "its engine rewrites every block at the next attach"
            )
            await self.repo.add_event(
                EventKind.DATA_KEY_ROTATION_STARTED,
                f"data key rotation to generation {g} started: {where}",
                volume=name,
            )
            log.info("volume %s: data key rotation to generation %d started", name, g)
            self.kick.set()
        return await self.view(vol2)

    async def _rotated(self, enc: VolumeEncryption) -> VolumeEncryption:
        """``enc`` with a new data key first (the next generation, wrapped under its KEK
        and unwrapped once), a running rotation to it, and every older generation kept
        (the volume's blocks are under them until the sweep finished)."""
        p = self.keyring.get(enc.provider)
        dek = new_data_key()

        def work() -> WrappedKey:
            p.check(enc.key_ref)
            wrapped = p.wrap(dek, enc.key_ref, enc.id)
            if p.unwrap(wrapped, enc.id).key != dek.key:  # pragma: no cover - broken provider
                raise KeyUnavailable(f"key {enc.key_ref!r} does not give back the key it wrapped")
            return wrapped

        wrapped = await asyncio.to_thread(work)
        t, g = now(), gens.newest(enc) + 1
        first = WrappedDataKey(generation=g, wrapped_key=wrapped.b64, created=t)
        keys = [first] + [
            k.model_copy(update={"kept_for": "the volume's blocks (the rotation runs)"})
            for k in enc.keys
        ]
        return gens.with_keys(
            enc,
            keys,
            head_generations=sorted(gens.head(enc) | {g}, reverse=True),
            rotation=KeyRotation(state="running", generation=g, started=t),
        )

    async def shred(self, name: str) -> Volume:
        """Destroy the volume's wrapped data key (record updated and stored first), and
        remember its encryption id as shredded: restores of its backups are refused."""

        def change(v: Volume) -> Volume | None:
            if v.encryption is None:
                raise WrongState(f"volume {name} is not encrypted: --shred needs a data key")
            if v.attach_node is not None:
                raise WrongState(
                    f"volume {name} is attached to node {v.attach_node}; detach it first"
                )
            if not v.encryption.keys:
                return None
            v.encryption = gens.with_keys(v.encryption, [], shredded_at=now())
            return v

        vol = await self.repo.update_volume(name, change)
        assert vol.encryption is not None
        mark = json.dumps({"volume": name, "at": vol.encryption.shredded_at}).encode()
        await self.repo.store.put(SHREDDED + vol.encryption.id, mark)
        await self.repo.add_event(
            EventKind.VOLUME_SHREDDED,
            "data key destroyed: replicas, snapshots and backups of this volume are unreadable",
            volume=name,
        )
        log.warning("volume %s: data key destroyed (crypto-shredded)", name)
        return vol

    async def shredded(self, encryption_id: str) -> dict[str, Any] | None:
        e = await self.repo.store.get(SHREDDED + encryption_id)
        if e is None:
            return None
        try:
            out: dict[str, Any] = json.loads(e.value)
            return out
        except ValueError:
            return {"volume": "?", "at": None}
