"""The ClientHello SNI peeker the replica server's parent routes by (protocol/tls_hello.py):
real ClientHellos from the ssl module, every prefix of them, records split, and fuzz."""

from __future__ import annotations

import ssl

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.errors import RemoteProtocolError
from cargohold.protocol.tls_hello import (
    Incomplete,
    client_hello_sni,
    routing_name,
    routing_shard,
)


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS 1.3 client (OpenSSL through the ssl module)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def split_records(hello: bytes, cut: int) -> bytes:
    """The same ClientHello in two handshake records, its body cut at ``cut``."""
    body = hello[5:]
    head = hello[:3]
    a, b = body[:cut], body[cut:]
    return head + len(a).to_bytes(2) + a + head + len(b).to_bytes(2) + b


def test_routing_names():
    name = routing_name("pvc-1-r0a")
    assert name == f"r{crc32c.crc32c(b'pvc-1-r0a'):08x}.replica.cargohold"
    assert routing_shard(name) == crc32c.crc32c(b"pvc-1-r0a")
    assert routing_shard("replica.cargohold") is None
    assert routing_shard(None) is None
    assert routing_shard("r0000000g.replica.cargohold") is None


@pytest.mark.parametrize("name", [routing_name("vol-r1"), "localhost", None])
def test_a_real_client_hello(name):
    hello = client_hello(name)
    assert client_hello_sni(hello) == name
    assert client_hello_sni(hello + b"\x17\x03\x03junk after it") == name
    for n in range(len(hello)):
        with pytest.raises(Incomplete):
            client_hello_sni(hello[:n])


@given(cut=st.integers(min_value=1, max_value=200))
@settings(max_examples=50, deadline=None)
def test_a_client_hello_in_two_records(cut):
    hello = client_hello(routing_name("vol-r7"))
    assert client_hello_sni(split_records(hello, cut)) == routing_name("vol-r7")


@pytest.mark.parametrize(
    "data",
    [
        b"CHRQ" + bytes(28),  # a replica-wire frame, not TLS
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data first
        b"\x16\x03\x01\x00\x00",  # an empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\xff\xff",  # a record longer than TLS allows
    ],
)
def test_what_is_not_a_client_hello(data):
    with pytest.raises(RemoteProtocolError):
        client_hello_sni(data)


@given(st.binary(max_size=2048))
@settings(max_examples=500, deadline=None)
def test_fuzz_random_bytes(data):
    try:
        out = client_hello_sni(data)
    except (Incomplete, RemoteProtocolError):
        return
    assert out is None or isinstance(out, str)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_fuzz_mutated_client_hellos(data):
    hello = bytearray(client_hello(routing_name("vol-r3")))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    try:
        out = client_hello_sni(bytes(hello))
    except (Incomplete, RemoteProtocolError):
        return
    assert out is None or isinstance(out, str)
