"""S3-compatible object storage as a backup target (AWS S3, SeaweedFS, MinIO, Ceph RGW, ...).

``open_target("s3://BUCKET/PREFIX", endpoint=..., access_key=..., secret_key=...)`` builds one;
the backup repository (repository.py) calls it from its upload threads. Every object of the
repository is one S3 object under ``PREFIX/``.

Requests, and what each method costs (counted in ``stats`` by kind, retries included):

- ``put``: one PutObject up to ``MULTIPART_THRESHOLD`` (64 MiB), so a pack of the repository
  (24-28 MiB) costs one request; above it a multipart upload of ``PART_SIZE`` (16 MiB) parts:
  CreateMultipartUpload + one UploadPart per part + CompleteMultipartUpload, all counted as
  "put". S3 makes either kind visible atomically, whole.
- ``get``: one GetObject (with a Range header for a part of the object).
- ``exists``: one HeadObject.
- ``delete``: one DeleteObjects per 1,000 keys.
- ``list``: one ListObjectsV2 per 1,000 keys (only GC, verify and repair list).
- the first request of a target is preceded by one HeadBucket (counted as "head"), so that a
  missing bucket is reported as such and never auto-created by a permissive server.

Errors map to cargohold/errors.py: NotFound (missing object, or missing bucket: the message
names it), Unauthenticated (the endpoint does not accept the key pair), PermissionDenied (the
key may not do this), TargetUnreachable (no answer within the timeouts and retries, TLS not
trusted), TargetError (anything else). The secret key is handed to botocore and kept nowhere
else: not in ``repr()``, messages or logs.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

from cargohold import errors
from cargohold.backup.targets import Target, check_key

MULTIPART_THRESHOLD = 64 << 20  # objects above this are uploaded in parts (packs are below)
PART_SIZE = 16 << 20  # the size of each part but the last (S3's minimum is 5 MiB)
DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys
CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the endpoint
READ_TIMEOUT = 60.0  # seconds without a byte from the endpoint on an open connection
MAX_ATTEMPTS = 4  # botocore "standard" retries: throttling, 5xx and connection errors
CONNECTIONS = 16  # connection pool: the repository's upload threads plus readers

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# botocore operation -> the kind of request it is counted as in ``stats``
_KIND = {
    "PutObject": "put",
    "CreateMultipartUpload": "put",
    "UploadPart": "put",
    "CompleteMultipartUpload": "put",
    "AbortMultipartUpload": "delete",
    "GetObject": "get",
    "HeadObject": "head",
    "HeadBucket": "head",
    "ListObjectsV2": "list",
    "DeleteObjects": "delete",
    "DeleteObject": "delete",
}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ProxyConnectionError,
)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class S3Target(Target):
    """A bucket (and a key prefix in it) of an S3-compatible object store."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        ca_bundle: str | None = None,
        *,
        connections: int = CONNECTIONS,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if not _BUCKET.match(bucket or ""):
            raise errors.InvalidArgument(
                f"bad S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.' and '-'"
            )
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise errors.InvalidArgument(
                f"bad S3 endpoint {_without_userinfo(endpoint)!r}: want http(s)://HOST[:PORT]"
            )
        if (access_key is None) != (secret_key is None):
            raise errors.InvalidArgument("an S3 target needs both an access key and a secret key")
        if prefix.strip("/"):
            check_key(prefix.strip("/"))  # the same rules as a key: no '..', no empty parts
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = _without_userinfo(endpoint) if endpoint else None
        self.region = region or "us-east-1"
        self._bucket_checked = False
        self._ca_file: str | None = None
        verify: bool | str = True
        if ca_bundle:
            verify = self._ca_path(ca_bundle)
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            # a custom endpoint (SeaweedFS, MinIO, RGW) rarely has wildcard DNS for buckets
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=connections,
            tcp_keepalive=True,
            # CRC trailers only where S3 requires them: older S3-compatible servers refuse them,
            # and the repository authenticates every object itself (AES-GCM)
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
            verify=verify,
        )
        self._client.meta.events.register("before-send.s3", self._on_send)

    # --- helpers -----------------------------------------------------------------------

    def _ca_path(self, ca_bundle: str) -> str:
        """botocore wants a file: PEM text (as the manager hands it over) goes to a private
        temporary file that lives as long as the target; anything else is a path."""
        if "-----BEGIN" not in ca_bundle:
            if not os.path.isfile(ca_bundle):
                raise errors.InvalidArgument(f"S3 CA bundle {ca_bundle!r} is not a file")
            return ca_bundle
        fd, path = tempfile.mkstemp(prefix="cargohold-s3-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write(ca_bundle)
        self._ca_file = path
        return path

    def __del__(self) -> None:
        path = getattr(self, "_ca_file", None)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _on_send(self, event_name: str = "", **_: Any) -> None:
        """botocore's hook before each HTTP request (retries included): count it."""
        kind = _KIND.get(event_name.rsplit(".", 1)[-1])
        if kind is not None:
            self._count(kind)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return self.endpoint or "AWS S3"

    def _error(self, exc: Exception, what: str) -> errors.CargoholdError:
        """Our error for a botocore one: a clear message naming the target, never the secret."""
        target = self.describe()
        if isinstance(exc, botocore.exceptions.SSLError):
            return errors.TargetUnreachable(
                f"{what} on {target}: TLS with {self._where()} failed (is its certificate "
                f"signed by the target's CA bundle?): {exc}",
                target=target,
            )
        if isinstance(exc, _UNREACHABLE):
            return errors.TargetUnreachable(
                f"{what} on {target}: S3 endpoint {self._where()} unreachable "
                f"({type(exc).__name__})",
                target=target,
            )
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return errors.Unauthenticated(
                f"{what}: no S3 credentials for {target} (give an access key and a secret key)",
                target=target,
            )
        if isinstance(exc, botocore.exceptions.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in ("NoSuchKey", "NotFound") or status == 404:
                return errors.NotFound(f"{what}: no such object in {target}", target=target)
            if code in _AUTH_CODES:
                return errors.Unauthenticated(
                    f"{what}: {self._where()} does not accept the credentials of {target} ({code})",
                    target=target,
                )
            if code == "AccessDenied" or status == 403:
                return errors.PermissionDenied(
                    f"{what}: {self._where()} refused access to {target} (HTTP 403 {code}): "
                    "the credentials are wrong or lack a permission docs/backups.md lists",
                    target=target,
                )
            message = str(err.get("Message", "")) or f"HTTP {status}"
            return errors.TargetError(
                f"{what} on {target}: {self._where()} answered {code or status}: {message}",
                target=target,
            )
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return errors.TargetError(f"{what} on {target}: {exc}", target=target)
        return errors.TargetError(f"{what} on {target}: {type(exc).__name__}: {exc}", target=target)

    def _no_bucket(self) -> errors.NotFound:
        return errors.NotFound(
            f"S3 bucket {self.bucket!r} does not exist at {self._where()} (create it first)",
            bucket=self.bucket,
        )

    def _check_bucket(self) -> None:
        """Once per target: is the bucket there? (one HeadBucket)

        A 403 is not final: a key may be allowed its objects but not HeadBucket (which needs
        s3:ListBucket), and a HEAD's 403 has no body to tell a wrong secret from a missing
        permission; the object request that follows reports which it is."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404:
                raise self._no_bucket() from None
            if status != 403:
                raise self._error(exc, f"bucket {self.bucket!r}") from None
        except Exception as exc:
            raise self._error(exc, f"bucket {self.bucket!r}") from None
        self._bucket_checked = True

    # --- the Target interface ------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        name = self._key(key)
        self._check_bucket()
        view = memoryview(data).cast("B")
        try:
            if len(view) <= MULTIPART_THRESHOLD:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=bytes(view))
            else:
                self._put_multipart(name, view)
        except errors.CargoholdError:
            raise
        except Exception as exc:
            raise self._error(exc, f"put {key}") from None

    def _put_multipart(self, name: str, view: memoryview) -> None:
        upload = self._client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(view), PART_SIZE), 1):
                body = bytes(view[start : start + PART_SIZE])
                etag = self._client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=body
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag})
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:  # leave no parts behind (they cost storage and are never visible)
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except Exception:
                pass
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._key(key)
        if offset < 0 or (length is not None and length < 0):
            raise errors.InvalidArgument(f"bad range {offset}+{length} of {key}")
        if length == 0:
            return b""
        self._check_bucket()
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if length is not None:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            args["Range"] = f"bytes={offset}-"
        try:
            body = self._client.get_object(**args)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # a range past the end: nothing there, as with a file
            raise self._error(exc, f"get {key}") from None
        except Exception as exc:
            raise self._error(exc, f"get {key}") from None

    def exists(self, key: str) -> bool:
        name = self._key(key)
        self._check_bucket()
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise self._error(exc, f"exists {key}") from None
        except Exception as exc:
            raise self._error(exc, f"exists {key}") from None

    def delete(self, keys: list[str]) -> None:
        names = [self._key(k) for k in keys]
        if not names:
            return
        self._check_bucket()
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": n} for n in batch], "Quiet": True},
                )
            except Exception as exc:
                raise self._error(exc, f"delete {len(batch)} objects") from None
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise errors.TargetError(
                    f"delete: {len(failed)} of {len(batch)} objects in {self.describe()} not "
                    f"deleted; first {first.get('Key')!r}: {first.get('Code')} "
                    f"{first.get('Message', '')}",
                    target=self.describe(),
                )

    def list(self, prefix: str) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        self._check_bucket()
        keys: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(o["Key"][len(base) :] for o in page.get("Contents", []))
        except Exception as exc:
            raise self._error(exc, f"list {prefix!r}") from None
        return sorted(keys)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Target({self.describe()!r}, endpoint={self.endpoint!r})"
