"""The StorageClass's encryption parameters (csi/parameters.py, docs/kubernetes.md):
``encrypted``, and the key-encryption key by name (``encryptionKey``) or KMS key id
(``kmsKeyId``); every bad value INVALID_ARGUMENT naming the parameter."""

from __future__ import annotations

import grpc
import pytest

from cargohold.csi import parameters as P
from cargohold.csi.errors import CsiError


def bad(params: dict[str, str], says: str) -> None:
    with pytest.raises(CsiError) as e:
        P.VolumeParameters.parse(params)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in e.value.message, e.value.message


def test_encryption_parameters() -> None:
    assert not P.VolumeParameters.parse({}).encrypted
    p = P.VolumeParameters.parse({"encrypted": " True "})
    assert (p.encrypted, p.key, p.kms_key) == (True, None, None)  # the manager's "default"
    p = P.VolumeParameters.parse({"encrypted": "true", "encryptionKey": "team-a.2026"})
    assert p.key == "team-a.2026"
    arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert P.VolumeParameters.parse({"encrypted": "true", "kmsKeyId": arn}).kms_key == arn
    assert not P.VolumeParameters.parse({"encrypted": "false"}).encrypted


def test_bad_encryption_parameters_name_themselves() -> None:
    bad({"encrypted": "yes"}, "encrypted='yes'")
    bad({"encryptionKey": "k"}, "encryptionKey='k' is not valid (only with encrypted: \"true\")")
    bad({"encrypted": "false", "kmsKeyId": "k"}, "kmsKeyId='k'")
    for name in ("../etc/passwd", "a/b", ".hidden", "a..b", ""):
        bad({"encrypted": "true", "encryptionKey": name}, "encryptionKey=")
    bad({"encrypted": "true", "kmsKeyId": "alias/a b"}, "kmsKeyId=")
    bad({"encrypted": "true", "encryptionKey": "a", "kmsKeyId": "b"}, "not both")
