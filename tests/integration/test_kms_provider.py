"""The ``kms`` key provider (cargohold/keys/kms.py) against a real KMS API server (moto's
server mode, a process on loopback: tests/support/kms_server.py): data keys wrapped and
unwrapped by a KMS key, bound to their volume's encryption id (the encryption context), a
rewrap under another key, and every failure a clear KeyUnavailable / KeyRefused: an
unknown key, a disabled key, a wrapped key of another KMS key or tampered, a KMS that
does not answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cargohold.control.model import keys
from cargohold.control.requests import DataKeyRequest, KeyChoice, VolumeCreate
from cargohold.control.service import AttachRequest
from cargohold.errors import InvalidArgument, KeyRefused, KeyUnavailable
from cargohold.keys.data_keys import WrappedKey, new_data_key, new_encryption_id
from cargohold.keys.kms import KmsProvider
from cargohold.keys.providers import Keyring
from cargohold.security.identity import Identity, Role
from tests.support.kms_server import KmsServer
from tests.unit.control.sim import Sim


@pytest.fixture(scope="module")
def kms(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[KmsServer]:
    with KmsServer() as server:
        for k, v in server.env.items():
            monkeypatch_module.setenv(k, v)
        yield server


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_wrap_unwrap_rewrap_through_a_kms(kms: KmsServer) -> None:
    k1 = kms.create_key(alias="alias/cargohold-test")
    k2 = kms.create_key()
    p = KmsProvider(kms.endpoint, kms.region)
    p.check(k1)
    p.check("alias/cargohold-test")
    eid, dek = new_encryption_id(), new_data_key()
    w = p.wrap(dek, "alias/cargohold-test", eid)
    assert (w.provider, w.key_ref) == ("kms", "alias/cargohold-test")
    assert dek.key not in w.blob and len(w.blob) > 32
    assert p.unwrap(w, eid).key == dek.key
    # rotation: the same data key wrapped by another KMS key
    w2 = p.wrap(p.unwrap(w, eid), k2, eid)
    assert w2.blob != w.blob and p.unwrap(w2, eid).key == dek.key
    # bound to the volume: another volume's id does not decrypt it
    with pytest.raises(KeyRefused):
        p.unwrap(w, new_encryption_id())
    # tampered
    bad = bytearray(w.blob)
    bad[len(bad) // 2] ^= 1
    with pytest.raises((KeyRefused, KeyUnavailable)):
        p.unwrap(WrappedKey("kms", w.key_ref, bytes(bad)), eid)
    # named with the wrong key
    with pytest.raises((KeyRefused, KeyUnavailable)):
        p.unwrap(WrappedKey("kms", k2, w.blob), eid)


def test_unknown_and_disabled_keys_are_refused_clearly(kms: KmsServer) -> None:
    p = KmsProvider(kms.endpoint, kms.region)
    with pytest.raises(KeyUnavailable, match="NotFoundException"):
        p.check("0f3c1c9e-0000-4000-8000-000000000000")
    with pytest.raises(KeyUnavailable, match="NotFoundException"):
        p.wrap(new_data_key(), "alias/nope", new_encryption_id())
    k = kms.create_key()
    kms.disable_key(k)
    with pytest.raises(KeyUnavailable, match="Disabled"):
        p.check(k)
    with pytest.raises(InvalidArgument, match="not valid"):
        p.check("has space")


def test_an_unreachable_kms_is_a_clear_error_within_seconds() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = KmsProvider(f"http://127.0.0.1:{port}", "eu-west-1", timeout=1.0)
    t = time.monotonic()
    with pytest.raises(KeyUnavailable, match="cannot be used"):
        p.wrap(new_data_key(), "alias/x", new_encryption_id())
    assert time.monotonic() - t < 15


async def test_the_manager_wraps_volume_keys_with_a_kms_key(
    kms: KmsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manager's key calls (control/service_keys.py) with the real KMS: a volume
    created with kms_key, its key delivered, rewrapped under another KMS key; a KMS key
    that does not exist refuses the create and stores nothing."""

    sim = Sim(monkeypatch, nodes=3)
    await sim.start()
    sim.service.keyring = Keyring([KmsProvider(kms.endpoint, kms.region)])
    kms.create_key(alias="alias/team-a")
    k2 = kms.create_key()
    v = await sim.service.create_volume(
        VolumeCreate(name="vault", size_bytes=1 << 20, encrypted=True, kms_key="alias/team-a")
    )
    assert (v["encryption"]["provider"], v["encryption"]["key_ref"]) == ("kms", "alias/team-a")
    await sim.step(rounds=2)
    node = (await sim.repo.replicas("vault"))[0].node
    await sim.service.attach("vault", AttachRequest(node=node))
    await sim.step(rounds=3)
    eng = (await sim.repo.volume("vault")).engine
    assert eng is not None
    who = Identity("c-" + "3" * 32, Role.AGENT, node)
    first = await sim.service.data_key("vault", DataKeyRequest(node=node, epoch=eng.epoch), who)
    await sim.service.rekey("vault", KeyChoice(kms_key=k2))
    again = await sim.service.data_key("vault", DataKeyRequest(node=node, epoch=eng.epoch), who)
    assert again["data_key"] == first["data_key"]  # the same data key, another KEK
    assert (await sim.repo.volume("vault")).encryption.key_ref == k2  # type: ignore[union-attr]
    with pytest.raises(KeyUnavailable, match="NotFoundException"):
        await sim.service.create_volume(
            VolumeCreate(name="other", size_bytes=1 << 20, encrypted=True, kms_key="alias/nope")
        )
    assert await sim.repo.store.get(keys.volume("other")) is None
