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

from cargohold.errors import InvalidArgument, KeyRefused, KeyUnavailable
from cargohold.keys.data_keys import WrappedKey, new_data_key, new_encryption_id
from cargohold.keys.kms import KmsProvider
from tests.support.kms_server import KmsServer


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
