"""S3Target (cargohold/backup/s3_target.py) against a real S3 server (SeaweedFS).

The first group is the Target contract every target keeps (put/get/range/exists/delete/list);
it takes a ``target`` fixture, so the same functions can run on FileTarget and MemoryTarget.
The rest is S3's own: multipart uploads, request counts, errors (wrong secret, missing
bucket, stopped server) and never a secret in a message, a repr or a log line.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cargohold import errors
from cargohold.backup import s3_target
from cargohold.backup.s3_target import S3Target
from cargohold.backup.targets import Target, open_target
from tests.support.s3_server import S3Server
from tests.unit.backup.test_targets import check_contract


def _target(s3: S3Server, prefix: str, **kw: object) -> S3Target:
    args: dict[str, object] = {
        "endpoint": s3.endpoint,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
    }
    args.update(kw)
    return S3Target(s3.bucket, prefix, **args)  # type: ignore[arg-type]


@pytest.fixture
def target(s3_server: S3Server, s3_prefix: str) -> S3Target:
    return _target(s3_server, s3_prefix)


# --- the Target contract ----------------------------------------------------------------


def test_s3_target_keeps_the_target_contract(target: Target) -> None:
    check_contract(target)  # the same checks FileTarget and MemoryTarget pass


def test_put_get_roundtrip(target: Target) -> None:
    data = os.urandom(100_000)
    target.put("packs/ab/pack-1", data)
    assert target.get("packs/ab/pack-1") == data
    target.put("packs/ab/pack-2", memoryview(data)[10:20])
    assert target.get("packs/ab/pack-2") == data[10:20]
    target.put("empty", b"")
    assert target.get("empty") == b""


def test_put_overwrites_whole_object(target: Target) -> None:
    target.put("catalog", b"A" * 5000)
    target.put("catalog", b"B" * 10)
    assert target.get("catalog") == b"B" * 10


def test_get_range(target: Target) -> None:
    data = bytes(range(256)) * 64
    target.put("obj", data)
    assert target.get("obj", 100, 50) == data[100:150]
    assert target.get("obj", 16000) == data[16000:]
    assert target.get("obj", 0, len(data)) == data
    assert target.get("obj", 5, 0) == b""
    assert target.get("obj", len(data) - 10, 100) == data[-10:]  # clipped at the end


def test_get_missing_is_not_found(target: Target) -> None:
    with pytest.raises(errors.NotFound):
        target.get("no/such/key")
    with pytest.raises(errors.NotFound):
        target.get("no/such/key", 10, 10)


def test_exists(target: Target) -> None:
    assert not target.exists("index/1")
    target.put("index/1", b"x")
    assert target.exists("index/1")
    target.delete(["index/1"])
    assert not target.exists("index/1")


def test_delete_absent_keys_is_fine(target: Target) -> None:
    target.put("a", b"1")
    target.delete(["a", "never-there", "a"])
    target.delete([])
    assert target.list("") == []


def test_list_by_prefix(target: Target) -> None:
    for key in ("packs/00/p1", "packs/00/p2", "packs/ff/p3", "index/i1", "config"):
        target.put(key, key.encode())
    assert target.list("packs/") == ["packs/00/p1", "packs/00/p2", "packs/ff/p3"]
    assert target.list("packs/00/") == ["packs/00/p1", "packs/00/p2"]
    assert target.list("") == sorted(
        ["packs/00/p1", "packs/00/p2", "packs/ff/p3", "index/i1", "config"]
    )
    assert target.list("nothing/") == []


def test_describe_names_no_credentials(target: Target) -> None:
    text = target.describe()
    assert text.startswith("s3://")
    assert "s3cr3t" not in text


# --- S3's own -----------------------------------------------------------------------------


def test_prefixes_keep_targets_apart(s3_server: S3Server, s3_prefix: str) -> None:
    one = _target(s3_server, s3_prefix + "/one")
    two = _target(s3_server, s3_prefix + "/two")
    one.put("k", b"1")
    assert not two.exists("k")
    assert two.list("") == []
    raw = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}/one/k")
    assert raw["Body"].read() == b"1"


def test_open_target_s3_url(s3_server: S3Server, s3_prefix: str) -> None:
    t = open_target(
        f"s3://{s3_server.bucket}/{s3_prefix}/repo",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    assert isinstance(t, S3Target)
    assert t.describe() == f"s3://{s3_server.bucket}/{s3_prefix}/repo"
    t.put("x", b"y")
    assert t.get("x") == b"y"


def test_bad_names_are_refused(s3_server: S3Server, target: S3Target) -> None:
    for bucket in ("", "ab", "Upper", "-x-", "a" * 64):
        with pytest.raises(errors.InvalidArgument):
            S3Target(bucket, "p", endpoint=s3_server.endpoint)
    with pytest.raises(errors.InvalidArgument):
        S3Target(s3_server.bucket, "p", endpoint="ftp://127.0.0.1:1")
    with pytest.raises(errors.InvalidArgument):
        S3Target(s3_server.bucket, "p", endpoint=s3_server.endpoint, access_key="only-half")
    for key in ("", "/abs", "a//b", "dir/"):
        with pytest.raises(errors.InvalidArgument):
            target.put(key, b"x")


def test_large_object_goes_multipart(target: S3Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_target, "MULTIPART_THRESHOLD", 16 << 20)  # smaller, same code path
    monkeypatch.setattr(s3_target, "PART_SIZE", 5 << 20)  # S3's smallest part
    size = s3_target.MULTIPART_THRESHOLD + 3 * s3_target.PART_SIZE + 12345
    data = os.urandom(size)
    target.exists("warm-up")  # the bucket check happens on the first request; count from here
    before = dict(target.stats)
    target.put("big", data)
    parts = -(-size // s3_target.PART_SIZE)
    assert target.stats["put"] - before["put"] == 1 + parts + 1  # create, parts, complete
    assert target.get("big") == data
    edge = s3_target.PART_SIZE
    assert target.get("big", edge - 10, 20) == data[edge - 10 : edge + 10]  # across two parts
    raw = target._client.head_object(Bucket=target.bucket, Key=target._key("big"))
    assert raw["ContentLength"] == size


def test_stats_count_requests_by_kind(target: S3Target) -> None:
    target.put("k0", b"0")  # the first request: one HeadBucket, then the PutObject
    assert target.stats == {"put": 1, "get": 0, "list": 0, "delete": 0, "head": 1}
    target.put("k1", b"1")
    target.get("k1")
    target.get("k1", 0, 1)
    target.exists("k1")
    target.exists("nope")
    target.list("")
    target.delete(["k0", "k1"])
    assert target.stats == {"put": 2, "get": 2, "list": 1, "delete": 1, "head": 3}


def test_delete_and_list_batch_by_1000(target: S3Target) -> None:
    keys = [f"chunks/{i:05d}" for i in range(1001)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: target.put(k, b"."), keys))
    assert target.stats["put"] == 1001  # counted right from 8 threads at once
    lists = target.stats["list"]
    assert target.list("chunks/") == keys
    assert target.stats["list"] - lists == 2  # ListObjectsV2 pages of 1,000
    target.delete(keys)
    assert target.stats["delete"] == 2  # DeleteObjects batches of 1,000
    assert target.list("chunks/") == []


def test_wrong_secret_is_an_auth_error_without_the_secret(
    s3_server: S3Server, s3_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = _target(s3_server, s3_prefix)
    good.put("k", b"v")
    secret = "wr0ng-" + os.urandom(8).hex()
    bad = _target(s3_server, s3_prefix, secret_key=secret)
    assert secret not in repr(bad) and secret not in bad.describe()
    caplog.set_level(logging.DEBUG)  # botocore logs every request at DEBUG
    # a GET's or a PUT's answer says SignatureDoesNotMatch; a HEAD's is a bare 403
    for call, kinds in (
        (lambda: bad.get("k"), errors.Unauthenticated),
        (lambda: bad.put("k2", b"x"), errors.Unauthenticated),
        (lambda: bad.exists("k"), (errors.Unauthenticated, errors.PermissionDenied)),
    ):
        with pytest.raises(kinds) as info:
            call()
        message = str(info.value)
        assert s3_server.bucket in message and "credentials" in message
        assert secret not in message and secret not in repr(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert secret not in caplog.text
    assert good.get("k") == b"v"


def test_unknown_access_key_is_unauthenticated(s3_server: S3Server, s3_prefix: str) -> None:
    good = _target(s3_server, s3_prefix)
    good.put("k", b"v")  # the bucket check passes with the good key...
    bad = _target(s3_server, s3_prefix, access_key="nobody", secret_key="whatever-secret")
    bad._bucket_checked = True  # ...and an unknown key is told apart on an object request
    with pytest.raises(errors.Unauthenticated) as info:
        bad.get("k")
    assert "InvalidAccessKeyId" in str(info.value)
    assert "whatever-secret" not in str(info.value)


def test_missing_bucket_is_not_found_naming_it(s3_server: S3Server) -> None:
    t = S3Target(
        "no-such-bucket-17",
        "p",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    for call in (
        lambda: t.put("k", b"x"),
        lambda: t.get("k"),
        lambda: t.exists("k"),
        lambda: t.list(""),
    ):
        with pytest.raises(errors.NotFound) as info:
            call()
        assert "no-such-bucket-17" in str(info.value)
        assert info.value.detail.get("bucket") == "no-such-bucket-17"
    # nothing was created on the way (a permissive server may create buckets on PUT)
    names = [b["Name"] for b in s3_server.client(admin=True).list_buckets()["Buckets"]]
    assert "no-such-bucket-17" not in names


def test_stopped_server_is_unreachable_within_bounded_time() -> None:
    with S3Server(bucket="gone-soon") as s3:
        t = S3Target(
            s3.bucket,
            "p",
            endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            connect_timeout=2,
            read_timeout=5,
        )
        t.put("k", b"v")
        endpoint = s3.endpoint
        s3.stop()
        started = time.monotonic()
        for call in (lambda: t.get("k"), lambda: t.put("k", b"w"), lambda: t.exists("k")):
            with pytest.raises(errors.TargetUnreachable) as info:
                call()
            assert endpoint in str(info.value) and "unreachable" in str(info.value)
            assert s3.secret_key not in str(info.value)
        elapsed = time.monotonic() - started
        assert elapsed < 60, elapsed  # three calls, each with its bounded retries


def test_fresh_target_on_dead_endpoint_is_unreachable() -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = S3Target(
        "some-bucket",
        "",
        endpoint=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b-secret",
        connect_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(errors.TargetUnreachable):
        t.exists("k")
    assert time.monotonic() - started < 30
    assert t.stats["head"] >= 1  # retries are requests too


def test_https_endpoint_with_its_ca_bundle() -> None:
    with S3Server(bucket="tls-bucket", tls=True) as s3:
        assert s3.endpoint.startswith("https://")
        args = (s3.bucket, "p", s3.endpoint, s3.access_key, s3.secret_key)
        # the CA as PEM text (as the manager hands it over) and as a file on the node
        for bundle in (s3.ca_pem, s3._ca_file()):
            t = S3Target(*args, ca_bundle=bundle)
            t.put("k", b"over TLS")
            assert t.get("k") == b"over TLS"
        # without it, the endpoint's certificate is not trusted: a clear error, no fallback
        untrusted = S3Target(*args, connect_timeout=2)
        with pytest.raises(errors.TargetUnreachable) as info:
            untrusted.get("k")
        assert "TLS" in str(info.value) and "CA bundle" in str(info.value)
        with pytest.raises(errors.InvalidArgument):
            S3Target(*args, ca_bundle="/no/such/ca.pem")
