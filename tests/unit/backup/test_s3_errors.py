"""S3Target's error mapping (backup/s3_target.py), without a server: every botocore failure
becomes an error of cargohold/errors.py with a message that names the target, never the
secret. The same errors from a real server: tests/integration/backup/test_s3_target.py."""

from __future__ import annotations

import os

import botocore.exceptions
import pytest

from cargohold import errors
from cargohold.backup.s3_target import S3Target

SECRET = "very-secret-" + os.urandom(6).hex()


def _target() -> S3Target:
    return S3Target("bucket-a", "pre/fix", "http://127.0.0.1:9", "AKID", SECRET)


def _client_error(code: str, status: int, message: str = "") -> Exception:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("NoSuchBucket", 404), errors.NotFound),
        (_client_error("NoSuchKey", 404), errors.NotFound),
        (_client_error("404", 404), errors.NotFound),
        (_client_error("InvalidAccessKeyId", 403), errors.Unauthenticated),
        (_client_error("SignatureDoesNotMatch", 403), errors.Unauthenticated),
        (_client_error("ExpiredToken", 400), errors.Unauthenticated),
        (_client_error("AccessDenied", 403), errors.PermissionDenied),
        (_client_error("403", 403), errors.PermissionDenied),
        (_client_error("SlowDown", 503, "Reduce your request rate"), errors.TargetError),
        (_client_error("InternalError", 500), errors.TargetError),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            errors.TargetUnreachable,
        ),
        (
            botocore.exceptions.ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
            errors.TargetUnreachable,
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
            errors.TargetUnreachable,
        ),
        (
            botocore.exceptions.SSLError(endpoint_url="https://x", error="bad cert"),
            errors.TargetUnreachable,
        ),
        (botocore.exceptions.NoCredentialsError(), errors.Unauthenticated),
        (OSError("disk on fire"), errors.TargetError),
    ],
)
def test_every_failure_maps_to_our_errors_without_the_secret(exc: Exception, kind: type) -> None:
    t = _target()
    got = t._error(exc, "get packs/00/p")
    assert type(got) is kind, (type(got), got)
    assert isinstance(got, errors.CargoholdError)
    text = str(got)
    assert SECRET not in text and SECRET not in repr(got)
    assert "get packs/00/p" in text or "bucket-a" in text
    assert "s3://bucket-a/pre/fix" in text or "bucket-a" in text


def test_missing_bucket_names_it() -> None:
    got = _target()._error(_client_error("NoSuchBucket", 404), "put k")
    assert "'bucket-a'" in str(got) and got.detail["bucket"] == "bucket-a"


def test_repr_and_describe_hold_no_credentials() -> None:
    t = _target()
    assert t.describe() == "s3://bucket-a/pre/fix"
    assert SECRET not in repr(t) and "AKID" not in repr(t)
    assert SECRET not in repr(vars(t).get("endpoint"))


def test_endpoint_userinfo_is_dropped_from_messages() -> None:
    t = S3Target("bucket-a", "", "http://user:pw-in-url@127.0.0.1:9", "AKID", SECRET)
    assert "pw-in-url" not in repr(t) and t.endpoint == "http://127.0.0.1:9"


def test_ca_bundle_as_pem_text_becomes_a_private_file() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    t = S3Target("bucket-a", "", "https://127.0.0.1:9", "AKID", SECRET, ca_bundle=pem)
    assert t._ca_file is not None
    assert open(t._ca_file).read() == pem
    assert os.stat(t._ca_file).st_mode & 0o077 == 0
